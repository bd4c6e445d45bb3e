"""Two local processes of four devices each train exactly like one process of eight."""

import os
import subprocess
import sys

import pytest

from tests.train.conftest import REPO_ROOT, metric_records, train_command

pytestmark = pytest.mark.slow


def test_two_processes_of_four_devices_match_one_process_of_eight(tmp_path, reference_run,
                                                                  synthetic_root):
  config, _, want = reference_run
  workdir = tmp_path / 'multihost'
  command = [sys.executable, '-m', 'launch.local', '--processes', '2',
             '--devices-per-process', '4', '--', *train_command(workdir, synthetic_root)]
  result = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True, timeout=400)
  assert result.returncode == 0, result.stdout + result.stderr
  assert "mesh {'data': 8" in result.stdout  # one mesh over both processes' devices

  got = {r['step']: r['loss'] for r in metric_records(workdir)}
  assert sorted(got) == list(range(1, config.train.steps + 1))
  for step, loss in got.items():
    assert loss == pytest.approx(want[step], abs=1e-5), step
  # Each process checkpointed its own data position.
  data_dir = workdir / 'checkpoints' / str(config.train.steps) / 'data'
  assert sorted(n for n in os.listdir(data_dir) if n.startswith('process_')) == [
      'process_0-of-2.json', 'process_1-of-2.json']
