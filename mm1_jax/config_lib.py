"""The configuration schema: every section of DESIGN.md, its defaults, and start-up checks.

`base_config()` returns a ConfigDict with every known key; experiment files start from it
and override values. `validate(config)` checks values and raises `ConfigError` naming the
offending key, so that a wrong setting fails at start-up and not hours into a run.
`check_data(config)` is the start-up step of the commands that read data (train, evaluate,
`prepare inspect`): it checks config.data against the file system, generating the
synthetic world first when data.synthetic asks for it, and raises `ConfigError` too.
"""

from __future__ import annotations

import math
import os
import re

import ml_collections

from data_pipelines import images as images_lib


class ConfigError(ValueError):
  """A configuration key has a wrong value; the message names the key."""


def base_config() -> ml_collections.ConfigDict:
  c = ml_collections.ConfigDict()
  c.seed = 0

  c.model = ml_collections.ConfigDict()
  c.model.image_token_id = 4  # fixed by data_pipelines.tokenizer: pad 0, unk 1, bos 2, eos 3, <image> 4
  c.model.vit = ml_collections.ConfigDict(dict(
      image_size=224, patch_size=16, width=768, depth=12, num_heads=12, mlp_dim=3072,
      activation='gelu', feature_layer=-1, use_class_token=False, norm_eps=1e-5,
      # final_norm: LayerNorm on the selected state (CLIP hidden states have none);
      # drop_class_token: remove the class token from the output after attention.
      # scan_layers: stack the blocks and scan over them (as model.decoder.scan_layers);
      # remat: rematerialisation policy of each block (as model.decoder.remat).
      final_norm=True, drop_class_token=False, scan_layers=False, remat='none'))
  c.model.connector = ml_collections.ConfigDict(dict(
      kind='avgpool', num_tokens=64,
      num_heads=8,   # attnpool: heads of the cross-attention
      depth=3,       # c_abstractor: residual blocks per stage
      width=0,       # c_abstractor: channels of the stages (0: the decoder's d_model)
      mlp_depth=2))  # c_abstractor: layers of the readout MLP
  c.model.decoder = ml_collections.ConfigDict(dict(
      vocab_size=32000, d_model=512, num_layers=8, num_heads=8, num_kv_heads=8, d_ff=1408,
      rope_theta=10000.0, norm_eps=1e-5, tie_embeddings=True, attention='xla',
      scan_layers=False, remat='none'))
  # Mixture of experts (mm1_jax/models/moe.py): num_experts 0 is a dense decoder. Layers
  # every-1, 2*every-1, ... are MoE. renormalize: top-k gate weights sum to one; group_size:
  # capacity groups of that many tokens (0: a row); d_ff: expert width (0: decoder.d_ff).
  c.model.moe = ml_collections.ConfigDict(dict(
      num_experts=0, top_k=2, every=1, dispatch='capacity', capacity_factor=1.25,
      load_balance_weight=0.01, z_loss_weight=0.001, renormalize=True, group_size=0, d_ff=0))

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
  c.data.resize = 'crop'  # 'crop': resize + centre crop; 'pad': resize + pad to square
  c.data.long_documents = 'split'  # 'split' into row-sized chunks, or 'truncate' to one row
  # 'fill': interleaved and text documents are cut (never inside an image run) to fill
  # each row; 'whole': documents are only cut when longer than a row. Captions: whole.
  c.data.packing = 'fill'
  c.data.min_piece_tokens = 8  # 'fill' makes no piece shorter (except in an empty row)
  c.data.shards = 0  # logical input shards (0: the process count); fixes the row stream
  # Images whose width x height exceeds this are skipped before decoding (at import and in
  # training); data_pipelines/images.py. 0 disables the bound.
  c.data.max_image_pixels = images_lib.DEFAULT_MAX_IMAGE_PIXELS

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
  # Parameter groups by regex over paths such as 'vit/layers/0/mlp/up/kernel' (see
  # mm1_jax/train/optimizer.py): frozen parameters, and (regex, factor) lr scales.
  c.train.freeze = ''
  c.train.lr_scales = ml_collections.FieldReference((), field_type=tuple)

  c.mesh = ml_collections.ConfigDict(dict(data=-1, fsdp=1, tensor=1, expert=1))
  c.checkpoint = ml_collections.ConfigDict(dict(every=1000, keep=3, **{'async': True}))
  c.eval = ml_collections.ConfigDict(dict(tasks=(), shots=(0,), every=0))
  # Few-shot evaluation (mm1_jax/eval/settings.py documents each key).
  c.eval.task_specs = ml_collections.ConfigDict()  # NAME -> task definition (eval/tasks.py)
  c.eval.data_root = ''  # the real datasets' directory (relative paths of the tasks)
  c.eval.templates = ml_collections.ConfigDict(dict(
      caption='{caption}', vqa='Question: {question} Answer: {answer}'))
  c.eval.max_new_tokens = ml_collections.ConfigDict(dict(caption=32, vqa=10))
  c.eval.stop_strings = ('\n', 'Question:')
  c.eval.num_examples = 0  # first N examples of each task (0: all)
  c.eval.batch_size = 16
  c.eval.seed = 0  # draws the few-shot demonstrations
  c.log = ml_collections.ConfigDict(dict(every=50, tensorboard=True))
  return c


