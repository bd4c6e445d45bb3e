"""Sweeps: a base config and named variants that differ in one choice.

An ablation file (experiments/ablations/*.py) defines `get_sweep(arg=None) -> Sweep`. Each
variant is a set of config overrides; `x` is the value of the swept quantity used on the
plots' horizontal axis (a number, or a label for categorical sweeps).
"""

from __future__ import annotations

import dataclasses
import importlib.util
import os
from typing import Any

import ml_collections

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


@dataclasses.dataclass(frozen=True)
class Variant:
  name: str
  overrides: dict[str, Any]
  x: float | str


@dataclasses.dataclass(frozen=True)
class Sweep:
  name: str
  swept: str                  # what varies, for axis labels: 'caption share (%)'
  config: str                 # the base experiment, 'experiments/X.py[:arg]'
  overrides: dict[str, Any]   # applied to every variant (e.g. evaluate at the last step)
  variants: tuple[Variant, ...]

  def __post_init__(self):
    names = [v.name for v in self.variants]
    if len(set(names)) != len(names):
      raise ValueError(f'sweep {self.name!r}: duplicate variant names {names}')

  def all_overrides(self, variant: Variant) -> dict[str, Any]:
    return {**self.overrides, **variant.overrides}

  def config_for(self, variant: Variant) -> ml_collections.ConfigDict:
    config = load_config(self.config)
    for key, value in self.all_overrides(variant).items():
      set_key(config, key, value, where=f'sweep {self.name!r} variant {variant.name!r}')
    return config


def set_key(config: ml_collections.ConfigDict, key: str, value: Any, *, where: str) -> None:
  """Sets a dotted key that must already exist (a typo fails, naming the key)."""
  *parents, leaf = key.split('.')
  node = config
  for i, part in enumerate(parents):
    if part not in node:
      raise KeyError(f'{where}: config has no key {".".join(parents[:i + 1])!r}')
    node = node[part]
  if leaf not in node:
    raise KeyError(f'{where}: config has no key {key!r}')
  node[leaf] = value


def _call_from_file(spec_string: str, function: str, what: str):
  """Runs `function(arg)` of 'FILE.py' or 'FILE.py:arg'."""
  path, _, arg = spec_string.partition(':')
  if not os.path.isfile(path) and os.path.isfile(os.path.join(REPO_ROOT, path)):
    path = os.path.join(REPO_ROOT, path)  # experiments/... works from any directory
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{what}: no such file {path}')
  spec = importlib.util.spec_from_file_location(
      f'_mm1_{os.path.splitext(os.path.basename(path))[0]}', path)
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  if not hasattr(module, function):
    raise AttributeError(f'{what}: {path} defines no {function}(arg=None)')
  return getattr(module, function)(arg or None)


# What an ablation file's `arg` selects: the base experiment of its sweep.
BASES = {None: 'experiments/tiny.py', 'smoke': 'experiments/tiny.py:smoke',
         'mm1_1b': 'experiments/mm1_1b.py'}


def base_config_path(arg: str | None, sweep_name: str) -> str:
  if arg not in BASES:
    raise ValueError(f'sweep {sweep_name!r}: unknown argument {arg!r}; known: '
                     f'{sorted(a for a in BASES if a)} (none: the tiny synthetic scale)')
  return BASES[arg]


def load_sweep(path: str) -> Sweep:
  return _call_from_file(path, 'get_sweep', '--sweep')


def load_config(path: str) -> ml_collections.ConfigDict:
  return _call_from_file(path, 'get_config', 'config')


def flatten(overrides: dict[str, Any]) -> list[str]:
  """Overrides as KEY=VALUE strings (what the launchers' --override takes)."""
  return [f'{key}={value}' for key, value in overrides.items()]
