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
variant's overrides as --override); --dry-run prints what would be launched. With
--launcher=tpu_vm the variants train one after another on the one VM, each with its own
log, or each on a VM of its own with --vm-per-variant; see experiments/sweep_launch.py for
where the logs are and how to follow them.
"""

from __future__ import annotations

import argparse
import os
import shlex
import sys
from collections.abc import Sequence

from experiments import sweep_launch
from experiments import sweep_lib
from experiments import sweep_report

DONE = 'DONE'


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


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='python -m experiments.sweep', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--sweep', required=True, help='experiments/ablations/X.py[:arg]')
  parser.add_argument('--workdir', required=True)
  where = parser.add_mutually_exclusive_group()
  where.add_argument('--local', action='store_true', help='run here, one after another (default)')
  where.add_argument('--launcher', choices=sweep_launch.LAUNCHERS)
  parser.add_argument('--launcher-args', default='',
                      help="the launcher's own options, e.g. '--zone=Z --type=v5p-64'")
  parser.add_argument('--vm-per-variant', action='store_true',
                      help='tpu_vm: each variant on a VM of its own, named NAME-VARIANT '
                           '(default: all on --name, one after another)')
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
    try:
      plan = sweep_launch.plan(sweep, args.workdir, args.launcher, args.launcher_args,
                               vm_per_variant=args.vm_per_variant)
      if args.dry_run:
        for line in plan.follow:
          print(f'follow: {line}', file=sys.stderr)
        print('\n'.join(shlex.join(cmd) for cmd in plan.commands))
        return 0
      return sweep_launch.submit(plan, args.launcher)
    except ValueError as e:
      print(f'error: {e}', file=sys.stderr)
      return 2
  if args.vm_per_variant:
    print('error: --vm-per-variant: only with --launcher=tpu_vm', file=sys.stderr)
    return 2
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
