"""The train state: parameters, optimizer state and step, laid out over the mesh.

The state is a plain pytree so that jit, Orbax and the sharding rules all see the same
thing:
    {'step': int32 [], 'params': {...arrays...}, 'opt_state': optax state over params}
The NNX graph definition (the model's structure) is kept beside it and merged with the
parameters inside the step. Shardings come from the logical axis names each parameter
carries, mapped to mesh axes by `mm1_jax.parallel.rules`; optimizer moments follow the
parameters they belong to.
"""

from __future__ import annotations

import dataclasses
from typing import Any

import jax
import jax.numpy as jnp
import optax
from flax import nnx
from jax.sharding import Mesh, NamedSharding, PartitionSpec

from mm1_jax.models import MM1
from mm1_jax.models import param_count as count_params  # noqa: F401  (used by the trainer)
from mm1_jax.parallel import rules

COMPUTE_DTYPES = {'float32': jnp.float32, 'bfloat16': jnp.bfloat16}


@dataclasses.dataclass(frozen=True)
class StateLayout:
  """Everything static about the train state: structure, shapes and shardings."""
  graphdef: Any
  abstract: Any   # pytree of jax.ShapeDtypeStruct with .sharding set
  shardings: Any  # pytree of NamedSharding, same structure as the state
  num_params: int


def build_model(config, seed: int) -> MM1:
  return MM1(config, rngs=nnx.Rngs(seed), dtype=COMPUTE_DTYPES[config.train.dtype])


def _param_shardings(abstract_params: nnx.State, mesh: Mesh):
  """NamedShardings of the parameters as a pure dict (the structure the state uses)."""
  return nnx.to_pure_dict(rules.state_shardings(abstract_params, mesh))


def make_layout(config, mesh: Mesh, tx: optax.GradientTransformation) -> StateLayout:
  abstract_model = nnx.eval_shape(lambda: build_model(config, config.seed))
  graphdef, abstract_params = nnx.split(abstract_model, nnx.Param)
  param_shardings = _param_shardings(abstract_params, mesh)
  pure_params = nnx.to_pure_dict(abstract_params)
  abstract_opt = jax.eval_shape(tx.init, pure_params)
  replicated = NamedSharding(mesh, PartitionSpec())
  # Moments follow their parameters. Masked transforms (frozen parameter groups) hold no
  # state for the parameters they skip: their MaskedNode placeholders stay as they are.
  is_masked = lambda x: isinstance(x, optax.MaskedNode)
  opt_shardings = optax.tree_map_params(
      tx, lambda leaf, sharding: leaf if is_masked(leaf) else sharding, abstract_opt,
      param_shardings, transform_non_params=lambda _: replicated, is_leaf=is_masked)
  shardings = {'step': replicated, 'params': param_shardings, 'opt_state': opt_shardings}
  abstract = {'step': jax.ShapeDtypeStruct((), jnp.int32),
              'params': pure_params, 'opt_state': abstract_opt}
  abstract = jax.tree.map(
      lambda a, s: jax.ShapeDtypeStruct(a.shape, a.dtype, sharding=s), abstract, shardings)
  num_params = sum(int(x.size) for x in jax.tree.leaves(pure_params))
  return StateLayout(graphdef=graphdef, abstract=abstract, shardings=shardings,
                     num_params=num_params)


def init_state(config, layout: StateLayout, tx: optax.GradientTransformation):
  """Initialises the state directly in its sharded layout (no full copy on one device)."""

  def init():
    model = build_model(config, config.seed)
    params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
    return {'step': jnp.zeros((), jnp.int32), 'params': params, 'opt_state': tx.init(params)}

  return jax.jit(init, out_shardings=layout.shardings)()


def merge_model(graphdef, params) -> MM1:
  """Rebuilds the NNX model from its graph definition and a pure parameter dict."""
  return nnx.merge(graphdef, params)
