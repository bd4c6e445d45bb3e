"""The canonical flat tensor names of an exported MM1 (OUT/model.safetensors).

A key is the nnx parameter path of the model joined with '.', in the per-layer (unscanned)
view: `decoder.layers.3.attention.query`, `vit.blocks.0.mlp.up.kernel`,
`connector.readout.layers.1.bias`. A scanned stack (`model.decoder.scan_layers`,
`model.vit.scan_layers`) holds its layers on a leading axis of one array; the flat view
cuts that array into one tensor per layer, named as the unscanned model names it, so a
scanned and an unscanned model of the same config export the same keys. A scanned MoE
decoder stacks groups of `model.moe.every` layers (`decoder.layers.dense.{j}.*` and
`decoder.layers.moe.*`, [groups, ...]); group g's member j is layer g * every + j, so its
MoE layers appear as `decoder.layers.{i}.mlp.{router,gate,up,down}` for i = every-1,
2*every-1, ... Values keep the JAX layout and shape (Dense kernels [in, out], attention
kernels [in, heads, head_dim], expert kernels [experts, in, out]).

Everything is planned from paths and shapes alone, so that a converter can stream:
`plan(model_config, shapes)` lists, for every output key, the source parameter path, the
index on the source's stacked axis (None when not stacked) and the output shape; reading
`source[index]` one entry at a time never needs more than one source array in memory.
`source_plan(model_config, shapes)` is the inverse listing (for the way back): every source
parameter with the output keys that make it, in layer order.

Pure Python and numpy: importable without JAX or PyTorch. `model_config` is the model
section of the config (a ConfigDict or the plain dict stored in OUT/config.json).
"""

from __future__ import annotations

from collections.abc import Iterable, Iterator, Mapping
from typing import Any, NamedTuple

import numpy as np

Path = tuple  # of str (attribute names) and int (list indices)


class NamingError(ValueError):
  """Tensors and config disagree; the message names the key or parameter path."""


class Entry(NamedTuple):
  """One output tensor: its key, where it comes from, and its shape."""
  key: str
  source: Path              # parameter path in the nested params (nnx.to_pure_dict)
  index: int | None         # index on the source's leading 'layers' axis; None: whole array
  shape: tuple[int, ...]    # shape of the output tensor


class SourceEntry(NamedTuple):
  """One source parameter and the output keys it is made of."""
  source: Path
  keys: tuple[str, ...]     # one key (not stacked) or one per layer, in layer order
  stacked: bool             # True: np.stack of the keys' tensors on a new leading axis
  shape: tuple[int, ...]    # shape of the source parameter


# ---------------------------------------------------------------------------- keys


def join(path: Iterable[Any]) -> str:
  """('decoder', 'layers', 0, 'mlp') -> 'decoder.layers.0.mlp'."""
  return '.'.join(str(part) for part in path)


def split(key: str) -> Path:
  """'decoder.layers.0.mlp' -> ('decoder', 'layers', 0, 'mlp'); digit parts become ints."""
  return tuple(int(part) if part.isdigit() else part for part in key.split('.'))


def _section(config: Any, name: str) -> Any:
  try:
    return config[name]
  except (KeyError, TypeError, AttributeError):
    return {}


def _value(section: Any, name: str, default: Any) -> Any:
  try:
    return section.get(name, default)
  except AttributeError:
    return default