def use_mm1_mixture(data: ml_collections.ConfigDict) -> None:
  """One source of each kind under data.root (the layout `prepare synthetic` writes) in
  MM1's 5:5:1 mix: 45% captions, 45% interleaved documents, 10% text."""
  for kind, weight in (('captions', 0.45), ('interleaved', 0.45), ('text', 0.10)):
    data.sources[kind] = dict(kind=kind, path=kind)
    data.weights[kind] = weight
  data.tokenizer = 'tokenizer/spm.model'


def _require(cond: bool, key: str, message: str) -> None:
  if not cond:
    raise ConfigError(f'config.{key}: {message}')


def _positive_int(config, key: str) -> None:
  value = config
  for part in key.split('.'):
    value = value[part]
  _require(isinstance(value, int) and not isinstance(value, bool) and value > 0, key,
           f'must be a positive integer, got {value!r}')


def _check_regex(pattern, key: str) -> None:
  _require(isinstance(pattern, str), key, f'must be a regular expression string, got {pattern!r}')
  try:
    re.compile(pattern)
  except re.error as e:
    raise ConfigError(f'config.{key}: {pattern!r} is not a valid regular expression ({e})')


def _check_param_groups(train) -> None:
  _check_regex(train.freeze, 'train.freeze')
  for i, rule in enumerate(train.lr_scales):
    key = f'train.lr_scales[{i}]'
    _require(isinstance(rule, (tuple, list)) and len(rule) == 2, key,
             f'must be a (regex, factor) pair, got {rule!r}')
    _check_regex(rule[0], key)
    _require(isinstance(rule[1], (int, float)) and rule[1] >= 0 and math.isfinite(rule[1]),
             key, f'the factor must be a finite number >= 0, got {rule[1]!r}')


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def _check_moe(config) -> None:
  moe = config.model.moe
  _require(_is_int(moe.num_experts) and moe.num_experts >= 0, 'model.moe.num_experts',
           f'must be an integer >= 0 (0: dense decoder), got {moe.num_experts!r}')
  if not moe.num_experts:
    return
  from mm1_jax.models.moe import DISPATCH_MODES  # late: keeps this module free of jax
  _require(_is_int(moe.top_k) and 1 <= moe.top_k <= moe.num_experts, 'model.moe.top_k',
           f'must be an integer in [1, model.moe.num_experts={moe.num_experts}], '
           f'got {moe.top_k!r}')
  _require(_is_int(moe.every) and moe.every >= 1, 'model.moe.every',
           f'must be a positive integer, got {moe.every!r}')
  layers = config.model.decoder.num_layers
  _require(layers % moe.every == 0, 'model.moe.every',
           f'{moe.every} does not divide model.decoder.num_layers={layers} (the last layer '
           'of each group of `every` layers is MoE)')
  _require(moe.dispatch in DISPATCH_MODES, 'model.moe.dispatch',
           f'unknown dispatch {moe.dispatch!r} {DISPATCH_MODES}')
  _require(isinstance(moe.capacity_factor, (int, float)) and moe.capacity_factor > 0,
           'model.moe.capacity_factor', f'must be a number > 0, got {moe.capacity_factor!r}')
  for key in ('load_balance_weight', 'z_loss_weight'):
    value = moe[key]
    _require(isinstance(value, (int, float)) and value >= 0 and math.isfinite(value),
             f'model.moe.{key}', f'must be a finite number >= 0, got {value!r}')
  for key in ('group_size', 'd_ff'):
    value = moe.get(key, 0)
    _require(_is_int(value) and value >= 0, f'model.moe.{key}',
             f'must be an integer >= 0 (0: default), got {value!r}')
  _require(isinstance(moe.get('renormalize', True), bool), 'model.moe.renormalize',
           f"must be a bool, got {moe.get('renormalize')!r}")
  expert = config.mesh.expert
  _require(not _is_int(expert) or expert < 1 or moe.num_experts % expert == 0, 'mesh.expert',
           f'{expert} shards do not divide model.moe.num_experts={moe.num_experts}')


