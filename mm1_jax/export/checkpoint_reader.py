"""Reading the parameters of one training checkpoint tensor by tensor, without the rest.

`CheckpointReader(workdir, step)` opens WORKDIR/checkpoints/<step> (see
mm1_jax/train/checkpoint.py) and exposes the parameters' paths, shapes and dtypes from the
Orbax metadata alone (no array data read). `read(path, index)` reads one parameter, or
row `index` of a stacked (scanned) parameter, straight from its TensorStore array: only
the bytes of that tensor are read, never the optimizer state or the other layers, so the
memory a conversion needs does not grow with the model. A checkpoint written under any
mesh (sharded over processes or not) reads the same: TensorStore assembles the global
array from the chunks Orbax wrote.

The TensorStore spec of each array comes from Orbax's own `get_json_tspec_read`, so this
follows the on-disk format Orbax chose (OCDBT or not, zarr2 or zarr3).
"""

from __future__ import annotations

import itertools
import json
import os

import numpy as np
import orbax.checkpoint as ocp
from etils import epath

PARAMS = 'params'


class CheckpointError(ValueError):
  """The workdir or step does not hold a readable checkpoint; the message says why."""


def checkpoint_dir(workdir: str) -> str:
  return os.path.join(os.path.abspath(os.path.expanduser(workdir)), 'checkpoints')


def available_steps(workdir: str) -> list[int]:
  """The finished checkpoints' steps (Orbax's temporary directories of a killed save are
  not steps)."""
  directory = checkpoint_dir(workdir)
  if not os.path.isdir(directory):
    raise CheckpointError(f'{directory} does not exist: {workdir} is not a training workdir '
                          f'with checkpoints')
  return sorted(int(step) for step in ocp.utils.checkpoint_steps(directory))


def _flat_metadata(tree, path=()):
  """{path: ArrayMetadata} of the Orbax metadata tree (keys as Orbax stored them)."""
  if isinstance(tree, dict):
    for key, value in tree.items():
      yield from _flat_metadata(value, path + (key,))
  elif tree is not None:
    yield path, tree


def _key(part):
  """Orbax stores list indices (nnx.List children) as strings; the params use ints."""
  return int(part) if isinstance(part, str) and part.isdigit() else part


def _context():
  """A TensorStore context for reading one array after another: Orbax's default keeps up
  to 100 MB of OCDBT B-tree nodes cached, which would grow with every array opened."""
  import tensorstore as ts
  return ts.Context({'file_io_concurrency': {'limit': 16}, 'data_copy_concurrency': {'limit': 1},
                     'cache_pool#ocdbt': {'total_bytes_limit': 0}})


class CheckpointReader:
  """The parameters of WORKDIR/checkpoints/<step> (latest when step is None)."""

  def __init__(self, workdir: str, step: int | None = None):
    self.workdir = os.path.abspath(os.path.expanduser(workdir))
    steps = available_steps(self.workdir)
    if not steps:
      raise CheckpointError(f'no finished checkpoint in {checkpoint_dir(self.workdir)}')
    if step is None:
      step = steps[-1]
    if step not in steps:
      raise CheckpointError(f'no checkpoint for step {step} in {checkpoint_dir(self.workdir)}; '
                            f'available steps: {steps}')
    self.step = int(step)
    self.step_dir = epath.Path(checkpoint_dir(self.workdir)) / str(self.step)
    self.state_dir = self.step_dir / 'state'
    with open(self.state_dir / '_METADATA', encoding='utf-8') as f:
      stored = json.load(f)
    self._use_ocdbt = bool(stored.get('use_ocdbt', True))
    self._use_zarr3 = bool(stored.get('use_zarr3', False))
    metadata = ocp.StandardCheckpointHandler().metadata(self.state_dir)
    tree = getattr(metadata, 'item_metadata', metadata)
    tree = getattr(tree, 'tree', tree)
    if PARAMS not in tree:
      raise CheckpointError(f'{self.state_dir} holds no {PARAMS!r}: not a train state')
    self.arrays = {tuple(_key(p) for p in path): meta
                   for path, meta in _flat_metadata(dict(tree[PARAMS]))}
    self._shapes = {path: tuple(int(n) for n in meta.shape)
                    for path, meta in self.arrays.items()}
    self._context = _context()

  def config(self) -> dict:
    """The resolved config this step was trained with (the checkpoint's own copy, else
    WORKDIR/config.json)."""
    stored = self.step_dir / 'config' / 'metadata'
    path = stored if stored.exists() else epath.Path(self.workdir) / 'config.json'
    if not path.exists():
      raise CheckpointError(f'neither {stored} nor {path} exists: the config of step '
                            f'{self.step} is unknown')
    with open(path, encoding='utf-8') as f:
      return json.load(f)

  def shapes(self) -> dict[tuple, tuple[int, ...]]:
    return dict(self._shapes)

  def dtype(self, path: tuple) -> np.dtype:
    return np.dtype(self.arrays[path].dtype)

  def _open(self, path: tuple):
    import tensorstore as ts
    info = ocp.type_handlers.ParamInfo(
        name='.'.join(str(p) for p in (PARAMS,) + tuple(path)), parent_dir=self.state_dir,
        use_zarr3=self._use_zarr3, ts_context=self._context)
    spec = ocp.type_handlers.get_json_tspec_read(info, use_ocdbt=self._use_ocdbt)
    return ts.open(spec, context=self._context, open=True, read=True).result()

  def read(self, path: tuple, rows: slice | int | None = None) -> np.ndarray:
    """Parameter `path`, or its `rows` on the leading axis (a slice or one index), as a
    numpy array.

    Read one stored chunk at a time into the result, so that besides the result only one
    chunk (compressed and decoded) is in memory. Orbax's chunks are the arrays' shards on
    the devices that saved them; a scanned stack's chunks span every layer.
    """
    if path not in self.arrays:
      raise CheckpointError(f'{self.state_dir} has no parameter {".".join(map(str, path))}')
    store = self._open(path)
    shape = tuple(store.shape)
    bounds = [(0, n) for n in shape]
    if rows is not None:
      start, stop, _ = (slice(rows, rows + 1) if isinstance(rows, int) else rows).indices(
          shape[0])
      bounds[0] = (start, stop)
    result = np.empty([b - a for a, b in bounds], dtype=np.dtype(store.dtype.numpy_dtype))
    chunk = tuple(store.chunk_layout.read_chunk.shape or shape)
    pieces = [[(max(lo, c), min(hi, c + size)) for c in range(lo - lo % size, hi, size)]
              for (lo, hi), size in zip(bounds, chunk)]
    for block in itertools.product(*pieces):
      source = tuple(slice(a, b) for a, b in block)
      target = tuple(slice(a - lo, b - lo) for (a, b), (lo, _) in zip(block, bounds))
      result[target] = store[source].read().result()
    return result[0] if isinstance(rows, int) else result