class Stack(NamedTuple):
  """A scanned subtree: `prefix` holds its layers on a leading axis.

  every == 0: a plain stack, layer i at index i. every > 0: a scanned MoE decoder, whose
  index g is a group of `every` layers, `dense.{j}` holding layer g*every + j (j < every-1)
  and `moe` layer g*every + every-1 (the layout of mm1_jax/models/decoder.py).
  """
  prefix: Path
  every: int

  def locate(self, source: Path) -> tuple[Path, int]:
    """A source path under the prefix -> (the sub-path naming its group member, member)."""
    after = source[len(self.prefix):]
    if not self.every:
      return (), 0
    if after[:1] == ('moe',):
      return ('moe',), self.every - 1
    if after[:1] == ('dense',) and len(after) > 1 and isinstance(after[1], int):
      return ('dense', after[1]), after[1]
    raise NamingError(f'{join(source)} is in the scanned MoE decoder but under neither '
                      f'{join(self.prefix)}.dense.<j> nor {join(self.prefix)}.moe')

  def out_path(self, source: Path, index: int) -> Path:
    """Output path of slice `index` of a stacked source."""
    sub, member = self.locate(source)
    layer = index * self.every + member if self.every else index
    return self.prefix + (layer,) + source[len(self.prefix) + len(sub):]

  def source_of(self, out: Path) -> tuple[Path, int]:
    """(source path, index on its stacked axis) of a per-layer output path."""
    layer, rest = out[len(self.prefix)], out[len(self.prefix) + 1:]
    if not self.every:
      return self.prefix + rest, layer
    group, member = divmod(layer, self.every)
    sub = ('moe',) if member == self.every - 1 else ('dense', member)
    return self.prefix + sub + rest, group


def moe_every(model_config: Any) -> int:
  """The MoE period of the decoder's layers; 0 for a dense decoder."""
  moe = _section(model_config, 'moe')
  if not _value(moe, 'num_experts', 0):
    return 0
  return int(_value(moe, 'every', 1))


def stacks(model_config: Any) -> tuple[Stack, ...]:
  """The scanned subtrees of the params under this config."""
  out = []
  if _value(_section(model_config, 'vit'), 'scan_layers', False):
    out.append(Stack(('vit', 'blocks'), 0))
  if _value(_section(model_config, 'decoder'), 'scan_layers', False):
    out.append(Stack(('decoder', 'layers'), moe_every(model_config)))
  return tuple(out)


def _stack_of(path: Path, all_stacks: tuple[Stack, ...]) -> Stack | None:
  for stack in all_stacks:
    if path[:len(stack.prefix)] == stack.prefix:
      return stack
  return None


# --------------------------------------------------------------------- nested trees


def _order(name) -> tuple:
  """List indices in numeric order (after any names)."""
  return (1, name, '') if isinstance(name, int) else (0, 0, str(name))


def leaves(params: Mapping) -> Iterator[tuple[Path, Any]]:
  """(path, leaf) of a nested mapping (nnx.to_pure_dict form), depth first, keys sorted."""
  def walk(node, path):
    if isinstance(node, Mapping):
      for name in sorted(node, key=_order):
        yield from walk(node[name], path + (name,))
    else:
      yield path, node
  yield from walk(params, ())


def _shape(value: Any) -> tuple[int, ...]:
  """A shape given as a tuple, or the shape of an array-like (numpy, jax, torch, abstract)."""
  if hasattr(value, 'shape'):
    return tuple(int(n) for n in value.shape)
  if isinstance(value, (tuple, list)):
    return tuple(int(n) for n in value)
  return tuple(int(n) for n in np.shape(value))


# --------------------------------------------------------------------------- plans


def plan(model_config: Any, shapes: Mapping[Path, Any] | Iterable[tuple[Path, Any]]
         ) -> list[Entry]:
  """Every output tensor of params with these (path, shape) pairs, in source order.

  `shapes` maps parameter paths (tuples, as `leaves` gives) to shapes (or to anything with
  a `.shape`: arrays, jax.ShapeDtypeStruct). A stacked source of n layers gives n entries.
  """
  items = shapes.items() if isinstance(shapes, Mapping) else shapes
  all_stacks = stacks(model_config)
  entries = []
  for source, shape in items:
    source = tuple(source)
    shape = _shape(shape)
    stack = _stack_of(source, all_stacks)
    if stack is None:
      entries.append(Entry(join(source), source, None, shape))
      continue
    if not shape:
      raise NamingError(f'{join(source)} is under the scanned stack {join(stack.prefix)} but '
                        f'has no leading layers axis (shape {shape})')
    for i in range(shape[0]):
      entries.append(Entry(join(stack.out_path(source, i)), source, i, shape[1:]))
  return entries


