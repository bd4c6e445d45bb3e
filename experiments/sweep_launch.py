"""A sweep's variants as launcher jobs: TPU VM trainings, GKE JobSets, Slurm scripts.

    python -m experiments.sweep --sweep=experiments/ablations/mixture.py:mm1_1b \
        --workdir=gs://bucket/mix --launcher=tpu_vm \
        --launcher-args='--name=mm1-mix --zone=us-east5-a --type=v5p-64' \
        [--vm-per-variant] [--dry-run]

tpu_vm. By default every variant trains on the one VM (--name), one after another: one
remote script, started in the background on every worker, trains the variants in order,
each appending to its own log ~/mm1-sweeps/SWEEP/VARIANT.log, and writes its progress to
~/mm1-sweeps/SWEEP/sweep.log. A variant that finished is marked
(~/mm1-sweeps/SWEEP/VARIANT.done, holding its command) and skipped when the sweep is
launched again; the first failure stops the sequence; while a sequence (or any training
launch.tpu_vm started) runs, the VM refuses another. With --vm-per-variant each variant
gets a VM of its own, named NAME-VARIANT made a DNS label (shortened with a hash where
too long or where two would collide); those VMs must exist and be set up
(`python -m launch.tpu_vm create/setup --name=...`). The commands that follow each
variant's log are printed (to stderr), e.g.

    python -m launch.tpu_vm logs --name=mm1-mix --zone=us-east5-a --type=v5p-64 \
        --log=mm1-sweeps/mixture/captions_only.log

gke, slurm. One JobSet or sbatch script per variant, written to
./sweep_SWEEP_jobs/VARIANT.yaml|.sbatch, then applied (`kubectl apply -f`) or submitted
(`sbatch`). Every variant's manifest is built, and so checked, before any is written or
submitted; a manifest file that exists with other contents is never overwritten.

--dry-run prints the commands, one per line: for tpu_vm the gcloud commands that start
the trainings, for gke and slurm the launcher command that prints each manifest.
"""

from __future__ import annotations

import argparse
import dataclasses
import os
import shlex
import subprocess
import sys
from collections.abc import Sequence

from experiments import sweep_lib
from launch import command, gke, slurm, tpu_vm, tpu_vm_shell, validate

LAUNCHERS = ('tpu_vm', 'gke', 'slurm')
SWEEPS_DIR = 'mm1-sweeps'  # on TPU VM workers, under the home directory


@dataclasses.dataclass(frozen=True)
class Plan:
  """What launching a sweep does.

  Attributes:
    commands: printed by --dry-run; for tpu_vm also what runs.
    manifests: (variant, file, text) per gke/slurm job, written and submitted in order.
    follow: how to follow each variant (commands, printed to stderr).
  """
  commands: list[list[str]]
  manifests: list[tuple[str, str, str]] = dataclasses.field(default_factory=list)
  follow: list[str] = dataclasses.field(default_factory=list)


def check_names(sweep: sweep_lib.Sweep) -> None:
  """Sweep and variant names become file and job names: plain names only."""
  validate.plain_name('sweep name', sweep.name)
  for variant in sweep.variants:
    validate.plain_name(f'sweep {sweep.name!r} variant name', variant.name)


def _workdir(workdir: str, variant: sweep_lib.Variant) -> str:
  return f'{workdir.rstrip("/")}/{variant.name}'


def _overrides(sweep: sweep_lib.Sweep, variant: sweep_lib.Variant) -> list[str]:
  overrides = sweep_lib.flatten(sweep.all_overrides(variant))
  for override in overrides:
    validate.text(f'sweep {sweep.name!r} variant {variant.name!r} override', override)
  return overrides


def _train_flags(sweep, workdir, variant) -> list[str]:
  flags = [f'--config={sweep.config}', f'--workdir={_workdir(workdir, variant)}']
  for override in _overrides(sweep, variant):
    flags += ['--override', override]
  return flags


def _logs_command(args: argparse.Namespace, vm: str, log: str) -> str:
  argv = ['python', '-m', 'launch.tpu_vm', 'logs', f'--name={vm}', f'--zone={args.zone}',
          f'--type={args.type}']
  if args.project:
    argv.append(f'--project={args.project}')
  if args.slices > 1:
    argv.append(f'--slices={args.slices}')
  return shlex.join([*argv, f'--log={log}'])