def _root_is_empty(data) -> bool:
  root = data.get('root', '')
  return not (isinstance(root, str) and root.strip())


def _check_synthetic_root(data) -> None:
  _require(not (data.get('synthetic', False) and _root_is_empty(data)), 'data.root',
           'is empty, but data.synthetic=True generates the synthetic world into it (an empty '
           'root would be the current directory); name a directory of its own, e.g. '
           '--config.data.root=~/.cache/mm1_jax/synthetic-v1')


def _is_relative(path: str) -> bool:
  path = os.path.expanduser(path)
  return not (os.path.isabs(path) or '://' in path)


def _check_root(config, *, sources: bool) -> None:
  """data.root: set wherever something resolves against it."""
  data = config.data
  _check_synthetic_root(data)
  if not _root_is_empty(data) or not sources:
    return
  from data_pipelines import grain_pipeline  # late: heavy, and only commands that read data
  relative = [(f'data.sources.{name}.path', data.sources[name].path)
              for name in grain_pipeline.source_names(config)]
  if data.get('tokenizer'):
    relative.append(('data.tokenizer', data.tokenizer))
  relative = [(key, path) for key, path in relative if _is_relative(path)]
  named = ', '.join(f'config.{key}={path!r}' for key, path in relative[:2])
  _require(not relative, 'data.root',
           f'is empty, but relative paths resolve against it ({named}); set '
           '--config.data.root=DIR')


def _check_sources(config) -> None:
  """Every source with a weight > 0 is a directory holding a source of its kind."""
  from data_pipelines import grain_pipeline, sources as sources_lib  # late: heavy
  for name in grain_pipeline.source_names(config):
    spec = config.data.sources[name]
    key = f'data.sources.{name}'
    path = grain_pipeline.resolve_path(config, spec.path)
    _require(os.path.isdir(path), f'{key}.path', f'directory {path} does not exist')
    try:
      sources_lib.open_source(path, spec.kind)
    except FileNotFoundError as error:
      raise ConfigError(f'config.{key}.path: {error}') from None
    except ValueError as error:  # a source of another kind is there
      raise ConfigError(f'config.{key}.kind: {spec.kind!r}, but {error}') from None


