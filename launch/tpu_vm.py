"""Cloud TPU VMs: create a slice, install mm1-jax on every worker, train, follow, delete.

    python -m launch.tpu_vm create --name=mm1 --zone=us-east5-a --type=v5p-64 [--queued --spot]
    python -m launch.tpu_vm setup  --name=mm1 --zone=us-east5-a --type=v5p-64 [--source=.]
    python -m launch.tpu_vm run    --name=mm1 --zone=us-east5-a --type=v5p-64 \
        --config=experiments/mm1_3b.py --workdir=gs://bucket/mm1_3b [--override train.steps=1000]
    python -m launch.tpu_vm logs   --name=mm1 --zone=us-east5-a --type=v5p-64 [--no-follow]
    python -m launch.tpu_vm delete --name=mm1 --zone=us-east5-a --type=v5p-64

Every subcommand takes --dry-run, which prints the gcloud commands instead of running them.
`setup` copies the local source tree to every worker and installs it with the `tpu` extra;
`run` starts the same training command on every worker in the background (each host's
`jax.distributed.initialize()` finds the others), appending its output to ~/mm1-train.log
(--log), and refuses to start while a training it started still runs there; `logs` prints
every worker's log from its start and follows it, each line prefixed by `[NODE/WORKER] `
(--log picks another log: an experiments.sweep variant logs to
mm1-sweeps/SWEEP/VARIANT.log, the sweep's progress to mm1-sweeps/SWEEP/sweep.log).
With --slices > 1 a multislice run is created as a queued resource of several nodes.

Every value is checked before anything runs (names are DNS labels, no value holds a
control character) and shell-quoted where the worker's shell reads it; a bad one is a
one-line error naming the flag, exit status 2. The remote shell is built in
`launch.tpu_vm_shell`.
"""

from __future__ import annotations

import argparse
import subprocess
import sys
from collections.abc import Sequence

from launch import command, topology, tpu_vm_shell, validate


def _common(args) -> list[str]:
  flags = [f'--zone={args.zone}']
  if args.project:
    flags.append(f'--project={args.project}')
  return flags


def _node_names(args) -> list[str]:
  if args.slices == 1:
    return [args.name]
  # Queued multislice resources name their nodes NAME-0, NAME-1, ...
  return [f'{args.name}-{i}' for i in range(args.slices)]


def _ssh(args, node: str, remote: str, worker: str = 'all') -> list[str]:
  return ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', node, *_common(args),
          f'--worker={worker}', f'--command={remote}']


def create_commands(args) -> list[list[str]]:
  tpu = topology.parse(args.type)
  if args.queued or args.slices > 1:
    cmd = ['gcloud', 'compute', 'tpus', 'queued-resources', 'create', args.name,
           *_common(args), f'--accelerator-type={tpu.accelerator_type}',
           f'--runtime-version={args.runtime}']
    if args.slices > 1:
      cmd += [f'--node-count={args.slices}', f'--node-prefix={args.name}']
    else:
      cmd.append(f'--node-id={args.name}')
  else:
    cmd = ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create', args.name, *_common(args),
           f'--accelerator-type={tpu.accelerator_type}', f'--version={args.runtime}']
  if args.spot:
    cmd.append('--spot')
  return [cmd]


def setup_commands(args) -> list[list[str]]:
  remote_dir = tpu_vm_shell.home_path(tpu_vm_shell.REMOTE_DIR)
  install = (f'cd {remote_dir} && python3 -m pip install --upgrade pip '
             f"&& python3 -m pip install -e '.[tpu]'")
  commands = []
  for node in _node_names(args):
    # scp's remote path is read by the worker's shell; REMOTE_DIR is a plain word.
    commands.append(['gcloud', 'compute', 'tpus', 'tpu-vm', 'scp', '--recurse', args.source,
                     f'{node}:~/{tpu_vm_shell.REMOTE_DIR}', *_common(args), '--worker=all'])
    commands.append(_ssh(args, node, install))
  return commands


def sequence_commands(args, trainings: Sequence[tpu_vm_shell.Training],
                      output: str) -> list[list[str]]:
  """Starts `trainings` one after another, in the background, on every worker of the VM."""
  remote = tpu_vm_shell.start_in_background(tpu_vm_shell.sequence_script(trainings), output)
  return [_ssh(args, node, remote) for node in _node_names(args)]