def tpu_vm_plan(sweep: sweep_lib.Sweep, workdir: str, launcher_args: Sequence[str], *,
                vm_per_variant: bool) -> Plan:
  """The variants in sequence on the --name VM, or each on a VM of its own."""
  args = tpu_vm.build_parser().parse_args(
      ['run', *launcher_args, f'--config={sweep.config}', f'--workdir={workdir}'])
  tpu_vm.check(args)
  if args.log != tpu_vm_shell.DEFAULT_LOG:
    raise validate.LaunchError(f'--launcher-args --log={args.log}: a sweep names its logs '
                               f'itself (~/{SWEEPS_DIR}/{sweep.name}/VARIANT.log)')
  where = f'{SWEEPS_DIR}/{sweep.name}'
  output = f'{where}/sweep.log'
  trainings = [
      tpu_vm_shell.Training(
          name=variant.name,
          argv=command.train_argv(sweep.config, _workdir(workdir, variant),
                                  _overrides(sweep, variant), python='python3'),
          log=f'{where}/{variant.name}.log', done_marker=f'{where}/{variant.name}.done')
      for variant in sweep.variants]
  if not vm_per_variant:
    follow = [_logs_command(args, args.name, output)]
    follow += [_logs_command(args, args.name, t.log) for t in trainings]
    return Plan(tpu_vm.sequence_commands(args, trainings, output), follow=follow)
  suffix = len(f'-{args.slices - 1}') if args.slices > 1 else 0
  vms = validate.derive_dns_labels([v.name for v in sweep.variants], prefix=args.name,
                                   max_length=validate.DNS_LABEL_MAX - suffix)
  commands, follow = [], []
  for vm, training in zip(vms, trainings):
    vm_args = argparse.Namespace(**{**vars(args), 'name': vm})
    tpu_vm.check(vm_args)
    commands += tpu_vm.sequence_commands(vm_args, [training], output)
    follow.append(_logs_command(vm_args, vm, training.log))
  return Plan(commands, follow=follow)


def manifest_plan(sweep: sweep_lib.Sweep, workdir: str, launcher: str,
                  launcher_args: Sequence[str]) -> Plan:
  """One gke JobSet or Slurm script per variant, each built (so checked) now."""
  if launcher == 'gke':
    probe = gke.build_parser().parse_args(
        [*launcher_args, '--name=probe', f'--config={sweep.config}', f'--workdir={workdir}'])
    validate.at_least('--slices', probe.slices, 1)
    max_length = gke.max_name_length(validate.tpu_type('--tpu-type', probe.tpu_type),
                                     probe.slices)
    names = validate.derive_dns_labels([v.name for v in sweep.variants], prefix=sweep.name,
                                       max_length=max_length)
    name_flags = [f'--name={name}' for name in names]
    module, render, suffix = 'launch.gke', gke.render, 'yaml'
  else:
    name_flags = [f'--job-name={sweep.name}-{v.name}' for v in sweep.variants]
    module, render, suffix = 'launch.slurm', slurm.render, 'sbatch'
  jobs_dir = f'sweep_{sweep.name}_jobs'
  commands, manifests = [], []
  for variant, name_flag in zip(sweep.variants, name_flags):
    argv = [*launcher_args, name_flag, *_train_flags(sweep, workdir, variant)]
    manifests.append((variant.name, os.path.join(jobs_dir, f'{variant.name}.{suffix}'),
                      render(argv)))
    commands.append(['python', '-m', module, *argv])
  return Plan(commands, manifests=manifests)


def plan(sweep: sweep_lib.Sweep, workdir: str, launcher: str, launcher_args: str, *,
         vm_per_variant: bool = False) -> Plan:
  """Everything launching does, built and checked; raises ValueError naming the value."""
  check_names(sweep)
  try:
    extra = shlex.split(launcher_args)
  except ValueError as e:
    raise validate.LaunchError(f'--launcher-args {launcher_args!r}: {e}') from None
  if vm_per_variant and launcher != 'tpu_vm':
    raise validate.LaunchError('--vm-per-variant: only with --launcher=tpu_vm')
  if launcher == 'tpu_vm':
    return tpu_vm_plan(sweep, workdir, extra, vm_per_variant=vm_per_variant)
  return manifest_plan(sweep, workdir, launcher, extra)


def _write_new(path: str, text: str) -> None:
  """Writes `path` unless it holds `text` already; never replaces other contents."""
  if os.path.exists(path):
    with open(path, encoding='utf-8') as f:
      if f.read() == text:
        return
    raise validate.LaunchError(f'{path}: exists with other contents (an earlier sweep '
                               f'launch?); move it away to launch again')
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  with open(path, 'x', encoding='utf-8') as f:
    f.write(text)


def submit(plan: Plan, launcher: str) -> int:
  """Runs the plan: the tpu_vm commands, or writes and submits the manifests."""
  for line in plan.follow:
    print(f'follow: {line}', file=sys.stderr)
  if launcher == 'tpu_vm':
    for cmd in plan.commands:
      code = subprocess.call(cmd)
      if code:
        print(f'error: {shlex.join(cmd[:6])} ... failed with exit status {code}; the '
              f'commands after it were not run', file=sys.stderr)
        return code
    return 0
  for _, path, text in plan.manifests:  # all or nothing: every file checked first
    if os.path.exists(path):
      _write_new(path, text)
  submitter = ['kubectl', 'apply', '-f'] if launcher == 'gke' else ['sbatch']
  for variant, path, text in plan.manifests:
    _write_new(path, text)
    code = subprocess.call([*submitter, path])
    if code:
      print(f'error: {shlex.join([*submitter, path])} (variant {variant}) failed with exit '
            f'status {code}; the later variants were not submitted', file=sys.stderr)
      return code
  return 0
