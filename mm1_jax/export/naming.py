"""The canonical flat tensor names of an exported MM1 (OUT/model.safetensors).

A key is the nnx parameter path of the model joined with '.', in the per-layer (unscanned)
view: `decoder.layers.3.attention.query`, `vit.blocks.0.mlp.up.kernel`,
`connector.readout.layers.1.bias`. A scanned stack (`model.decoder.scan_layers`,
`model.vit.scan_layers`) holds its layers on a leading axis of one array; the flat view
cuts that array into one tensor per layer, named as the unscanned model names it, so a
scanned and an unscanned model of the same config export the same keys. Values keep the
JAX layout and shape (Dense kernels [in, out], attention kernels [in, heads, head_dim]).

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


def _flag(section: Any, name: str) -> bool:
  try:
    return bool(section.get(name, False))
  except AttributeError:
    return False


def stacked_prefixes(model_config: Any) -> tuple[Path, ...]:
  """Parameter paths whose subtrees carry a leading 'layers' axis under this config."""
  prefixes = []
  if _flag(_section(model_config, 'vit'), 'scan_layers'):
    prefixes.append(('vit', 'blocks'))
  if _flag(_section(model_config, 'decoder'), 'scan_layers'):
    prefixes.append(('decoder', 'layers'))
  return tuple(prefixes)


def _stack_of(path: Path, prefixes: tuple[Path, ...]) -> Path | None:
  for prefix in prefixes:
    if path[:len(prefix)] == prefix:
      return prefix
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
  prefixes = stacked_prefixes(model_config)
  entries = []
  for source, shape in items:
    source = tuple(source)
    shape = _shape(shape)
    prefix = _stack_of(source, prefixes)
    if prefix is None:
      entries.append(Entry(join(source), source, None, shape))
      continue
    if not shape:
      raise NamingError(f'{join(source)} is under the scanned stack {join(prefix)} but has '
                        f'no leading layers axis (shape {shape})')
    rest = source[len(prefix):]
    for i in range(shape[0]):
      entries.append(Entry(join(prefix + (i,) + rest), source, i, shape[1:]))
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
  prefixes = stacked_prefixes(model_config)
  singles: dict[Path, tuple[str, tuple[int, ...]]] = {}
  stacks: dict[Path, dict[int, tuple[str, tuple[int, ...]]]] = {}
  order: list[Path] = []
  for key, shape in items:
    shape = _shape(shape)
    path = split(key)
    prefix = _stack_of(path, prefixes)
    if prefix is None:
      order.append(path)
      singles[path] = (key, shape)
      continue
    if len(path) <= len(prefix) + 1 or not isinstance(path[len(prefix)], int):
      raise NamingError(f'tensor {key!r} is under the scanned stack {join(prefix)} but names '
                        f'no layer index ({join(prefix)}.<i>.…)')
    source = prefix + path[len(prefix) + 1:]
    if source not in stacks:
      order.append(source)
      stacks[source] = {}
    stacks[source][path[len(prefix)]] = (key, shape)
  entries = []
  for source in order:
    if source in singles:
      key, shape = singles[source]
      entries.append(SourceEntry(source, (key,), False, shape))
      continue
    layers = stacks[source]
    count = len(layers)
    if sorted(layers) != list(range(count)):
      missing = sorted(set(range(max(layers) + 1)) - set(layers))
      raise NamingError(f'the layers of {join(source)} are not 0..n-1: missing '
                        f'{[layers_key(source, prefixes, i) for i in missing]}')
    shapes = {layers[i][1] for i in range(count)}
    if len(shapes) != 1:
      raise NamingError(f'the layers of {join(source)} have different shapes: '
                        f'{ {layers[i][0]: layers[i][1] for i in range(count)} }')
    entries.append(SourceEntry(source, tuple(layers[i][0] for i in range(count)), True,
                               (count,) + shapes.pop()))
  return entries


def layers_key(source: Path, prefixes: tuple[Path, ...], index: int) -> str:
  """The output key of layer `index` of a stacked source path."""
  prefix = _stack_of(source, prefixes)
  if prefix is None:
    return join(source)
  return join(prefix + (index,) + source[len(prefix):])


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