def check_data(config: ml_collections.ConfigDict, *, sources: bool = True) -> None:
  """The start-up step of the commands that read data; raises ConfigError naming the key.

  data.root must be set where something resolves against it (data.synthetic; with
  `sources`, relative source and tokenizer paths). With data.synthetic the synthetic world
  is generated into data.root unless complete there; only a missing or empty directory or
  an unfinished synthetic world is ever written (data_pipelines/synthetic.py), anything
  else fails untouched. Else data.root must exist. With `sources`, every source with a
  weight > 0 must hold a source of its configured kind. Cheap once the data is there: no
  record is read.
  """
  _check_root(config, sources=sources)
  root = os.path.expanduser(config.data.root)
  if config.data.get('synthetic', False):
    from data_pipelines import synthetic  # late: only when asked for
    try:
      synthetic.ensure(root, seed=0)
    except synthetic.NotASyntheticWorld as error:
      raise ConfigError(f'config.data.root: {error} Or set data.synthetic=False to use '
                        'the sources already there.') from None
    except (NotADirectoryError, ValueError) as error:  # ValueError: another seed's world
      raise ConfigError(f'config.data.root: {error}') from None
  elif root:
    _require(os.path.isdir(root), 'data.root', f'directory {root} does not exist')
  if sources:
    _check_sources(config)


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
  if conn.kind == 'attnpool':
    _positive_int(config, 'model.connector.num_heads')
    _require(dec.d_model % conn.num_heads == 0, 'model.connector.num_heads',
             f'{conn.num_heads} does not divide model.decoder.d_model={dec.d_model}')
  if conn.kind == 'c_abstractor':
    _positive_int(config, 'model.connector.depth')
    _positive_int(config, 'model.connector.mlp_depth')
    _require(isinstance(conn.width, int) and conn.width >= 0, 'model.connector.width',
             f'must be an integer >= 0 (0: d_model), got {conn.width!r}')
  for key in ('final_norm', 'drop_class_token', 'scan_layers'):
    _require(isinstance(vit[key], bool), f'model.vit.{key}', f'must be a bool, got {vit[key]!r}')
  _require(dec.d_model % dec.num_heads == 0, 'model.decoder.d_model',
           f'{dec.d_model} is not divisible by model.decoder.num_heads={dec.num_heads}')
  _require(dec.num_heads % dec.num_kv_heads == 0, 'model.decoder.num_kv_heads',
           f'model.decoder.num_heads={dec.num_heads} is not a multiple of {dec.num_kv_heads}')
  _require((dec.d_model // dec.num_heads) % 2 == 0, 'model.decoder.num_heads',
           'the head dimension must be even for rotary embeddings')
  _require(dec.attention in ('xla', 'cudnn', 'splash'), 'model.decoder.attention',
           f'unknown attention {dec.attention!r} (xla, cudnn, splash)')
  _check_moe(config)

  data = config.data
  _require(data.backend in ('grain', 'seqio'), 'data.backend',
           f'unknown backend {data.backend!r} (grain, seqio)')
  _require(data.get('resize', 'crop') in ('crop', 'pad'), 'data.resize',
           f"must be 'crop' or 'pad', got {data.get('resize')!r}")
  _require(data.get('long_documents', 'split') in ('split', 'truncate'), 'data.long_documents',
           f"must be 'split' or 'truncate', got {data.get('long_documents')!r}")
  _require(data.get('packing', 'fill') in ('fill', 'whole'), 'data.packing',
           f"must be 'fill' or 'whole', got {data.get('packing')!r}")
  min_piece = data.get('min_piece_tokens', 8)
  _require(isinstance(min_piece, int) and 1 <= min_piece <= data.seq_len,
           'data.min_piece_tokens', f'must be an integer in [1, seq_len], got {min_piece!r}')
  shards = data.get('shards', 0)
  _require(isinstance(shards, int) and shards >= 0, 'data.shards',
           f'must be an integer >= 0 (0: one per process), got {shards!r}')
  _require(shards == 0 or config.train.batch_size % shards == 0, 'data.shards',
           f'train.batch_size={config.train.batch_size} is not divisible by {shards}')
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
  max_pixels = data.get('max_image_pixels', 0)
  _require(_is_int(max_pixels) and max_pixels >= 0, 'data.max_image_pixels',
           f'must be an integer >= 0 (0: no bound), got {max_pixels!r}')
  _check_synthetic_root(data)

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
  _check_param_groups(train)
  for axis in ('data', 'fsdp', 'tensor', 'expert'):
    size = config.mesh[axis]
    _require(isinstance(size, int) and (size == -1 or size >= 1), f'mesh.{axis}',
             f'must be -1 (fill) or a positive integer, got {size!r}')
  _require(list(config.mesh.values()).count(-1) <= 1, 'mesh',
           'at most one axis may be -1')
  _require(config.checkpoint.every >= 0, 'checkpoint.every', 'must be >= 0 (0: only at the end)')
  from mm1_jax.eval import settings as eval_settings  # late: it imports this module
  eval_settings.validate(config)
