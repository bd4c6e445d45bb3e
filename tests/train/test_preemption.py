"""A run killed with SIGKILL (possibly mid-save) and one preempted with SIGTERM resume to
the exact losses of an uninterrupted run; a half-written checkpoint is never restored, and
metrics.jsonl ends with each step recorded once."""

import json
import os
import signal
import subprocess

import pytest

from mm1_jax.train import logging_lib

from tests.train.conftest import (REPO_ROOT, metric_records, output_of, start, train_command,
                                  wait_for)

pytestmark = pytest.mark.slow


def _complete_steps(directory) -> list[int]:
  return sorted(int(n) for n in os.listdir(directory) if n.isdigit())


def _saving(directory) -> list[str]:
  return [n for n in os.listdir(directory) if 'tmp' in n] if os.path.isdir(directory) else []


def test_killed_then_preempted_run_gives_the_uninterrupted_losses(tmp_path, reference_run,
                                                                 synthetic_root):
  config, _, want = reference_run
  workdir = tmp_path / 'run'
  checkpoints = workdir / 'checkpoints'
  command = train_command(workdir, synthetic_root)

  # 1. SIGKILL: the moment a save after step 3 is in flight if we catch one, else once
  # step 7 is logged (checkpoint 6 complete or in flight).
  proc = start(command, tmp_path / 'kill.log')

  def kill_moment():
    if not os.path.isdir(checkpoints) or 3 not in _complete_steps(checkpoints):
      return False
    return any(not n.startswith('3.') for n in _saving(checkpoints)) \
        or len(metric_records(workdir)) >= 7

  wait_for(kill_moment, proc)
  in_flight = _saving(checkpoints)
  proc.send_signal(signal.SIGKILL)
  assert proc.wait() == -signal.SIGKILL
  killed_records = len(metric_records(workdir))
  complete = _complete_steps(checkpoints)
  assert killed_records < config.train.steps, 'the run finished before it could be killed'
  print(f'killed after {killed_records} logged steps; complete checkpoints {complete}; '
        f'in flight: {in_flight}')

  # 2. Restart; SIGTERM once two more steps are logged: save, wait, exit 0.
  proc = start(command, tmp_path / 'term.log')
  wait_for(lambda: len(metric_records(workdir)) >= killed_records + 2, proc)
  proc.send_signal(signal.SIGTERM)
  assert proc.wait(timeout=240) == 0, output_of(proc)
  log = output_of(proc)
  assert f'Resuming from {checkpoints}/{complete[-1]}' in log
  assert 'stopped early: SIGTERM' in log
  # The killed attempt's records after the restored checkpoint were set aside: each step
  # is recorded once, in order.
  steps = [r['step'] for r in metric_records(workdir)]
  stopped_at = steps[-1]
  assert steps == list(range(1, stopped_at + 1))
  assert stopped_at < config.train.steps
  assert stopped_at in _complete_steps(checkpoints)  # durable before the exit
  assert not any(n.startswith(f'{stopped_at}.') for n in _saving(checkpoints))
  superseded = _records(workdir / logging_lib.SUPERSEDED_FILE)
  assert [r['step'] for r in superseded] == list(range(complete[-1] + 1, killed_records + 1))

  # 3. Restart to the end.
  finished = subprocess.run(command, cwd=REPO_ROOT, capture_output=True, text=True)
  assert finished.returncode == 0, finished.stderr
  assert f'Resuming from {checkpoints}/{stopped_at}' in finished.stdout

  # metrics.jsonl holds each step once, and every logged step of every attempt (the set
  # aside ones included) is bit-identical to the uninterrupted run.
  records = metric_records(workdir)
  assert [r['step'] for r in records] == list(range(1, config.train.steps + 1))
  for record in records + _records(workdir / logging_lib.SUPERSEDED_FILE):
    assert record['loss'] == want[record['step']], record['step']


def _records(path) -> list[dict]:
  """The records of a metrics file (none when it is absent; a line cut by the kill left out)."""
  if not os.path.exists(path):
    return []
  with open(path) as f:
    lines = f.read().splitlines()
  records = []
  for line in lines:
    try:
      records.append(json.loads(line))
    except ValueError:
      pass
  return records
