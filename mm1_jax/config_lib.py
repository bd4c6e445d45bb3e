"""The configuration schema: every section of DESIGN.md, its defaults, and start-up checks.

`base_config()` returns a ConfigDict with every known key; experiment files start from it
and override values. `validate(config)` checks values and raises `ConfigError` naming the
offending key, so that a wrong setting fails at start-up and not hours into a run.
"""

from __future__ import annotations

import math

import ml_collections


class ConfigError(ValueError):
  """A configuration key has a wrong value; the message names the key."""


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.image_token_id = 4  # fixed by data_pipelines.tokenizer: pad 0, unk 1, bos 2, eos 3, <image> 4
  c.model.vit = ml_collections.ConfigDict(dict(
      image_size=224, patch_size=16, width=768, depth=12, num_heads=12, mlp_dim=3072,
      activation='gelu', feature_layer=-1, use_class_token=False, norm_eps=1e-5))
  c.model.connector = ml_collections.ConfigDict(dict(kind='avgpool', num_tokens=64))
  c.model.decoder = ml_collections.ConfigDict(dict(
      vocab_size=32000, d_model=512, num_layers=8, num_heads=8, num_kv_heads=8, d_ff=1408,
      rope_theta=10000.0, norm_eps=1e-5, tie_embeddings=True, attention='xla',
      scan_layers=False, remat='none'))
  c.model.moe = ml_collections.ConfigDict(dict(
      num_experts=0, top_k=2, every=1, dispatch='capacity', capacity_factor=1.25,
      load_balance_weight=0.01, z_loss_weight=0.001))

  c.data = ml_collections.ConfigDict()
  c.data.root = ''
  c.data.synthetic = False
  c.data.backend = 'grain'
  c.data.sources = ml_collections.ConfigDict()
  c.data.weights = ml_collections.ConfigDict()
  c.data.seq_len = 512
  c.data.max_images = 4
  c.data.tokenizer = ''
  c.data.num_workers = 0
  c.data.seed = 0

  c.train = ml_collections.ConfigDict()
  c.train.steps = 1000
  c.train.batch_size = 8
  c.train.grad_accum = 1
  c.train.optimizer = ml_collections.ConfigDict(dict(
      # lr and weight_decay take a number or 'mm1_law' (see mm1_jax/train/optimizer.py).
      lr=ml_collections.FieldReference(1e-3, field_type=object),
      weight_decay=ml_collections.FieldReference('mm1_law', field_type=object),
      b1=0.9, b2=0.95, eps=1e-8, clip_norm=1.0))
  c.train.schedule = ml_collections.ConfigDict(dict(warmup=2000, final_fraction=0.1))
  c.train.dtype = 'float32'
  c.train.on_nonfinite = 'stop'
  c.train.max_runtime = 0.0  # seconds; 0 = no limit

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, expert=1))
  c.checkpoint = ml_collections.ConfigDict(dict(every=1000, keep=3, **{'async': True}))
  c.eval = ml_collections.ConfigDict(dict(tasks=(), shots=(0,), every=0))
  c.log = ml_collections.ConfigDict(dict(every=50, tensorboard=True))
  return c


def _require(cond: bool, key: str, message: str) -> None:
  if not cond:
    raise ConfigError(f'config.{key}: {message}')


def _positive_int(config, key: str) -> None:
  value = config
  for part in key.split('.'):
    value = value[part]
  _require(isinstance(value, int) and not isinstance(value, bool) and value > 0, key,
           f'must be a positive integer, got {value!r}')