def param_plan(model_config: Any, params: Mapping) -> list[Entry]:
  """`plan` of a nested params dict (arrays or abstract arrays)."""
  return plan(model_config, ((path, _shape(leaf)) for path, leaf in leaves(params)))


def source_plan(model_config: Any, keys_and_shapes: Mapping[str, Any]
                | Iterable[tuple[str, Any]]) -> list[SourceEntry]:
  """The inverse of `plan`: from output keys (and shapes) to source parameters.

  Layers of a stacked source must be 0..n-1 with one shape; violations raise NamingError
  naming the keys.
  """
  items = keys_and_shapes.items() if isinstance(keys_and_shapes, Mapping) else keys_and_shapes
  all_stacks = stacks(model_config)
  layers: dict[Path, dict[int | None, tuple[str, tuple[int, ...]]]] = {}
  for key, shape in items:
    path = split(key)
    stack = _stack_of(path, all_stacks)
    if stack is None:
      source, index = path, None
    elif len(path) <= len(stack.prefix) + 1 or not isinstance(path[len(stack.prefix)], int):
      raise NamingError(f'tensor {key!r} is under the scanned stack {join(stack.prefix)} but '
                        f'names no layer index ({join(stack.prefix)}.<i>...)')
    else:
      source, index = stack.source_of(path)
    layers.setdefault(source, {})[index] = (key, _shape(shape))
  entries = []
  for source, by_index in layers.items():
    if None in by_index:
      key, shape = by_index[None]
      entries.append(SourceEntry(source, (key,), False, shape))
      continue
    count = len(by_index)
    if sorted(by_index) != list(range(count)):
      stack = _stack_of(source, all_stacks)
      missing = sorted(set(range(max(by_index) + 1)) - set(by_index))
      raise NamingError(f'the layers of {join(source)} are not complete: missing '
                        f'{[join(stack.out_path(source, i)) for i in missing]}')
    shapes = {by_index[i][1] for i in range(count)}
    if len(shapes) != 1:
      raise NamingError(f'the layers of {join(source)} differ in shape: '
                        f'{ {by_index[i][0]: by_index[i][1] for i in range(count)} }')
    entries.append(SourceEntry(source, tuple(by_index[i][0] for i in range(count)), True,
                               (count,) + shapes.pop()))
  return entries


# -------------------------------------------------------------------- whole trees


def _get(params: Mapping, path: Path) -> Any:
  node = params
  for part in path:
    try:
      node = node[part]
    except (KeyError, IndexError, TypeError):
      raise NamingError(f'parameter {join(path)} is missing from the params') from None
  return node


def iter_flat(params: Mapping, model_config: Any) -> Iterator[tuple[str, np.ndarray]]:
  """(key, numpy array) of every output tensor, lazily (one source read per entry)."""
  for entry in param_plan(model_config, params):
    value = _get(params, entry.source)
    array = np.asarray(value if entry.index is None else value[entry.index])
    yield entry.key, array


def flatten(params: Mapping, model_config: Any) -> dict[str, np.ndarray]:
  """Nested params (nnx.to_pure_dict form, scanned or not) -> {key: numpy array}."""
  return dict(iter_flat(params, model_config))


def unflatten(flat: Mapping[str, Any], model_config: Any) -> dict:
  """{key: array} -> nested params as the model of `model_config` holds them.

  Stacked sources are restacked (np.stack over layers); list indices become int keys,
  as nnx.to_pure_dict gives them.
  """
  nested: dict = {}
  for entry in source_plan(model_config, ((k, _shape(v)) for k, v in flat.items())):
    if entry.stacked:
      value = np.stack([np.asarray(flat[k]) for k in entry.keys])
    else:
      value = flat[entry.keys[0]]
    node = nested
    for part in entry.source[:-1]:
      node = node.setdefault(part, {})
      if not isinstance(node, dict):
        raise NamingError(f'{join(entry.source)} lies under a tensor of the same name prefix')
    node[entry.source[-1]] = value
  return nested
