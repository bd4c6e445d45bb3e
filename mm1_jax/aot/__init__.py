"""Ahead-of-time compilation of the train and decode steps for TPU pod topologies, on any
host with libtpu installed: will a config fit, and how fast would it run (estimates).

    python -m mm1_jax.aot --config=experiments/mm1_30b.py --topology=v5p-512 [--json]
"""
