"""Reading a local Hugging Face model directory and filling parameters with shape checks.

`read_directory(path)` -> (config dict, {name: numpy array}) from `config.json` and every
`*.safetensors` file (sharded checkpoints included). `Assigner` writes converted arrays
into a pure parameter dict (nested dicts, as `nnx.to_pure_dict` gives) and fails with a
message naming both our parameter and the checkpoint's when a shape does not fit.
"""

from __future__ import annotations

import glob
import json
import os
from collections.abc import Callable
from typing import NamedTuple

import numpy as np


class HFImportError(ValueError):
  """A checkpoint does not fit the config; the message names the parameter."""


def read_directory(path: str) -> tuple[dict, dict[str, np.ndarray]]:
  path = os.path.abspath(os.path.expanduser(path))
  config_file = os.path.join(path, 'config.json')
  if not os.path.exists(config_file):
    raise FileNotFoundError(f'{config_file} not found: {path} is not a Hugging Face model '
                            f'directory')
  files = sorted(glob.glob(os.path.join(path, '*.safetensors')))
  if not files:
    raise FileNotFoundError(f'no *.safetensors file in {path} (PyTorch .bin files are not '
                            f'read; convert them with save_pretrained(safe_serialization=True))')
  from safetensors.numpy import load_file  # only the importer needs safetensors
  tensors: dict[str, np.ndarray] = {}
  for file in files:
    tensors.update(load_file(file))
  with open(config_file, encoding='utf-8') as f:
    return json.load(f), tensors


def to_float32(array: np.ndarray) -> np.ndarray:
  return np.asarray(array, dtype=np.float32)


class Assigner:
  """Fills `target` (a pure dict of abstract arrays) from named checkpoint tensors."""

  def __init__(self, target: dict, tensors: dict[str, np.ndarray], *, where: str):
    self.target = target
    self.tensors = tensors
    self.where = where  # our prefix in messages, e.g. 'vit'
    self.used: set[str] = set()

  def get(self, name: str) -> np.ndarray:
    if name not in self.tensors:
      raise HFImportError(f'{self.where}: the checkpoint has no tensor {name!r}')
    self.used.add(name)
    return to_float32(self.tensors[name])

  def set(self, path: tuple, name: str, convert: Callable[[np.ndarray], np.ndarray] = None,
          *, stacked_index: int | None = None) -> None:
    """target[path] = convert(tensor `name`), optionally into row `stacked_index` (scan)."""
    value = self.get(name)
    value = convert(value) if convert is not None else value
    node = self.target
    for key in path[:-1]:
      node = node[key]
    leaf = node[path[-1]]
    shape = tuple(leaf.shape[1:]) if stacked_index is not None else tuple(leaf.shape)
    ours = '.'.join(str(p) for p in (self.where,) + tuple(path))
    if tuple(value.shape) != shape:
      raise HFImportError(f'{ours}: checkpoint tensor {name!r} gives shape '
                         f'{tuple(value.shape)}, the config needs {shape}')
    if stacked_index is None:
      node[path[-1]] = value
    else:
      if not isinstance(leaf, np.ndarray):
        leaf = np.zeros(leaf.shape, np.float32)
        node[path[-1]] = leaf
      leaf[stacked_index] = value

  def check_config(self, key: str, ours, theirs, hf_key: str) -> None:
    if ours != theirs:
      raise HFImportError(f'config.{key}={ours!r} does not match the checkpoint '
                         f'({hf_key}={theirs!r})')


class TensorMap(NamedTuple):
  """One Hugging Face tensor and our parameter it corresponds to, with the exact (pure
  reshape / transpose) conversions both ways. `index` is the row of a stacked (scanned)
  parameter; None: the whole parameter. A missing conversion is the identity."""
  hf: str
  ours: tuple
  index: int | None = None
  to_ours: Callable[[np.ndarray], np.ndarray] | None = None
  to_hf: Callable[[np.ndarray], np.ndarray] | None = None
