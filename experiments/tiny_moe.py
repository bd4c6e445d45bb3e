"""Tiny MM1 with a Mixture-of-Experts decoder on the synthetic world: the CPU MoE check.

Run (about 5 minutes of CPU on a 2-core laptop; data and tokenizer generated on first use):

    python -m mm1_jax.train --config=experiments/tiny_moe.py --workdir=/tmp/tiny_moe

Expected result: as experiments/tiny.py, the loss falls from about ln(512) ~ 6.2 to well
under half of that (measured: 6.71 at step 1, 0.68 at step 300) and the few-shot scores
at the end are tiny.py's (measured: 42 / 39 CIDEr at 0 / 4 shots, 38% / 37% VQA
accuracy). WORKDIR/metrics.jsonl also logs moe/load_balance_loss, moe/router_z_loss (both
added to the training loss, not to `loss`), moe/dropped_fraction and moe/expert_load_max
/ _min (E x the share of assignments of the most and least loaded expert; 1 and 1 when
balanced). The load starts unbalanced and the load-balance loss evens it out (measured:
max/min 2.40/0.20 with 28.5% of the assignments dropped at step 1, 1.38/0.66 and 10.4% at
step 100, 1.16/0.84 and 8.1% at step 300).

Shapes: tiny.py's model with 8 experts, top-2 gating (renormalised), in decoder layers 1
and 3 (every 2nd layer), experts as wide as the dense FFN (384), capacity dispatch with
capacity factor 1.25, MM1's loss weights (load balance 0.01, router z-loss 0.001).
`experiments/tiny_moe.py:smoke` is the few-step variant of the end-to-end tests.
"""

from experiments import tiny


def get_config(arg: str | None = None):
  config = tiny.get_config(arg)
  config.model.moe.update(num_experts=8, top_k=2, every=2, dispatch='capacity',
                          capacity_factor=1.25, load_balance_weight=0.01, z_loss_weight=0.001,
                          renormalize=True, d_ff=0)
  return config
