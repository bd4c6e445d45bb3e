"""The gcloud commands `launch.tpu_vm --dry-run` prints."""

import shlex
import subprocess
import sys

import pytest

from launch import tpu_vm

BASE = ['--name=mm1', '--zone=us-east5-a', '--type=v5p-64']


def _commands(capsys, *argv):
  assert tpu_vm.main([*argv, '--dry-run']) == 0
  return [shlex.split(line) for line in capsys.readouterr().out.splitlines()]


def test_create_uses_the_accelerator_type(capsys):
  (cmd,) = _commands(capsys, 'create', *BASE, '--spot')
  assert cmd[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'create']
  assert '--accelerator-type=v5p-64' in cmd and '--spot' in cmd and '--zone=us-east5-a' in cmd


def test_multislice_create_is_a_queued_resource_of_several_nodes(capsys):
  (cmd,) = _commands(capsys, 'create', *BASE, '--slices=2')
  assert cmd[:5] == ['gcloud', 'compute', 'tpus', 'queued-resources', 'create']
  assert '--node-count=2' in cmd and '--node-prefix=mm1' in cmd


def test_setup_copies_and_installs_on_every_worker(capsys):
  scp, ssh = _commands(capsys, 'setup', *BASE)
  assert scp[4] == 'scp' and '--worker=all' in scp
  assert ssh[4] == 'ssh' and '--worker=all' in ssh
  assert "pip install -e '.[tpu]'" in ssh[-1]


def test_run_starts_the_same_training_command_on_all_workers(capsys):
  cmds = _commands(capsys, 'run', *BASE, '--slices=2', '--config=experiments/tiny.py',
                   '--workdir=gs://b/run', '--override', 'train.steps=7')
  assert [c[5] for c in cmds] == ['mm1-0', 'mm1-1']
  for cmd in cmds:
    assert '--worker=all' in cmd
    remote = cmd[-1].removeprefix('--command=')
    assert 'MM1_DISTRIBUTED=auto' in remote
    assert ('python3 -m mm1_jax.train --config=experiments/tiny.py --workdir=gs://b/run '
            '--config.train.steps=7') in remote


def test_logs_follow_every_worker_of_every_slice(capsys):
  cmds = _commands(capsys, 'logs', *BASE)
  workers = sorted(int(c[[a.startswith('--worker=') for a in c].index(True)].split('=')[1])
                   for c in cmds)
  assert workers == list(range(8))  # v5p-64: 32 chips on 8 hosts


def test_bad_type_and_override_fail_with_a_message(capsys):
  assert tpu_vm.main(['create', '--name=a', '--zone=z', '--type=v5p-7', '--dry-run']) == 2
  assert 'v5p-7' in capsys.readouterr().err
  assert tpu_vm.main(['run', *BASE, '--config=c.py', '--workdir=w', '--override', 'steps',
                      '--dry-run']) == 2
  assert 'KEY=VALUE' in capsys.readouterr().err


def test_launchers_import_without_jax():
  code = ('import sys; import launch.tpu_vm, launch.gke, launch.slurm; '
          'assert "jax" not in sys.modules, "launch/ imported jax"')
  subprocess.run([sys.executable, '-c', code], check=True)