def run_commands(args) -> list[list[str]]:
  train = command.train_argv(args.config, args.workdir, args.override, python='python3')
  return sequence_commands(args, [tpu_vm_shell.Training('train', train)], args.log)


def logs_commands(args) -> list[list[str]]:
  tpu = topology.parse(args.type)
  commands = []
  for node in _node_names(args):
    for worker in range(tpu.hosts):
      remote = tpu_vm_shell.follow_command(args.log, f'[{node}/{worker}] ',
                                           follow=not args.no_follow)
      commands.append(_ssh(args, node, remote, worker=str(worker)))
  return commands


def delete_commands(args) -> list[list[str]]:
  if args.queued or args.slices > 1:
    return [['gcloud', 'compute', 'tpus', 'queued-resources', 'delete', args.name,
             *_common(args), '--force', '--quiet']]
  return [['gcloud', 'compute', 'tpus', 'tpu-vm', 'delete', args.name, *_common(args),
           '--quiet']]


ACTIONS = {
    'create': create_commands,
    'setup': setup_commands,
    'run': run_commands,
    'logs': logs_commands,
    'delete': delete_commands,
}


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='python -m launch.tpu_vm', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  sub = parser.add_subparsers(dest='action', required=True)
  for action in ACTIONS:
    p = sub.add_parser(action)
    p.add_argument('--name', required=True, help='TPU VM (or queued resource) name')
    p.add_argument('--zone', required=True, help='e.g. us-east5-a')
    p.add_argument('--type', required=True, help='accelerator type, e.g. v5p-64')
    p.add_argument('--project', default='')
    p.add_argument('--slices', type=int, default=1, help='number of slices (multislice)')
    p.add_argument('--queued', action='store_true', help='create through queued resources')
    p.add_argument('--dry-run', action='store_true', help='print the commands only')
    if action == 'create':
      p.add_argument('--runtime', default='v2-alpha-tpuv5', help='TPU software version')
      p.add_argument('--spot', action='store_true')
    if action == 'setup':
      p.add_argument('--source', default='.', help='local source tree to install')
    if action == 'run':
      command.add_train_arguments(p)
    if action in ('run', 'logs'):
      p.add_argument('--log', default=tpu_vm_shell.DEFAULT_LOG,
                     help='log file on every worker: absolute, or under the home directory '
                          f'(with or without ~/); default {tpu_vm_shell.DEFAULT_LOG}')
    if action == 'logs':
      p.add_argument('--no-follow', action='store_true',
                     help='print the logs as they are and stop (default: follow them)')
  return parser


def check(args: argparse.Namespace) -> None:
  """Every value, before any command is built; raises validate.LaunchError."""
  validate.all_text(args)
  validate.at_least('--slices', args.slices, 1)
  # Multislice nodes are called NAME-0 ... NAME-(slices-1); each is a DNS label too.
  suffix = f'-{args.slices - 1}' if args.slices > 1 else ''
  validate.dns_label('--name', args.name, max_length=validate.DNS_LABEL_MAX - len(suffix),
                     why=f' with --slices={args.slices} (the nodes are named NAME{suffix})'
                     if suffix else '')
  validate.dns_label('--zone', args.zone)
  validate.tpu_type('--type', args.type)
  if getattr(args, 'log', None) == '':
    raise validate.LaunchError('--log: empty; give a file name such as mm1-train.log')


def _execute(commands: Sequence[Sequence[str]], *, parallel: bool) -> int:
  if not parallel:
    for cmd in commands:
      code = subprocess.call(list(cmd))
      if code:
        return code
    return 0
  procs = [subprocess.Popen(list(cmd)) for cmd in commands]
  return max(p.wait() for p in procs)


def main(argv: Sequence[str] | None = None) -> int:
  args = build_parser().parse_args(argv)
  try:
    check(args)
    commands = ACTIONS[args.action](args)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  if args.dry_run:
    print(command.render(commands))
    return 0
  return _execute(commands, parallel=args.action == 'logs')


if __name__ == '__main__':
  sys.exit(main())
