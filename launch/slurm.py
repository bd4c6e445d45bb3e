"""Slurm GPU clusters: an sbatch script that trains mm1-jax on N nodes.

    python -m launch.slurm --nodes=4 --gpus-per-node=8 --partition=gpu --time=24:00:00 \
        --config=experiments/mm1_1b.py --workdir=/shared/runs/mm1_1b > job.sbatch
    sbatch job.sbatch

One task per node (each process drives all GPUs of its node); `srun` starts them and
`jax.distributed.initialize()` reads the Slurm environment to join them. The script
activates --venv on every node if given (an environment with mm1-jax[cuda]).
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from launch import command


def sbatch_script(args: argparse.Namespace) -> str:
  lines = [
      '#!/bin/bash',
      f'#SBATCH --job-name={args.job_name}',
      f'#SBATCH --nodes={args.nodes}',
      '#SBATCH --ntasks-per-node=1',
      f'#SBATCH --gpus-per-node={args.gpus_per_node}',
      f'#SBATCH --cpus-per-task={args.cpus_per_task}',
      f'#SBATCH --time={args.time}',
      '#SBATCH --exclusive',
      f'#SBATCH --output={args.log_dir}/%x-%j.out',
  ]
  if args.partition:
    lines.append(f'#SBATCH --partition={args.partition}')
  if args.account:
    lines.append(f'#SBATCH --account={args.account}')
  lines += ['', 'set -euo pipefail']
  if args.venv:
    lines.append(f'source {shlex.quote(args.venv)}/bin/activate')
  lines += [
      'export MM1_DISTRIBUTED=auto',
      # Let XLA use nearly all GPU memory; the defaults leave a quarter unused.
      'export XLA_PYTHON_CLIENT_MEM_FRACTION=0.95',
      f'srun --kill-on-bad-exit=1 {command.train_shell(args)}',
      '',
  ]
  return '\n'.join(lines)


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='python -m launch.slurm', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--job-name', default='mm1-jax')
  parser.add_argument('--nodes', type=int, required=True)
  parser.add_argument('--gpus-per-node', type=int, default=8)
  parser.add_argument('--cpus-per-task', type=int, default=32)
  parser.add_argument('--time', default='24:00:00')
  parser.add_argument('--partition', default='')
  parser.add_argument('--account', default='')
  parser.add_argument('--log-dir', default='.')
  parser.add_argument('--venv', default='', help='virtualenv to activate on every node')
  command.add_train_arguments(parser)
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  if args.nodes < 1 or args.gpus_per_node < 1:
    print('error: --nodes and --gpus-per-node must be >= 1', file=sys.stderr)
    return 2
  try:
    sys.stdout.write(sbatch_script(args))
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  return 0


if __name__ == '__main__':
  sys.exit(main())
