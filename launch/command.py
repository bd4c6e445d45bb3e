"""The one training command every launcher runs, and the shared command-line options.

Each launcher (`local`, `tpu_vm`, `gke`, `slurm`) runs the same
`python -m mm1_jax.train --config=... --workdir=... [--config.a.b=v ...]` on every host;
they differ only in how hosts are started and how processes find each other. The
multi-host set-up is left to `jax.distributed.initialize()` (MM1_DISTRIBUTED=auto), which
discovers its peers on TPU VMs, GKE and Slurm by itself.
"""

from __future__ import annotations

import argparse
import shlex
from collections.abc import Sequence


def add_train_arguments(parser: argparse.ArgumentParser) -> None:
  parser.add_argument('--config', required=True,
                      help='experiment config, e.g. experiments/mm1_3b.py or FILE.py:variant')
  parser.add_argument('--workdir', required=True,
                      help='run directory (a gs:// path on Cloud, a shared path on Slurm)')
  parser.add_argument('--override', action='append', default=[], metavar='KEY=VALUE',
                      help='config override, repeatable: --override train.steps=1000')


def train_argv(config: str, workdir: str, overrides: Sequence[str] = (),
               python: str = 'python') -> list[str]:
  """The training command as an argument list."""
  argv = [python, '-m', 'mm1_jax.train', f'--config={config}', f'--workdir={workdir}']
  for override in overrides:
    key, sep, value = override.partition('=')
    if not sep or not key:
      raise ValueError(f'--override {override!r}: expected KEY=VALUE, e.g. train.steps=100')
    key = key.removeprefix('config.')
    argv.append(f'--config.{key}={value}')
  return argv


def train_shell(args: argparse.Namespace, python: str = 'python') -> str:
  """The training command as one shell string (for ssh, containers and sbatch)."""
  return shlex.join(train_argv(args.config, args.workdir, args.override, python=python))


def render(commands: Sequence[Sequence[str]]) -> str:
  """Commands as copy-pasteable shell lines (what --dry-run prints)."""
  return '\n'.join(shlex.join(c) for c in commands)
