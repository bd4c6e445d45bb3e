"""launch.local: joined-process environment, signal forwarding, failure propagation, and
no JAX needed to run it."""

import os
import signal
import subprocess
import sys
import time

from launch import local

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

# Runs the launcher with JAX made unimportable.
_WITHOUT_JAX = ("import sys; sys.modules['jax'] = None; sys.modules['jaxlib'] = None; "
                "from launch import local; sys.exit(local.main(sys.argv[1:]))")


def _launch(*args, **kwargs):
  return subprocess.run([sys.executable, '-c', _WITHOUT_JAX, *args], cwd=REPO_ROOT,
                        capture_output=True, text=True, timeout=60, **kwargs)


def test_each_process_gets_its_rank_the_coordinator_and_its_devices():
  env = local.process_environment({'XLA_FLAGS': '--xla_force_host_platform_device_count=8 --foo'},
                                  coordinator='127.0.0.1:1234', num_processes=2, process_id=1,
                                  devices_per_process=4)
  assert env['MM1_COORDINATOR'] == '127.0.0.1:1234'
  assert (env['MM1_NUM_PROCESSES'], env['MM1_PROCESS_ID']) == ('2', '1')
  assert env['XLA_FLAGS'].split() == ['--foo', '--xla_force_host_platform_device_count=4']


def test_runs_without_jax_and_prefixes_the_other_processes():
  # One write per line: process 0 shares the launcher's stdout, and lines written whole
  # (below the pipe's atomic size) never interleave with the relayed ones.
  show = ('import os, sys; e = os.environ; '
          'sys.stdout.write(e["MM1_PROCESS_ID"] + " " + e["MM1_NUM_PROCESSES"] + "\\n")')
  result = _launch('--processes', '3', '--', sys.executable, '-c', show)
  assert result.returncode == 0, result.stderr
  lines = sorted(result.stdout.split('\n'))
  assert [l for l in lines if l] == ['0 3', '[1] 1 3', '[2] 2 3']


def test_a_failing_process_stops_the_others_and_sets_the_status():
  script = ('import os, sys, time\n'
            'if os.environ["MM1_PROCESS_ID"] == "1": sys.exit(3)\n'
            'time.sleep(60)\n')
  start = time.monotonic()
  result = _launch('--processes', '2', '--', sys.executable, '-c', script)
  assert result.returncode == 3
  assert time.monotonic() - start < 30


def test_sigterm_is_forwarded_to_every_process(tmp_path):
  script = ('import os, signal, sys, time\n'
            'def done(*_):\n'
            f'  open(os.path.join({str(tmp_path)!r}, os.environ["MM1_PROCESS_ID"]), "w").close()\n'
            '  sys.exit(0)\n'
            'signal.signal(signal.SIGTERM, done)\n'
            f'open(os.path.join({str(tmp_path)!r}, "ready" + os.environ["MM1_PROCESS_ID"]), "w").close()\n'
            'time.sleep(60)\n')
  proc = subprocess.Popen([sys.executable, '-c', _WITHOUT_JAX, '--processes', '2', '--',
                           sys.executable, '-c', script], cwd=REPO_ROOT)
  deadline = time.monotonic() + 30
  while not all((tmp_path / f'ready{i}').exists() for i in range(2)):
    assert time.monotonic() < deadline
    time.sleep(0.05)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=30) == 0
  assert (tmp_path / '0').exists() and (tmp_path / '1').exists()
