"""The programs compiled ahead of time: the real train step and the KV-cache decode step,
each as a jitted function plus abstract arguments (shapes, dtypes, shardings; no data).

The train step is `mm1_jax.train.step.jit_train_step` over the state layout the trainer
uses (`state.make_layout`) and a batch of the DESIGN.md contract at the config's sizes:
`train.batch_size` rows of `data.seq_len` tokens with `data.max_images` images of
`model.vit.image_size` pixels. The decode step is `MM1.decode_step`: one new token for
each of `eval.batch_size` rows against a KV cache of `data.seq_len` positions, the cache
donated as in `mm1_jax.eval.decoding`.
"""

from __future__ import annotations

import dataclasses
import functools
from typing import Any, Callable

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from mm1_jax import config_lib
from mm1_jax.models import flops as model_flops
from mm1_jax.parallel import rules
from mm1_jax.train import optimizer as optimizer_lib
from mm1_jax.train import state as state_lib
from mm1_jax.train import step as step_lib

STEPS = ('train', 'decode')


@dataclasses.dataclass(frozen=True)
class Program:
  step: str                    # 'train' or 'decode'
  jitted: Callable             # a jax.jit-wrapped function
  args: tuple                  # abstract arguments (ShapeDtypeStruct with shardings)
  model_flops: float | None    # useful FLOPs of one call (train: for MFU), None if not defined
  num_params: int


def _abstract(shape, dtype, sharding) -> jax.ShapeDtypeStruct:
  return jax.ShapeDtypeStruct(tuple(shape), dtype, sharding=sharding)


def batch_shapes(config) -> dict[str, tuple[tuple[int, ...], Any]]:
  """Shapes and dtypes of one global batch (DESIGN.md section 2)."""
  rows, length, slots = config.train.batch_size, config.data.seq_len, config.data.max_images
  side = config.model.vit.image_size
  return {
      'tokens': ((rows, length), jnp.int32),
      'targets': ((rows, length), jnp.int32),
      'loss_mask': ((rows, length), jnp.float32),
      'segment_ids': ((rows, length), jnp.int32),
      'positions': ((rows, length), jnp.int32),
      'images': ((rows, slots, side, side, 3), jnp.uint8),
      'image_valid': ((rows, slots), jnp.bool_),
      'source_id': ((rows,), jnp.int32),
  }


def check_batch_divides(config, mesh) -> None:
  """The rows of a micro-batch must split evenly over the mesh axes of 'batch'."""
  spec = rules.logical_to_spec(('batch',))[0]
  axes = () if spec is None else (spec,) if isinstance(spec, str) else tuple(spec)
  shards = 1
  for axis in axes:
    shards *= mesh.shape[axis]
  micro = config.train.batch_size // config.train.grad_accum
  if micro % shards:
    raise config_lib.ConfigError(
        f'config.train.batch_size: {config.train.batch_size} rows ({micro} per micro-batch) '
        f'do not divide over the {shards} batch shards of mesh axes {axes} '
        f'({dict(mesh.shape)})')


def train_program(config, mesh) -> Program:
  check_batch_divides(config, mesh)
  num_params = state_lib.count_params(config)
  tx = optimizer_lib.make_optimizer(config, optimizer_lib.resolve_settings(config, num_params))
  layout = state_lib.make_layout(config, mesh, tx)
  batch_spec = NamedSharding(mesh, rules.logical_to_spec(('batch',)))
  batch_shardings, batch = {}, {}
  for key, (shape, dtype) in batch_shapes(config).items():
    sharding = NamedSharding(mesh, PartitionSpec(batch_spec.spec[0], *([None] * (len(shape) - 1))))
    batch_shardings[key] = sharding
    batch[key] = _abstract(shape, dtype, sharding)
  num_sources = max(1, sum(1 for name in config.data.sources
                           if config.data.weights.get(name, 0) > 0))
  jitted = step_lib.jit_train_step(config, layout, batch_shardings, tx, num_sources)
  flops = model_flops.train_flops_per_step(config)  # every image slot filled
  return Program('train', jitted, (layout.abstract, batch), flops, num_params)


CACHE_NAMES = ('layers', 'batch', 'length', 'kv_heads', 'head_dim')


def _decode(params, tokens, cache, *, graphdef):
  return state_lib.merge_model(graphdef, params).decode_step(tokens, cache)


def decode_program(config, mesh) -> Program:
  model = nnx.eval_shape(lambda: state_lib.build_model(config, config.seed))
  graphdef, abstract_params = nnx.split(model, nnx.Param)
  param_shardings = nnx.to_pure_dict(rules.state_shardings(abstract_params, mesh))
  params = jax.tree.map(lambda a, s: _abstract(a.shape, a.dtype, s),
                        nnx.to_pure_dict(abstract_params), param_shardings)
  rows, length = int(config.eval.batch_size), config.data.seq_len
  cache = jax.eval_shape(lambda: model.init_cache(rows, length))

  def shard(names, value):
    return NamedSharding(mesh, rules.logical_to_spec(names, value.shape, mesh))

  cache_shardings = {'k': shard(CACHE_NAMES, cache['k']), 'v': shard(CACHE_NAMES, cache['v']),
                     'lengths': shard(('batch',), cache['lengths'])}
  cache = {k: _abstract(v.shape, v.dtype, cache_shardings[k]) for k, v in cache.items()}
  tokens_sharding = cache_shardings['lengths']
  tokens = _abstract((rows,), jnp.int32, tokens_sharding)
  jitted = jax.jit(functools.partial(_decode, graphdef=graphdef),
                   in_shardings=(param_shardings, tokens_sharding, cache_shardings),
                   out_shardings=(NamedSharding(mesh, PartitionSpec()), cache_shardings),
                   donate_argnums=(2,))
  num_params = sum(int(x.size) for x in jax.tree.leaves(params))
  return Program('decode', jitted, (params, tokens, cache), None, num_params)


def make_program(config, mesh, step: str) -> Program:
  if step == 'train':
    return train_program(config, mesh)
  if step == 'decode':
    return decode_program(config, mesh)
  raise ValueError(f'--step={step!r}: expected one of {STEPS}')
