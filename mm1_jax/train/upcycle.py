"""Sparse upcycling: start an MoE run from a dense run's checkpoint.

    python -m mm1_jax.train.upcycle --dense_workdir=DENSE --config=experiments/X_moe.py \\
        --workdir=W [--step=N]

reads step N (default: the latest) of the dense run DENSE and writes W as a training run at
step 0 (config.json, tokenizer, checkpoint 0 with a fresh optimizer state and the data
iterator at its start) of the MoE config: every parameter is copied from the dense model,
except that each MoE layer's experts are all copies of that layer's dense SwiGLU and its
router is freshly initialised (seed config.seed). `python -m mm1_jax.train
--config=experiments/X_moe.py --workdir=W` then continues from it.

With top-k renormalised gating (model.moe.renormalize) and nothing dropped, the upcycled
model computes exactly the dense model's function: identical experts, gate weights summing
to one. The dense and MoE configs must agree on every shape (experts as wide as the dense
FFN: model.moe.d_ff 0 or the dense d_ff); a mismatch is an error naming the key or the
parameter.
"""

from __future__ import annotations

import json
import sys

import jax
import jax.numpy as jnp

from mm1_jax.models import moe as moe_lib
from mm1_jax.models.decoder import expert_width, is_moe_layer, layers_from_list, layers_to_list
from mm1_jax.models.decoder import moe_every


class UpcycleError(ValueError):
  """The dense checkpoint does not fit the MoE config; the message names what differs."""


def _abstract_params(config):
  from flax import nnx

  from mm1_jax.train import state as state_lib
  abstract = nnx.eval_shape(lambda: state_lib.build_model(config, config.seed))
  return nnx.to_pure_dict(nnx.state(abstract, nnx.Param))


def _check_configs(dense_config, moe_config) -> None:
  dense, target = dense_config.model, moe_config.model
  if dense.moe.num_experts:
    raise UpcycleError('the dense run has model.moe.num_experts='
                       f'{dense.moe.num_experts}: upcycling starts from a dense decoder')
  if not target.moe.num_experts:
    raise UpcycleError('config model.moe.num_experts is 0: the target must be an MoE model')
  for key in ('num_layers', 'd_model', 'd_ff', 'vocab_size', 'num_heads', 'num_kv_heads',
              'tie_embeddings'):
    if dense.decoder[key] != target.decoder[key]:
      raise UpcycleError(f'model.decoder.{key}: the dense run has {dense.decoder[key]}, '
                         f'the MoE config {target.decoder[key]}')
  width = expert_width(target.decoder, target.moe)
  if width != dense.decoder.d_ff:
    raise UpcycleError(f'model.moe.d_ff: experts of width {width} cannot copy the dense '
                       f'SwiGLU of width {dense.decoder.d_ff} (set 0: the dense width)')


def _upcycled_mlp(mlp: dict, num_experts: int, router) -> dict:
  """A dense SwiGLU's params {gate, up, down: {kernel}} -> MoE params, experts all copies."""
  copies = lambda kernel: jnp.broadcast_to(kernel[None], (num_experts,) + kernel.shape)
  return {'router': router, 'gate': copies(mlp['gate']['kernel']),
          'up': copies(mlp['up']['kernel']), 'down': copies(mlp['down']['kernel'])}


def upcycle_params(dense_params: dict, dense_config, moe_config) -> dict:
  """The MoE model's pure params dict from the dense model's (numpy or jax arrays)."""
  _check_configs(dense_config, moe_config)
  dec, moe = moe_config.model.decoder, moe_config.model.moe
  every = moe_every(moe)
  dense_layers = layers_to_list(dense_params['decoder']['layers'], num_layers=dec.num_layers,
                                every=0, scan_layers=dense_config.model.decoder.scan_layers)
  key = jax.random.key(moe_config.seed)
  per_layer = []
  for i, layer in enumerate(dense_layers):
    if is_moe_layer(i, every):
      router = moe_lib.ROUTER_INIT(jax.random.fold_in(key, i),
                                   (dec.d_model, moe.num_experts), jnp.float32)
      layer = dict(layer, mlp=_upcycled_mlp(layer['mlp'], moe.num_experts, router))
    per_layer.append(layer)
  params = dict(dense_params)
  params['decoder'] = dict(dense_params['decoder'],
                           layers=layers_from_list(per_layer, every=every,
                                                   scan_layers=dec.scan_layers))
  _check_shapes(params, _abstract_params(moe_config))
  return params


def _check_shapes(params: dict, target: dict) -> None:
  """Same tree and shapes as the MoE model's; else an error naming the parameter."""
  flat = dict(jax.tree_util.tree_flatten_with_path(params)[0])
  wanted = dict(jax.tree_util.tree_flatten_with_path(target)[0])
  name = lambda path: jax.tree_util.keystr(path, simple=True, separator='/')
  for path, spec in wanted.items():
    if path not in flat:
      raise UpcycleError(f'parameter {name(path)} of the MoE model has no dense counterpart')
    if tuple(flat[path].shape) != tuple(spec.shape):
      raise UpcycleError(f'parameter {name(path)}: the dense checkpoint gives shape '
                         f'{tuple(flat[path].shape)}, the MoE model wants {tuple(spec.shape)}')
  extra = [name(path) for path in flat if path not in wanted]
  if extra:
    raise UpcycleError(f'dense parameter {extra[0]} has no place in the MoE model')


def read_dense(dense_workdir: str, step: int | None = None):
  """(config, params, step) of a dense run, its params restored on one device."""
  from flax import nnx

  from mm1_jax import api
  from mm1_jax.eval.evaluator import module_of
  loaded = api.load(dense_workdir, step)
  return loaded.config, nnx.to_pure_dict(nnx.state(module_of(loaded), nnx.Param)), loaded.step


def upcycle(dense_workdir: str, moe_config, workdir: str, step: int | None = None) -> dict:
  """Writes `workdir` at step 0 of `moe_config`, upcycled from `dense_workdir`."""
  from mm1_jax.export.from_hf import write_workdir
  dense_config, dense_params, step = read_dense(dense_workdir, step)
  params = upcycle_params(dense_params, dense_config, moe_config)
  written = write_workdir(moe_config, params, workdir)
  return {'workdir': written, 'dense_workdir': dense_workdir, 'dense_step': step,
          'num_experts': moe_config.model.moe.num_experts, 'every': moe_config.model.moe.every}


def main(argv) -> None:
  from absl import flags, logging
  if len(argv) > 1:
    raise ValueError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  f = flags.FLAGS
  try:
    summary = upcycle(f.dense_workdir, f.config, f.workdir, f.step)
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  print(json.dumps(summary))


def run() -> None:
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file('config', None, 'MoE experiment config (FILE.py[:variant]).',
                                  lock_config=False)
  flags.DEFINE_string('dense_workdir', None, 'The dense training run to start from.')
  flags.DEFINE_string('workdir', None, 'Training workdir to create at step 0.')
  flags.DEFINE_integer('step', None, 'Step of the dense run (default: its latest).')
  flags.mark_flags_as_required(['config', 'dense_workdir', 'workdir'])
  app.run(main)


if __name__ == '__main__':
  run()
