"""Writing and reading safetensors checkpoints, one file or sharded with an index, as
Hugging Face does.

Up to `max_shard_size` bytes a directory holds PREFIX.safetensors; above it,
PREFIX-00001-of-0000N.safetensors ... and PREFIX.safetensors.index.json
({"metadata": {"total_size": bytes}, "weight_map": {name: file}}). The shards are planned
from the tensors' names and byte sizes before any data is read, so that a writer can
stream: `write(directory, plan, produce)` asks `produce(name)` for one tensor at a time,
writes each shard as soon as its tensors are in and drops them before the next shard's
tensors are produced. A tensor larger than the limit gets a shard of its own.

`open_tensors(directory)` reads either layout back lazily and fails naming the file when
one is missing, truncated or not safetensors.
"""

from __future__ import annotations

import json
import os
import re
from collections.abc import Callable, Iterator, Sequence

import numpy as np

SIZE_UNITS = {'': 1, 'B': 1, 'KB': 10**3, 'MB': 10**6, 'GB': 10**9, 'TB': 10**12,
              'KIB': 2**10, 'MIB': 2**20, 'GIB': 2**30, 'TIB': 2**40}


class SafetensorsError(ValueError):
  """A safetensors directory is incomplete or damaged; the message names the file."""


def parse_size(size: int | str) -> int:
  """'5GB' / '500MiB' / '2048' / 2048 -> bytes (decimal units as Hugging Face's)."""
  if isinstance(size, int):
    value = size
  else:
    match = re.fullmatch(r'\s*(\d+(?:\.\d+)?)\s*([a-zA-Z]*)\s*', str(size))
    unit = match.group(2).upper() if match else None
    if not match or unit not in SIZE_UNITS:
      raise ValueError(f'max_shard_size={size!r}: expected bytes or a size like 5GB, 500MB')
    value = int(float(match.group(1)) * SIZE_UNITS[unit])
  if value <= 0:
    raise ValueError(f'max_shard_size={size!r} must be positive')
  return value


def plan_shards(sizes: Sequence[tuple[str, int]], max_shard_size: int) -> list[list[str]]:
  """Consecutive tensors grouped into shards of at most max_shard_size bytes each."""
  shards: list[list[str]] = []
  used = max_shard_size + 1
  for name, nbytes in sizes:
    if shards and used + nbytes <= max_shard_size:
      shards[-1].append(name)
      used += nbytes
    else:
      shards.append([name])
      used = nbytes
  return shards


def shard_names(prefix: str, count: int) -> list[str]:
  if count == 1:
    return [f'{prefix}.safetensors']
  return [f'{prefix}-{i:05d}-of-{count:05d}.safetensors' for i in range(1, count + 1)]


def index_name(prefix: str) -> str:
  return f'{prefix}.safetensors.index.json'


def write(directory: str, sizes: Sequence[tuple[str, int]],
          produce: Callable[[str], np.ndarray], *, max_shard_size: int,
          prefix: str = 'model', metadata: dict[str, str] | None = None,
          on_tensor: Callable[[str, int], None] | None = None,
          after_shard: Callable[[], None] | None = None) -> list[str]:
  """Writes the tensors named in `sizes` (in that order) into `directory`; returns the
  files written. `produce(name)` returns a C-contiguous array of exactly the planned size."""
  from safetensors.numpy import save_file
  groups = plan_shards(sizes, max_shard_size)
  files = shard_names(prefix, len(groups))
  expected = dict(sizes)
  weight_map = {}
  for group, file in zip(groups, files):
    tensors = {}
    for name in group:
      array = np.ascontiguousarray(produce(name))
      if array.nbytes != expected[name]:
        raise SafetensorsError(f'{name}: produced {array.nbytes} bytes, planned '
                               f'{expected[name]}')
      tensors[name] = array
      weight_map[name] = file
      if on_tensor is not None:
        on_tensor(name, array.nbytes)
    save_file(tensors, os.path.join(directory, file), metadata={'format': 'pt',
                                                                **(metadata or {})})
    del tensors  # this shard's arrays go before the next shard's are produced
    if after_shard is not None:
      after_shard()
  if len(files) > 1:
    index = {'metadata': {'total_size': sum(expected.values())}, 'weight_map': weight_map}
    with open(os.path.join(directory, index_name(prefix)), 'w', encoding='utf-8') as f:
      json.dump(index, f, indent=2)
  return files


class Tensors:
  """The tensors of a safetensors directory (one file or sharded), read lazily by name."""

  def __init__(self, directory: str, prefix: str = 'model'):
    self.directory = directory
    index_file = os.path.join(directory, index_name(prefix))
    single = os.path.join(directory, f'{prefix}.safetensors')
    if os.path.exists(index_file):
      try:
        with open(index_file, encoding='utf-8') as f:
          weight_map = json.load(f)['weight_map']
      except (ValueError, KeyError) as e:
        raise SafetensorsError(f'{index_file} is not a safetensors index ({e})') from None
    elif os.path.exists(single):
      weight_map = None
    else:
      raise SafetensorsError(f'{directory} holds neither {prefix}.safetensors nor '
                             f'{index_name(prefix)}')
    files = sorted(set(weight_map.values())) if weight_map else [os.path.basename(single)]
    self._handles = {file: self._open(file) for file in files}
    self.weight_map = weight_map or {name: files[0] for name in self._handles[files[0]].keys()}
    for file, handle in self._handles.items():
      missing = [n for n, f in self.weight_map.items() if f == file and n not in handle.keys()]
      if missing:
        raise SafetensorsError(f'{os.path.join(directory, file)} lacks {missing[0]!r} which '
                               f'the index places there ({len(missing)} tensors in all)')

  def _open(self, file: str):
    from safetensors import safe_open
    path = os.path.join(self.directory, file)
    if not os.path.exists(path):
      raise SafetensorsError(f'{path} is missing (named by the index)')
    try:
      handle = safe_open(path, framework='numpy')
    except Exception as e:  # safetensors raises its own SafetensorError for damaged files
      raise SafetensorsError(f'{path} is not a complete safetensors file '
                             f'(truncated or damaged: {e})') from None
    return handle

  def names(self) -> list[str]:
    return list(self.weight_map)

  def shape(self, name: str) -> tuple[int, ...]:
    return tuple(self._handles[self.weight_map[name]].get_slice(name).get_shape())

  def get(self, name: str) -> np.ndarray:
    return self._handles[self.weight_map[name]].get_tensor(name)

  def items(self) -> Iterator[tuple[str, np.ndarray]]:
    for name in self.weight_map:
      yield name, self.get(name)
