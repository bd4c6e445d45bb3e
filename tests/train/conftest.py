"""Runs shared by the end-to-end training tests: one uninterrupted reference run, and the
command line that reproduces its config in a subprocess."""

import os
import pathlib
import subprocess
import sys
import time

import pytest

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]

# tiny.py:smoke, longer (so that a run can be interrupted part-way) and with two data
# loader shards (so that one process and two processes read the same global batch).
RESILIENCE_OVERRIDES = {
    'train.steps': 12,
    'checkpoint.every': 3,
    'data.shards': 2,
    'log.tensorboard': False,
}


def resilience_config(synthetic_root):
  from experiments import tiny
  config = tiny.get_config('smoke')
  config.data.root = synthetic_root
  config.data.synthetic = False
  for key, value in RESILIENCE_OVERRIDES.items():
    section, name = key.split('.')
    config[section][name] = value
  return config


def train_command(workdir, synthetic_root) -> list[str]:
  """`python -m mm1_jax.train` with the resilience config, for a subprocess."""
  overrides = [f'--config.{k}={v}' for k, v in RESILIENCE_OVERRIDES.items()]
  return [sys.executable, '-m', 'mm1_jax.train', '--config=experiments/tiny.py:smoke',
          f'--workdir={workdir}', f'--config.data.root={synthetic_root}',
          '--config.data.synthetic=False', *overrides]


def metric_records(workdir) -> list[dict]:
  """Every complete record of metrics.jsonl in file order (a resumed run first sets aside
  the records after its checkpoint, so each step appears once)."""
  from mm1_jax.train import logging_lib
  return logging_lib.read_records(str(workdir))


def wait_for(condition, proc, timeout=240.0, poll=0.002):
  """Polls `condition()` until true; fails if `proc` ends first or time runs out."""
  deadline = time.monotonic() + timeout
  while time.monotonic() < deadline:
    if condition():
      return
    if proc.poll() is not None:
      raise AssertionError(f'the run ended (status {proc.returncode}) before the awaited '
                           f'moment:\n{output_of(proc)}')
    time.sleep(poll)
  proc.kill()
  raise AssertionError(f'timed out waiting for the run:\n{output_of(proc)}')


def start(command, log_path) -> subprocess.Popen:
  """Starts `command` with its output in a file (a full pipe would block the child)."""
  log = open(log_path, 'w')
  proc = subprocess.Popen(command, cwd=REPO_ROOT, stdout=log, stderr=subprocess.STDOUT)
  proc.log_path = log_path
  log.close()
  return proc


def output_of(proc) -> str:
  with open(proc.log_path) as f:
    return f.read()


@pytest.fixture(scope='session')
def reference_run(tmp_path_factory, synthetic_root):
  """(config, workdir, {step: loss}) of the uninterrupted 1-process x 8-device run."""
  from mm1_jax.train import trainer
  config = resilience_config(synthetic_root)
  workdir = str(tmp_path_factory.mktemp('reference_run'))
  trainer.train(config, workdir, show_progress=False)
  losses = {r['step']: r['loss'] for r in metric_records(workdir)}
  assert sorted(losses) == list(range(1, config.train.steps + 1))
  return config, workdir, losses
