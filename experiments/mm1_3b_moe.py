"""MM1-3B-MoE pretraining: mm1_3b.py's model with 64 experts in every 2nd decoder layer.

Run (TPU pod: v5p-64, 32 chips in a 2x4x4 slice, mesh expert=8 x fsdp=4; data.root must
hold the three sources and the tokenizer):

    python -m mm1_jax.train --config=experiments/mm1_3b_moe.py \\
        --workdir=gs://BUCKET/mm1_3b_moe --config.data.root=/data/mm1

or sparse-upcycled from a dense MM1-3B run (experts as wide as its FFN, see below):

    python -m mm1_jax.train.upcycle --dense_workdir=gs://BUCKET/mm1_3b \\
        --config=experiments/mm1_3b_moe.py:upcycle --workdir=gs://BUCKET/mm1_3b_moe_up
    python -m mm1_jax.train --config=experiments/mm1_3b_moe.py:upcycle \\
        --workdir=gs://BUCKET/mm1_3b_moe_up --config.data.root=/data/mm1

Expected result: MM1-3B-MoE's numbers need its data and 200k steps at batch 512. On the
synthetic world `experiments/mm1_3b_moe.py:local` (8 experts, tiny) trains in minutes on a
laptop, the loss falling like tiny_moe.py's, with moe/expert_load_max and _min near 1.

Published: 64 experts, an MoE layer every 2 layers, top-2 gating, load-balance loss 0.01,
router z-loss 0.001, 64B parameters in total; the rest as mm1_3b.py (see there).
Chosen: the MoE layers are layers 1, 3, ..., 27 (the second of each pair); expert SwiGLU
width 7424 (not published) so the total matches: 63.91B parameters (-0.1% of 64B; 63.27B
in the decoder). The `upcycle` variant keeps the dense width 8192 so each expert can be a
copy of mm1_3b's FFN: 70.25B (+9.8%). Capacity dispatch in groups of 1024 tokens, capacity
factor 1.25. State in float32 with Adam moments ~1 TB, sharded over the 32 chips (95 GB
HBM each) by expert (8 experts per shard) and fsdp; the batch runs as 4 micro-batches
(grad_accum=4) to fit (compiled ahead of time for v5p-64: 89.1 of 95 GiB per chip,
experiments/README.md; the `upcycle` variant's wider experts were not compiled).
"""

from experiments import mm1_3b, moe_recipe


def get_config(arg: str | None = None):
  config = moe_recipe.build(mm1_3b, num_experts=64, every=2, expert_d_ff=7424,
                            name='mm1_3b_moe', arg=arg)
  if arg != 'local':
    # 16 rows a chip overflow a v5p chip (compiler: 170 GB of temporaries; 113 GB with two
    # micro-batches); four micro-batches of 4 rows fit (89.1 GiB peak, python -m mm1_jax.aot).
    config.train.grad_accum = 4
  return config