def validate(config: ml_collections.ConfigDict) -> None:
  """Raises ConfigError naming the first key whose value cannot work."""
  for key in ('model.vit.image_size', 'model.vit.patch_size', 'model.vit.width',
              'model.vit.depth', 'model.vit.num_heads', 'model.vit.mlp_dim',
              'model.connector.num_tokens', 'model.decoder.vocab_size', 'model.decoder.d_model',
              'model.decoder.num_layers', 'model.decoder.num_heads', 'model.decoder.num_kv_heads',
              'model.decoder.d_ff', 'data.seq_len', 'data.max_images', 'train.steps',
              'train.batch_size', 'train.grad_accum', 'checkpoint.keep', 'log.every'):
    _positive_int(config, key)

  vit, dec, conn = config.model.vit, config.model.decoder, config.model.connector
  _require(vit.image_size % vit.patch_size == 0, 'model.vit.image_size',
           f'{vit.image_size} is not a multiple of model.vit.patch_size={vit.patch_size}')
  _require(vit.width % vit.num_heads == 0, 'model.vit.width',
           f'{vit.width} is not divisible by model.vit.num_heads={vit.num_heads}')
  _require(vit.activation in ('gelu', 'quick_gelu', 'gelu_exact'), 'model.vit.activation',
           f'unknown activation {vit.activation!r} (gelu, quick_gelu, gelu_exact)')
  _require(conn.kind in ('avgpool', 'attnpool', 'c_abstractor'), 'model.connector.kind',
           f'unknown connector {conn.kind!r} (avgpool, attnpool, c_abstractor)')
  grid = vit.image_size // vit.patch_size
  side = math.isqrt(conn.num_tokens)
  _require(side * side == conn.num_tokens, 'model.connector.num_tokens',
           f'{conn.num_tokens} is not a square number')
  _require(side <= grid, 'model.connector.num_tokens',
           f'{conn.num_tokens} tokens need a {side}x{side} grid, but the ViT gives only '
           f'{grid}x{grid} patches')
  _require(dec.d_model % dec.num_heads == 0, 'model.decoder.d_model',
           f'{dec.d_model} is not divisible by model.decoder.num_heads={dec.num_heads}')
  _require(dec.num_heads % dec.num_kv_heads == 0, 'model.decoder.num_kv_heads',
           f'model.decoder.num_heads={dec.num_heads} is not a multiple of {dec.num_kv_heads}')
  _require((dec.d_model // dec.num_heads) % 2 == 0, 'model.decoder.num_heads',
           'the head dimension must be even for rotary embeddings')
  _require(dec.attention in ('xla', 'cudnn', 'splash'), 'model.decoder.attention',
           f'unknown attention {dec.attention!r} (xla, cudnn, splash)')
  _require(config.model.moe.num_experts == 0, 'model.moe.num_experts',
           'Mixture-of-Experts decoders are not available yet; set 0 (dense)')

  data = config.data
  _require(data.backend == 'grain', 'data.backend', f'unknown backend {data.backend!r} (grain)')
  _require(len(data.sources) > 0, 'data.sources', 'no data source configured')
  for name, source in data.sources.items():
    _require('kind' in source and source.kind in ('captions', 'interleaved', 'text'),
             f'data.sources.{name}.kind',
             f"must be one of 'captions', 'interleaved', 'text', got {source.get('kind')!r}")
    _require(bool(source.get('path')), f'data.sources.{name}.path', 'must name a directory')
  for name, weight in data.weights.items():
    _require(name in data.sources, f'data.weights.{name}',
             f'names no source; known sources: {sorted(data.sources)}')
    _require(isinstance(weight, (int, float)) and weight >= 0 and math.isfinite(weight),
             f'data.weights.{name}', f'must be a finite number >= 0, got {weight!r}')
  _require(sum(data.weights.values()) > 0, 'data.weights', 'all weights are zero')
  _require(data.seq_len > conn.num_tokens + 2, 'data.seq_len',
           f'{data.seq_len} cannot hold one image run of {conn.num_tokens} tokens and text')
  _require(data.num_workers >= 0, 'data.num_workers', 'must be >= 0')

  train = config.train
  opt = train.optimizer
  _require(opt.lr == 'mm1_law' or (isinstance(opt.lr, (int, float)) and opt.lr > 0),
           'train.optimizer.lr', f"must be a positive number or 'mm1_law', got {opt.lr!r}")
  _require(opt.weight_decay == 'mm1_law' or (isinstance(opt.weight_decay, (int, float))
                                             and opt.weight_decay >= 0),
           'train.optimizer.weight_decay',
           f"must be a number >= 0 or 'mm1_law' (0.1 * peak lr), got {opt.weight_decay!r}")
  _require(0 <= opt.b1 < 1 and 0 <= opt.b2 < 1, 'train.optimizer.b1',
           'Adam betas must lie in [0, 1)')
  _require(opt.clip_norm >= 0, 'train.optimizer.clip_norm', 'must be >= 0 (0 disables)')
  _require(train.schedule.warmup >= 0, 'train.schedule.warmup', 'must be >= 0')
  _require(0 <= train.schedule.final_fraction <= 1, 'train.schedule.final_fraction',
           'must lie in [0, 1]')
  _require(train.dtype in ('float32', 'bfloat16'), 'train.dtype',
           f'unknown dtype {train.dtype!r} (float32, bfloat16)')
  _require(train.on_nonfinite in ('skip', 'stop'), 'train.on_nonfinite',
           f"must be 'skip' or 'stop', got {train.on_nonfinite!r}")
  _require(train.batch_size % train.grad_accum == 0, 'train.grad_accum',
           f'train.batch_size={train.batch_size} is not divisible by {train.grad_accum}')
  for axis in ('data', 'fsdp', 'tensor', 'expert'):
    size = config.mesh[axis]
    _require(isinstance(size, int) and (size == -1 or size >= 1), f'mesh.{axis}',
             f'must be -1 (fill) or a positive integer, got {size!r}')
  _require(list(config.mesh.values()).count(-1) <= 1, 'mesh',
           'at most one axis may be -1')
  _require(config.checkpoint.every >= 0, 'checkpoint.every', 'must be >= 0 (0: only at the end)')
