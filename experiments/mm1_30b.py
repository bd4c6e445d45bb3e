"""MM1-30B pretraining: a 30B decoder, ViT-H/14 at 378, C-Abstractor with 144 tokens.

Run (TPU pod or GPU cluster; data.root must hold the three sources and the tokenizer):

    python -m mm1_jax.train --config=experiments/mm1_30b.py --workdir=gs://BUCKET/mm1_30b \\
        --config.data.root=/data/mm1

(or first `python -m mm1_jax.export.from_hf --config=experiments/mm1_30b.py --vision=DIR
--llm=DIR --workdir=OUT` to start from a pretrained CLIP ViT-H/14-378 and LLM).

Intended topology: v5p-512 (256 chips), fsdp over all of them, 2 rows a chip.
Compiled ahead of time for it (`python -m mm1_jax.aot --config=experiments/mm1_30b.py
--topology=v5p-512`, table in experiments/README.md) it fits: 68.4 of 95 GiB per chip
(compiler peak); the XLA cost model estimates 5.0 s a step, 75% MFU.

Expected result: MM1-30B's pretraining numbers need its data and 200k steps at batch 512;
`experiments/mm1_30b.py:local` runs the same architecture at tiny size on the synthetic
world in minutes on a laptop.

Published: ViT-H/14 at 378 (DFN-5B CLIP; its activation is exact GELU), C-Abstractor 144
tokens, sequence 4096, up to 16 images, batch 512, the recipe of mm1_1b.py (see there).
Chosen (Llama-style, not published): vocabulary 32000, d_model 6656, 56 layers, 52 heads
and as many key/value heads, SwiGLU width 17920, untied embeddings: 30.389B decoder parameters.
"""

from experiments import mm1_1b

DECODER_30B = dict(vocab_size=32000, d_model=6656, num_layers=56, num_heads=52, num_kv_heads=52,
                  d_ff=17920, tie_embeddings=False)


def get_config(arg: str | None = None):
  return mm1_1b.build(decoder=DECODER_30B, vit_size='H/14', image_size=378,
                      vit_activation='gelu_exact', arg=arg, name='mm1_30b')
