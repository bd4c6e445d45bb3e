"""The gcloud commands `launch.tpu_vm --dry-run` prints, parsed, and their remote shell run
here on a fake worker (tests/launch/fake_worker.py)."""

import os
import queue
import shlex
import signal
import subprocess
import sys
import threading

import pytest

from launch import tpu_vm
from launch import tpu_vm_shell
from tests.launch import fake_worker

BASE = ['--name=mm1', '--zone=us-east5-a', '--type=v5p-64']
REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _commands(capsys, *argv):
  assert tpu_vm.main([*argv, '--dry-run']) == 0
  return [shlex.split(line) for line in capsys.readouterr().out.splitlines()]


def _refused(capsys, *argv):
  """Exit status 2 and one error line; returns that line."""
  assert tpu_vm.main([*argv, '--dry-run']) == 2
  out, err = capsys.readouterr()
  assert out == ''
  (line,) = err.splitlines()
  assert line.startswith('error: ')
  return line


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
  assert scp[4] == 'scp' and '--worker=all' in scp and scp[-3] == 'mm1:~/mm1-jax'
  assert ssh[4] == 'ssh' and '--worker=all' in ssh
  remote = fake_worker.shell_words(fake_worker.remote_of(ssh))
  assert remote[:3] == ['cd', '~/mm1-jax', '&&']
  assert remote[-6:] == ['python3', '-m', 'pip', 'install', '-e', '.[tpu]']
  fake_worker.bash_syntax_ok(fake_worker.remote_of(ssh))


def test_run_starts_the_same_training_command_on_all_workers(capsys):
  cmds = _commands(capsys, 'run', *BASE, '--slices=2', '--config=experiments/tiny.py',
                   '--workdir=gs://b/run', '--override', 'train.steps=7')
  assert [c[5] for c in cmds] == ['mm1-0', 'mm1-1']
  for cmd in cmds:
    assert '--worker=all' in cmd
    remote = fake_worker.remote_of(cmd)
    fake_worker.bash_syntax_ok(remote)
    script = fake_worker.inner_script(remote)
    fake_worker.bash_syntax_ok(script)
    words = fake_worker.shell_words(script)
    assert words[words.index('export') + 1] == 'MM1_DISTRIBUTED=auto'
    at = words.index('if')
    assert words[at + 1:at + 8] == ['python3', '-m', 'mm1_jax.train',
                                    '--config=experiments/tiny.py', '--workdir=gs://b/run',
                                    '--config.train.steps=7', '<']


def test_run_on_a_worker_passes_every_value_verbatim_appends_the_log_and_holds_the_worker(
    capsys, tmp_path):
  workdir = "gs://b/it's a $(touch pwned) `x` run"
  (cmd,) = _commands(capsys, 'run', *BASE, '--config=experiments/tiny.py',
                     f'--workdir={workdir}', '--override', 'data.root=/a b;c')
  worker = fake_worker.FakeWorker(tmp_path)
  (worker.home / 'mm1-train.log').write_text('an earlier run\n')
  worker.hold.touch()
  started = worker.run(fake_worker.remote_of(cmd))
  assert started.returncode == 0, started.stderr
  worker.wait_for(lambda: worker.records(), 'the training to start')

  again = worker.run(fake_worker.remote_of(cmd))  # a second start while the first runs
  assert again.returncode == tpu_vm_shell.BUSY_STATUS
  assert 'still running' in again.stderr

  worker.hold.unlink()
  log = worker.home / 'mm1-train.log'
  worker.wait_for(lambda: '[1/1] train: finished' in log.read_text(), 'the training to end')
  assert worker.trainings_argv() == [[
      '-m', 'mm1_jax.train', '--config=experiments/tiny.py', f'--workdir={workdir}',
      '--config.data.root=/a b;c']]
  assert not (worker.home / 'mm1-jax' / 'pwned').exists()
  lines = log.read_text().splitlines()
  assert lines[0] == 'an earlier run'  # appended to, never truncated
  assert any(l.startswith('training output of -m mm1_jax.train') for l in lines)
  assert [r.split()[0] for r in worker.records()] == ['start', 'end']  # one training only


def test_logs_follow_every_worker_of_every_slice(capsys):
  cmds = _commands(capsys, 'logs', *BASE, '--slices=2')
  workers = sorted((c[5], int(c[[a.startswith('--worker=') for a in c].index(True)]
                              .split('=')[1])) for c in cmds)
  # v5p-64: 32 chips on 8 hosts, per slice.
  assert workers == [(f'mm1-{s}', w) for s in range(2) for w in range(8)]


def _log_lines():
  return ['step 1 loss=2.0', 'a/b/c & d | e', r'back\slash \n %s %d', "quote ' and \"",
          '', 'last']


