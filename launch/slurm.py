"""Slurm GPU clusters: an sbatch script that trains mm1-jax on N nodes.

    python -m launch.slurm --nodes=4 --gpus-per-node=8 --partition=gpu --time=24:00:00 \
        --config=experiments/mm1_1b.py --workdir=/shared/runs/mm1_1b > job.sbatch
    sbatch job.sbatch

One task per node (each process drives all GPUs of its node); `srun` starts them and
`jax.distributed.initialize()` reads the Slurm environment to join them. The script
activates --venv on every node if given (an environment with mm1-jax[cuda]).

Every value is checked before the script is written, and a bad one is a one-line error
naming the flag (exit status 2): no value may hold a newline or other control character;
--job-name, --partition (a comma-separated list) and --account are plain names; --time is
one of sbatch's time formats. `#SBATCH` lines cannot be shell-quoted (sbatch splits them
itself: whitespace ends a value, quotes and backslashes are consumed, '#' starts a
comment), so a --log-dir holding whitespace, a quote, a backslash or '#' is refused rather
than written; a '%' in it is written '%%', the documented escape of sbatch's filename
patterns. The log directory must exist when the job starts. The srun line and --venv
are shell-quoted.
"""

from __future__ import annotations

import argparse
import shlex
import sys
from collections.abc import Sequence

from launch import command, validate


def check(args: argparse.Namespace) -> None:
  """Every value, before the script is written; raises validate.LaunchError."""
  validate.all_text(args)
  validate.at_least('--nodes', args.nodes, 1)
  validate.at_least('--gpus-per-node', args.gpus_per_node, 1)
  validate.at_least('--cpus-per-task', args.cpus_per_task, 1)
  validate.plain_name('--job-name', args.job_name)
  validate.slurm_time('--time', args.time)
  if args.partition:
    validate.name_list('--partition', args.partition)
  if args.account:
    validate.plain_name('--account', args.account)
  if not args.log_dir:
    raise validate.LaunchError('--log-dir: empty; give a directory such as . or /shared/logs')
  validate.sbatch_directive_value('--log-dir', args.log_dir)


def sbatch_script(args: argparse.Namespace) -> str:
  """The script for checked `args` (see `check`)."""
  log_dir = args.log_dir.replace('%', '%%').rstrip('/')  # '/' -> '', then '/%x-%j.out'
  lines = [
      '#!/bin/bash',
      f'#SBATCH --job-name={args.job_name}',
      f'#SBATCH --nodes={args.nodes}',
      '#SBATCH --ntasks-per-node=1',
      f'#SBATCH --gpus-per-node={args.gpus_per_node}',
      f'#SBATCH --cpus-per-task={args.cpus_per_task}',
      f'#SBATCH --time={args.time}',
      '#SBATCH --exclusive',
      f'#SBATCH --output={log_dir}/%x-%j.out',
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
  parser.add_argument('--job-name', default='mm1-jax', help="letters, digits, '_', '.', '-'")
  parser.add_argument('--nodes', type=int, required=True)
  parser.add_argument('--gpus-per-node', type=int, default=8)
  parser.add_argument('--cpus-per-task', type=int, default=32)
  parser.add_argument('--time', default='24:00:00',
                      help='time limit: minutes, minutes:seconds, hours:minutes:seconds, '
                           'days-hours, days-hours:minutes or days-hours:minutes:seconds')
  parser.add_argument('--partition', default='', help='partition name(s), comma-separated')
  parser.add_argument('--account', default='')
  parser.add_argument('--log-dir', default='.',
                      help='existing directory for the job logs (no whitespace, quotes, '
                           "backslashes or '#': sbatch could not read them back)")
  parser.add_argument('--venv', default='', help='virtualenv to activate on every node')
  command.add_train_arguments(parser)
  return parser


def render(argv: Sequence[str]) -> str:
  """The sbatch script for a command line; raises ValueError (naming the flag) on bad values."""
  args = build_parser().parse_args(argv)
  check(args)
  return sbatch_script(args)


def main(argv: Sequence[str] | None = None) -> int:
  try:
    script = render(sys.argv[1:] if argv is None else argv)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  sys.stdout.write(script)
  return 0


if __name__ == '__main__':
  sys.exit(main())
