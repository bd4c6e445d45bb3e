"""Tiny MM1 on the embedded synthetic world: the quick-start and test configuration.

Run (about 3-5 minutes on a 2-core laptop, data and tokenizer generated on first use):

    python -m mm1_jax.train --config=experiments/tiny.py --workdir=/tmp/mm1_tiny

Expected result: the loss falls from about ln(vocab) ~ 6.2 at step 0 to well under half of
that by the last step; each of the three sources (captions, interleaved, text) is logged
separately as loss/<source> in WORKDIR/metrics.jsonl. At the end the run evaluates 100
held-out examples of each synthetic task at 0 and 4 shots (eval/<task>/<k>shot): an
untrained model scores ~0 CIDEr and ~0% VQA accuracy, the trained one far above (roughly
35-50 CIDEr and 30-40% VQA accuracy). Evaluate any checkpoint again with

    python -m mm1_jax.evaluate --config=experiments/tiny.py --workdir=/tmp/mm1_tiny

Variants (`experiments/tiny.py:VARIANT`):
  * `smoke`: a handful of steps with a smaller batch, used by the end-to-end tests.

Shapes are ours (the paper publishes nothing at this size): a 2-layer ViT on 32x32 images
with 8x8 patches, average pooling of the 4x4 patch grid to K=4 image tokens, and a 4-layer
Llama-style decoder (RMSNorm, RoPE, SwiGLU, grouped-query attention 4 heads / 2 kv heads).
"""

import os

from mm1_jax import config_lib


def default_data_root() -> str:
  cache = os.environ.get('XDG_CACHE_HOME', os.path.join(os.path.expanduser('~'), '.cache'))
  return os.path.join(cache, 'mm1_jax', 'synthetic-v1')


def get_config(arg: str | None = None):
  config = config_lib.base_config()

  vit = config.model.vit
  vit.image_size = 32
  vit.patch_size = 8
  vit.width = 64
  vit.depth = 2
  vit.num_heads = 4
  vit.mlp_dim = 128

  config.model.connector.kind = 'avgpool'
  config.model.connector.num_tokens = 4

  dec = config.model.decoder
  dec.vocab_size = 512
  dec.d_model = 128
  dec.num_layers = 4
  dec.num_heads = 4
  dec.num_kv_heads = 2
  dec.d_ff = 384

  data = config.data
  data.root = default_data_root()
  data.synthetic = True  # generate the synthetic world into data.root when it is missing
  config_lib.use_mm1_mixture(data)
  data.seq_len = 128
  data.max_images = 8

  train = config.train
  train.steps = 300
  train.batch_size = 16
  train.optimizer.lr = 3e-3
  train.optimizer.weight_decay = 3e-4  # 0.1 x peak lr, as MM1
  train.schedule.warmup = 20

  config.checkpoint.every = 100
  # Few-shot evaluation on the synthetic world's held-out COCO- and VQAv2-format sets.
  config.eval.tasks = ('synthetic_coco', 'synthetic_vqav2')
  config.eval.shots = (0, 4)
  config.eval.every = 300  # once, at the end of the run
  config.eval.num_examples = 100
  config.log.every = 10

  if arg == 'smoke':
    train.steps = 6
    train.batch_size = 8
    train.schedule.warmup = 2
    config.checkpoint.every = 3
    config.log.every = 1
    config.eval.every = 0
    config.eval.shots = (0,)
    config.eval.num_examples = 4
  elif arg not in (None, ''):
    raise ValueError(f'experiments/tiny.py: unknown variant {arg!r} (known: smoke)')
  return config
