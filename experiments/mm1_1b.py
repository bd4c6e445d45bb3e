"""MM1's ablation setup: a 1.2B decoder, ViT-L/14 at 336, C-Abstractor with 144 tokens.

Run (TPU pod or GPU cluster; data.root must hold the three sources and the tokenizer):

    python -m mm1_jax.train --config=experiments/mm1_1b.py --workdir=gs://BUCKET/mm1_1b \\
        --config.data.root=/data/mm1

or start, as MM1 did, from pretrained checkpoints (CLIP ViT-L/14-336, a 32k-vocab Llama):

    python -m mm1_jax.export.from_hf --config=experiments/mm1_1b.py --vision=DIR \\
        --llm=DIR --workdir=OUT && python -m mm1_jax.train --config=... --workdir=OUT

Intended topology: v5p-64 (32 chips), fsdp over all of them, 16 rows a chip. Compiled
ahead of time for it (`python -m mm1_jax.aot --config=experiments/mm1_1b.py
--topology=v5p-64`, table in experiments/README.md) it fits in 85.7 of 95 GiB per chip;
the XLA cost model estimates 3.5 s a step, 57% MFU.

Expected result: the paper's 1.2B ablation numbers need its data; on the synthetic world
the loss falls like experiments/tiny.py's. The `local` variant (`experiments/mm1_1b.py:local`)
keeps the architecture (class token dropped, penultimate layer, C-Abstractor, GQA, scan)
at tiny size on the synthetic world: about 5 minutes on a 2-core laptop, loss falling well
below ln(512) ~ 6.2. The `highres` variant runs the ViT at 672 for MM1's high-resolution
recipe (see data_pipelines/high_res.py).

Published by MM1: ViT-L/14 at 336 for the ablations (CLIP, penultimate features), the
C-Abstractor with 144 tokens, sequence length 4096, up to 16 images, batch 512, 200k
steps, the 5:5:1 mix, the learning-rate law, cosine decay to 10% after 2000 warm-up
steps. Chosen here where the paper is silent (Llama-style): vocabulary 32000, d_model
2048, 24 layers, 16 heads with 8 key/value heads, SwiGLU width 5632, tied embeddings:
1.198B decoder parameters. C-Abstractor depth 3 at width 1024 (Honeybee's), SiLU readout of
2 layers. Adam betas 0.9 / 0.95, clipping at 1.0, bfloat16 compute, scanned layers with
rematerialisation of everything but batch-free matmuls in the decoder and of everything
but the block inputs in the ViT, splash attention (TPU).

This file also holds `build`, the shared recipe of mm1_3b/7b/30b.py.
"""

from mm1_jax import config_lib
from mm1_jax.models.vit import set_size

DECODER_1B = dict(vocab_size=32000, d_model=2048, num_layers=24, num_heads=16, num_kv_heads=8,
                  d_ff=5632, tie_embeddings=True)


def build(*, decoder: dict, vit_size: str, image_size: int, vit_activation: str,
          arg: str | None, name: str):
  """The MM1 pretraining recipe with the given decoder and ViT; `arg`: None or 'local'."""
  config = config_lib.base_config()
  model = config.model
  set_size(model.vit, vit_size, image_size)
  model.vit.update(activation=vit_activation, feature_layer=-2, use_class_token=True,
                   drop_class_token=True, final_norm=False, scan_layers=True,
                   # 16 images a row: without remat the ViT's saved attention
                   # probabilities alone are 58 GiB at 8 rows (seen on one H200); saving
                   # its matmul outputs still needs 63 GiB per v5p chip at 16 rows
                   # (mm1_1b on v5p-64, python -m mm1_jax.aot): keep only block inputs.
                   remat='full')
  model.connector.update(kind='c_abstractor', num_tokens=144, depth=3, width=1024, mlp_depth=2)
  model.decoder.update(decoder)
  # Splash attention (TPU): the 'xla' kernel's [heads, 4096, 4096] scores do not fit a v5p
  # at 16 rows a chip. On GPUs use --config.model.decoder.attention=cudnn.
  model.decoder.update(rope_theta=10000.0, norm_eps=1e-5, attention='splash', scan_layers=True,
                       remat='dots_with_no_batch_dims_saveable')

  data = config.data
  data.root = ''  # set with --config.data.root
  config_lib.use_mm1_mixture(data)
  data.seq_len = 4096
  data.max_images = 16

  train = config.train
  train.steps = 200_000
  train.batch_size = 512
  train.optimizer.lr = 'mm1_law'
  train.optimizer.weight_decay = 'mm1_law'
  train.schedule.warmup = 2000
  train.schedule.final_fraction = 0.1
  train.dtype = 'bfloat16'
  config.mesh.update(data=1, fsdp=-1, tensor=1, expert=1)
  config.checkpoint.every = 2000
  config.log.every = 50

  if arg == 'local':
    from experiments import tiny
    small = tiny.get_config()
    model.vit.update(image_size=32, patch_size=8, width=64, depth=3, num_heads=4, mlp_dim=128)
    model.connector.update(num_tokens=4, depth=1, width=64)
    model.decoder.update(small.model.decoder.to_dict())
    model.decoder.update(scan_layers=True, remat='none')
    model.vit.remat = 'none'
    config.data = small.data
    config.train = small.train
    config.mesh.update(data=-1, fsdp=1)
    config.checkpoint = small.checkpoint
    config.log = small.log
  elif arg == 'highres':
    # MM1's high-resolution recipe: data_pipelines.high_res cuts a 1344 image into 4 crops
    # of 672 plus a 672 overview (5 images of 144 tokens); the ViT runs at 672, its
    # position embeddings interpolated from the checkpoint's grid by the importer.
    model.vit.image_size = 672
    data.max_images = 16 * 5
  elif arg not in (None, ''):
    raise ValueError(f'experiments/{name}.py: unknown variant {arg!r} (known: local, highres)')
  return config


def get_config(arg: str | None = None):
  return build(decoder=DECODER_1B, vit_size='L/14', image_size=336,
               vit_activation='quick_gelu', arg=arg, name='mm1_1b')
