"""Run every variant of an ablation sweep and tabulate and plot what it shows.

    python -m experiments.sweep --sweep=experiments/ablations/mixture.py --workdir=DIR
    python -m experiments.sweep --sweep=... --workdir=gs://b/mix --launcher=tpu_vm \
        --launcher-args='--name=mm1-mix --zone=us-east5-a --type=v5p-64' [--dry-run]

Locally (the default) the variants train one after another in this process, each in
DIR/<variant>/ and each evaluated by its own run (the sweep sets `eval.every`); a variant
whose DIR/<variant>/DONE exists is skipped, so re-running resumes the sweep (an
interrupted variant resumes from its own checkpoint). After every variant,
DIR/results.csv, DIR/results.md and DIR/eval_<task>.png are rewritten.

With --launcher, each variant becomes a job of that launcher (same config file plus the
variant's overrides as --override); --dry-run prints what would be launched.
"""

from __future__ import annotations

import argparse
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence

from experiments import sweep_lib
from experiments import sweep_report

DONE = 'DONE'
LAUNCHERS = ('tpu_vm', 'gke', 'slurm')


def run_local(sweep: sweep_lib.Sweep, workdir: str) -> list[dict]:
  from mm1_jax.train import trainer  # JAX only where the variants run here

  rows = []
  for index, variant in enumerate(sweep.variants):
    run_dir = os.path.join(workdir, variant.name)
    if os.path.exists(os.path.join(run_dir, DONE)):
      print(f'[{index + 1}/{len(sweep.variants)}] {variant.name}: done, skipped')
    else:
      print(f'[{index + 1}/{len(sweep.variants)}] {variant.name}: training in {run_dir}')
      summary = trainer.train(sweep.config_for(variant), run_dir)
      if summary.stopped_early:
        raise SystemExit(f'{variant.name}: stopped early ({summary.stopped_early}); '
                         f're-run the sweep to resume')
      with open(os.path.join(run_dir, DONE), 'w', encoding='utf-8') as f:
        f.write('ok\n')
    rows.append({'variant': variant.name, 'x': variant.x, **sweep_report.read_run(run_dir)})
    write_report(sweep, rows, workdir)
  return rows


def write_report(sweep: sweep_lib.Sweep, rows: list[dict], workdir: str) -> list[str]:
  return (sweep_report.write_tables(rows, workdir)
          + sweep_report.plot(rows, workdir, sweep.swept))


def launch_commands(sweep: sweep_lib.Sweep, workdir: str, launcher: str,
                    launcher_args: Sequence[str]) -> list[list[str]]:
  """One launcher invocation per variant (tpu_vm: `run`; gke and slurm print a manifest)."""
  commands = []
  for variant in sweep.variants:
    train = [f'--config={sweep.config}', f'--workdir={workdir.rstrip("/")}/{variant.name}']
    for override in sweep_lib.flatten(sweep.all_overrides(variant)):
      train += ['--override', override]
    if launcher == 'tpu_vm':
      prefix = [sys.executable, '-m', 'launch.tpu_vm', 'run']
    elif launcher == 'gke':
      prefix = [sys.executable, '-m', 'launch.gke', f'--name={sweep.name}-{variant.name}'.replace('_', '-')]
    else:
      prefix = [sys.executable, '-m', 'launch.slurm', f'--job-name={sweep.name}-{variant.name}']
    commands.append([*prefix, *launcher_args, *train])
  return commands


def submit(sweep: sweep_lib.Sweep, commands: list[list[str]], launcher: str, *,
           dry_run: bool) -> int:
  """tpu_vm commands run as they are; gke and slurm ones write a manifest that is then
  applied (kubectl) or submitted (sbatch). The manifests stay in ./sweep_<name>_jobs/."""
  if dry_run:
    print('\n'.join(shlex.join(cmd) for cmd in commands))
    return 0
  if launcher == 'tpu_vm':
    return max(subprocess.call(cmd) for cmd in commands)
  jobs_dir = f'sweep_{sweep.name}_jobs'
  os.makedirs(jobs_dir, exist_ok=True)
  suffix, submitter = ('yaml', ['kubectl', 'apply', '-f']) if launcher == 'gke' else (
      'sbatch', ['sbatch'])
  for variant, cmd in zip(sweep.variants, commands):
    manifest = subprocess.run(cmd, check=True, capture_output=True, text=True).stdout
    path = os.path.join(jobs_dir, f'{variant.name}.{suffix}')
    with open(path, 'w', encoding='utf-8') as f:
      f.write(manifest)
    if subprocess.call([*submitter, path]):
      return 1
  return 0


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='python -m experiments.sweep', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--sweep', required=True, help='experiments/ablations/X.py[:arg]')
  parser.add_argument('--workdir', required=True)
  where = parser.add_mutually_exclusive_group()
  where.add_argument('--local', action='store_true', help='run here, one after another (default)')
  where.add_argument('--launcher', choices=LAUNCHERS)
  parser.add_argument('--launcher-args', default='',
                      help="the launcher's own options, e.g. '--zone=Z --type=v5p-64'")
  parser.add_argument('--dry-run', action='store_true',
                      help='print the variants (or launcher commands) without running them')
  return parser


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    sweep = sweep_lib.load_sweep(args.sweep)
    for variant in sweep.variants:  # every override must name a real key, before any run
      sweep.config_for(variant)
  except (FileNotFoundError, AttributeError, KeyError, ValueError) as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  if args.launcher:
    commands = launch_commands(sweep, args.workdir, args.launcher,
                               shlex.split(args.launcher_args))
    return submit(sweep, commands, args.launcher, dry_run=args.dry_run)
  if args.dry_run:
    for variant in sweep.variants:
      print(f'{variant.name}: {sweep.all_overrides(variant)}')
    return 0
  os.makedirs(args.workdir, exist_ok=True)
  rows = run_local(sweep, args.workdir)
  print(open(os.path.join(args.workdir, 'results.md'), encoding='utf-8').read())
  print(f'{len(rows)} variants; results and plots in {args.workdir}')
  return 0


if __name__ == '__main__':
  sys.exit(main())
