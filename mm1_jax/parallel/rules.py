"""Logical axis names -> mesh axes: the one table, and the helpers that apply it.

Model code names logical axes only (`batch`, `embed`, `heads`, ...). `RULES` maps each to
mesh axes of `mesh.MESH_AXES`, so that a new layout is a change here (or an override
passed as `rules=`), never in a model. Parameters carry their names as the Variable
metadata `out_sharding` (see `models.layers.param`); `state_shardings` lays out a whole
nnx state from them, `constrain` pins activations inside a traced function.

A mesh axis that does not divide a dimension is dropped for that dimension (so a tiny
model on a big mesh replicates instead of crashing): of the mesh axes a name maps to, the
longest prefix whose sizes multiply to a divisor of the dimension is kept. A mesh axis
already used by an earlier dimension of the same array is not used again.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import jax
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

MeshAxes = str | tuple[str, ...] | None

RULES: dict[str, MeshAxes] = {
    # activations and data ('expert' too: dense layers are not repeated on expert shards;
    # it must stay last, the MoE layer reads each expert shard's rows as its own block)
    'batch': ('data', 'fsdp', 'expert'),
    'length': None,
    'activation_embed': None,
    # parameters (and the activations that share their feature axis)
    'embed': 'fsdp',
    'mlp': 'tensor',
    'heads': 'tensor',
    'kv_heads': 'tensor',
    'head_dim': None,
    'vocab': 'tensor',
    'exp': 'expert',
    'layers': None,
    'image_patches': None,
    'image_tokens': None,
    'patch_pixels': None,
    'norm': None,
}


def _mesh_axes(name: str | None, rules: Mapping[str, MeshAxes]) -> tuple[str, ...]:
  if name is None:
    return ()
  if name not in rules:
    raise KeyError(f'logical axis {name!r} has no entry in the sharding rules '
                   f'(mm1_jax/parallel/rules.py); known: {sorted(rules)}')
  axes = rules[name]
  if axes is None:
    return ()
  return (axes,) if isinstance(axes, str) else tuple(axes)


def logical_to_spec(names: Sequence[str | None],
                    shape: Sequence[int] | None = None,
                    mesh: jax.sharding.Mesh | jax.sharding.AbstractMesh | None = None,
                    rules: Mapping[str, MeshAxes] | None = None) -> PartitionSpec:
  """The PartitionSpec for an array whose dimensions carry logical `names`.

  With `shape` and `mesh`, mesh axes missing from the mesh or not dividing their dimension
  are dropped (see the module docstring); without them the table is applied as is.
  """
  rules = RULES if rules is None else rules
  mesh_sizes = dict(mesh.shape) if mesh is not None else None
  used: set[str] = set()
  spec = []
  for dim, name in enumerate(names):
    kept = []
    product = 1
    for axis in _mesh_axes(name, rules):
      if axis in used:
        break
      if mesh_sizes is not None:
        if axis not in mesh_sizes:
          break
        if shape is not None and shape[dim] % (product * mesh_sizes[axis]):
          break
        product *= mesh_sizes[axis]
      kept.append(axis)
    used.update(kept)
    spec.append(None if not kept else kept[0] if len(kept) == 1 else tuple(kept))
  return PartitionSpec(*spec)


def _variable_names(variable: nnx.Variable) -> tuple[str | None, ...] | None:
  names = variable.get_metadata().get('out_sharding')
  return tuple(names) if names else None


def state_shardings(state, mesh: jax.sharding.Mesh,
                    rules: Mapping[str, MeshAxes] | None = None):
  """NamedShardings for every Variable of an nnx state (abstract or real).

  The result has the structure of `state`, each Variable holding a NamedSharding, so it
  can be passed to `jax.device_put(state, ...)` or as jit in/out shardings. Variables
  without logical names are replicated.
  """

  def sharding_of(variable):
    if not isinstance(variable, nnx.Variable):
      return NamedSharding(mesh, PartitionSpec())
    names = _variable_names(variable)
    shape = variable.get_value().shape
    if names is None:
      spec = PartitionSpec()
    else:
      if len(names) != len(shape):
        raise ValueError(f'logical names {names} do not match the shape {shape}')
      spec = logical_to_spec(names, shape, mesh, rules)
    return variable.replace(NamedSharding(mesh, spec))

  return jax.tree.map(sharding_of, state, is_leaf=lambda x: isinstance(x, nnx.Variable))


def constrain(x: jax.Array, names: Sequence[str | None],
              rules: Mapping[str, MeshAxes] | None = None) -> jax.Array:
  """with_sharding_constraint by logical names under an active mesh; identity otherwise."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return x
  if len(names) != x.ndim:
    raise ValueError(f'logical names {tuple(names)} do not match the shape {x.shape}')
  return jax.lax.with_sharding_constraint(x, logical_to_spec(names, x.shape, mesh, rules))
