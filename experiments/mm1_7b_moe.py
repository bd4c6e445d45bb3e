"""MM1-7B-MoE pretraining: mm1_7b.py's model with 32 experts in every 4th decoder layer.

Run (TPU pod: v5p-64, 32 chips in a 2x4x4 slice, mesh expert=8 x fsdp=4; data.root must
hold the three sources and the tokenizer):

    python -m mm1_jax.train --config=experiments/mm1_7b_moe.py \\
        --workdir=gs://BUCKET/mm1_7b_moe --config.data.root=/data/mm1

or sparse-upcycled from a dense MM1-7B run (experts as wide as its FFN, see below):

    python -m mm1_jax.train.upcycle --dense_workdir=gs://BUCKET/mm1_7b \\
        --config=experiments/mm1_7b_moe.py:upcycle --workdir=gs://BUCKET/mm1_7b_moe_up
    python -m mm1_jax.train --config=experiments/mm1_7b_moe.py:upcycle \\
        --workdir=gs://BUCKET/mm1_7b_moe_up --config.data.root=/data/mm1

Expected result: MM1-7B-MoE's numbers need its data and 200k steps at batch 512. On the
synthetic world `experiments/mm1_7b_moe.py:local` (8 experts, tiny) trains in minutes on a
laptop, the loss falling like tiny_moe.py's, with moe/expert_load_max and _min near 1.

Published: 32 experts, an MoE layer every 4 layers, top-2 gating, load-balance loss 0.01,
router z-loss 0.001, 47B parameters in total; the rest as mm1_7b.py (see there).
Chosen: the MoE layers are layers 3, 7, ..., 31 (the last of each group of 4); expert
SwiGLU width 12928 (not published) so the total matches: 47.00B parameters (0.0% off;
46.35B in the decoder). The `upcycle` variant keeps the dense width 13824 so each expert
can be a copy of mm1_7b's FFN: 49.82B (+6.0%). Capacity dispatch in groups of 1024 tokens,
capacity factor 1.25. State in float32 with Adam moments ~750 GB, sharded over the 32
chips (95 GB HBM each) by expert (4 experts per shard) and fsdp; the batch runs as 8
micro-batches (grad_accum=8) to fit (compiled ahead of time for v5p-64: 89.2 of 95 GiB per
chip, experiments/README.md; the `upcycle` variant's wider experts were not compiled).
"""

from experiments import mm1_7b, moe_recipe


def get_config(arg: str | None = None):
  config = moe_recipe.build(mm1_7b, num_experts=32, every=4, expert_d_ff=12928,
                            name='mm1_7b_moe', arg=arg)
  if arg != 'local':
    # 16 rows a chip overflow a v5p chip (compiler: 267 GB of temporaries); eight
    # micro-batches of 2 rows fit (89.2 GiB peak, python -m mm1_jax.aot).
    config.train.grad_accum = 8
  return config
