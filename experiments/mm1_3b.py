"""MM1-3B pretraining: a 3B decoder, ViT-H/14 at 378, C-Abstractor with 144 tokens.

Run (TPU pod or GPU cluster; data.root must hold the three sources and the tokenizer):

    python -m mm1_jax.train --config=experiments/mm1_3b.py --workdir=gs://BUCKET/mm1_3b \\
        --config.data.root=/data/mm1

(or first `python -m mm1_jax.export.from_hf --config=experiments/mm1_3b.py --vision=DIR
--llm=DIR --workdir=OUT` to start from a pretrained CLIP ViT-H/14-378 and LLM).

Intended topology: v5p-128 (64 chips), fsdp over all of them, 8 rows a chip.
Compiled ahead of time for it (`python -m mm1_jax.aot --config=experiments/mm1_3b.py
--topology=v5p-128`, table in experiments/README.md) it fits: 67.6 of 95 GiB per chip;
the XLA cost model estimates 4.0 s a step, 60% MFU.

Expected result: MM1-3B's pretraining numbers need its data and 200k steps at batch 512;
`experiments/mm1_3b.py:local` runs the same architecture at tiny size on the synthetic
world in minutes on a laptop.

Published: ViT-H/14 at 378 (DFN-5B CLIP; its activation is exact GELU), C-Abstractor 144
tokens, sequence 4096, up to 16 images, batch 512, the recipe of mm1_1b.py (see there).
Chosen (Llama-style, not published): vocabulary 32000, d_model 3072, 28 layers, 24 heads
with 8 key/value heads, SwiGLU width 8192, untied embeddings: 3.015B decoder parameters.
"""

from experiments import mm1_1b

DECODER_3B = dict(vocab_size=32000, d_model=3072, num_layers=28, num_heads=24, num_kv_heads=8,
                  d_ff=8192, tie_embeddings=False)


def get_config(arg: str | None = None):
  return mm1_1b.build(decoder=DECODER_3B, vit_size='H/14', image_size=378,
                      vit_activation='gelu_exact', arg=arg, name='mm1_3b')