def test_logs_remote_command_prefixes_every_line(capsys, tmp_path):
  cmds = _commands(capsys, 'logs', *BASE, '--no-follow')
  worker = fake_worker.FakeWorker(tmp_path)
  (worker.home / 'mm1-train.log').write_text('\n'.join(_log_lines()) + '\n')
  for cmd in cmds:
    node, worker_index = cmd[5], cmd[[a.startswith('--worker=') for a in cmd].index(True)]
    remote = fake_worker.remote_of(cmd)
    fake_worker.bash_syntax_ok(remote)
    result = worker.run(remote)
    assert result.returncode == 0, result.stderr
    prefix = f'[{node}/{worker_index.split("=")[1]}] '
    assert result.stdout.splitlines() == [prefix + line for line in _log_lines()]


def test_logs_follows_a_growing_log(capsys, tmp_path):
  (cmd,) = _commands(capsys, 'logs', '--name=mm1', '--zone=z-a', '--type=v5p-8',
                     '--log=~/mm1-sweeps/s/v.log')
  worker = fake_worker.FakeWorker(tmp_path)
  log = worker.home / 'mm1-sweeps' / 's' / 'v.log'
  log.parent.mkdir(parents=True)
  log.write_text('first\n')
  # Its own process group, so that killing it ends tail and the loop too.
  follower = subprocess.Popen(['bash', '-c', fake_worker.remote_of(cmd)], env=worker.env,
                              stdout=subprocess.PIPE, text=True, start_new_session=True)
  lines = queue.Queue()
  threading.Thread(target=lambda: [lines.put(l) for l in follower.stdout], daemon=True).start()
  try:
    assert lines.get(timeout=fake_worker.TIMEOUT) == '[mm1/0] first\n'
    with open(log, 'a') as f:
      f.write('second\n')
    # Each line comes out as it is written, not when a buffer fills.
    assert lines.get(timeout=fake_worker.TIMEOUT) == '[mm1/0] second\n'
  finally:
    os.killpg(follower.pid, signal.SIGKILL)
    follower.wait(timeout=fake_worker.TIMEOUT)


@pytest.mark.parametrize('prefix', ['[a/b] ', r'\n\t\\ ', "'$(touch pwned)' ", '%s&|; '])
def test_any_prefix_is_printed_verbatim(tmp_path, prefix):
  worker = fake_worker.FakeWorker(tmp_path)
  (worker.home / 'l.log').write_text('x/y\n')
  result = worker.run(tpu_vm_shell.follow_command('l.log', prefix, follow=False))
  assert result.stdout == f'{prefix}x/y\n'
  assert not list(tmp_path.rglob('pwned'))


@pytest.mark.parametrize('argv, flag', [
    (['run', *BASE, '--config=c.py', '--workdir=gs://b/x\nrm -rf ~'], '--workdir'),
    (['run', *BASE, '--config=c.py\r', '--workdir=w'], '--config'),
    (['run', *BASE, '--config=c.py', '--workdir=w', '--override', 'a=b\x1b[2J'], '--override'),
    (['run', *BASE, '--config=c.py', '--workdir=w', '--log=a\u2028b'], '--log'),
    (['logs', '--name=mm1\n', '--zone=z-a', '--type=v5p-8'], '--name'),
    (['create', '--name=Mm1', '--zone=z-a', '--type=v5p-8'], '--name'),
    (['create', '--name=mm1_x', '--zone=z-a', '--type=v5p-8'], '--name'),
    (['create', '--name=1mm', '--zone=z-a', '--type=v5p-8'], '--name'),
    (['create', '--name=' + 'a' * 62, '--zone=z-a', '--type=v5p-8', '--slices=2'], '--name'),
    (['create', '--name=mm1', '--zone=us east', '--type=v5p-8'], '--zone'),
    (['setup', *BASE, '--source=.\n'], '--source'),
    (['create', *BASE, '--slices=0'], '--slices'),
])
def test_bad_values_are_one_line_errors_naming_the_flag(capsys, argv, flag):
  assert _refused(capsys, *argv).startswith(f'error: {flag}')


def test_names_up_to_the_limit_pass(capsys):
  _commands(capsys, 'create', '--name=' + 'a' * 63, '--zone=z-a', '--type=v5p-8')
  _commands(capsys, 'create', '--name=' + 'a' * 61, '--zone=z-a', '--type=v5p-8',
            '--slices=2')


def test_bad_type_and_override_fail_with_a_message(capsys):
  assert 'v5p-7' in _refused(capsys, 'create', '--name=a', '--zone=z', '--type=v5p-7')
  line = _refused(capsys, 'run', *BASE, '--config=c.py', '--workdir=w', '--override', 'steps')
  assert 'KEY=VALUE' in line


def test_launchers_import_without_jax():
  code = ("import sys; sys.modules['jax'] = None; sys.modules['jaxlib'] = None; "
          'import launch.tpu_vm, launch.gke, launch.slurm, launch.validate; '
          'assert launch.slurm.main(["--nodes=1", "--config=c", "--workdir=w"]) == 0')
  subprocess.run([sys.executable, '-c', code], check=True, timeout=fake_worker.TIMEOUT,
                 capture_output=True, cwd=REPO_ROOT)
