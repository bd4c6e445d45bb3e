"""End to end: train a few steps, write everything a run leaves, resume exactly."""

import json
import os
import pathlib
import subprocess
import sys

import numpy as np
import pytest

from mm1_jax.train import trainer

pytestmark = pytest.mark.slow

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def _losses(workdir):
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return {r['step']: r for r in map(json.loads, f)}


def test_run_leaves_the_workdir_of_the_design(smoke_run):
  config, workdir, summary = smoke_run
  assert summary.steps == config.train.steps
  assert summary.checkpoints == [3, 6]
  for name in ('config.json', 'metrics.jsonl', trainer.TOKENIZER_FILE):
    assert os.path.isfile(os.path.join(workdir, name)), name
  assert os.listdir(os.path.join(workdir, 'tensorboard'))
  records = _losses(workdir)
  assert sorted(records) == list(range(1, config.train.steps + 1))
  last = records[config.train.steps]
  for key in ('loss', 'lr', 'grad_norm', 'tokens_per_s', 'mfu', 'data/skipped_records',
              'loss/captions', 'data/captions_fraction', 'data/interleaved_fraction',
              'data/text_fraction'):
    assert key in last, key
  assert all(np.isfinite(r['loss']) for r in records.values())
  assert last['mfu'] > 0 and last['tokens_per_s'] > 0  # speed itself is benchmarks' business
  saved = json.load(open(os.path.join(workdir, 'config.json')))
  assert saved['train']['steps'] == config.train.steps


def test_loss_decreases_over_a_few_steps(smoke_run):
  config, workdir, _ = smoke_run
  records = _losses(workdir)
  assert records[config.train.steps]['loss'] < records[1]['loss']


def test_interrupted_run_resumes_with_identical_losses(tmp_path, smoke_run):
  config, straight_dir, _ = smoke_run
  workdir = str(tmp_path / 'interrupted')
  first = config.copy_and_resolve_references()
  first.train.max_runtime = 1e-9  # stop (and checkpoint) right after the first step
  summary = trainer.train(first, workdir, show_progress=False)
  assert summary.stopped_early == 'train.max_runtime'
  assert summary.steps == 1 and summary.checkpoints == [1]
  resumed = trainer.train(config, workdir, show_progress=False)
  assert resumed.start_step == 1 and resumed.steps == config.train.steps
  want, got = _losses(straight_dir), _losses(workdir)
  for step in range(2, config.train.steps + 1):
    assert got[step]['loss'] == want[step]['loss'], step


def test_cli_reports_a_bad_config_key(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'mm1_jax.train', '--config=experiments/tiny.py',
       f'--workdir={tmp_path}', '--config.train.no_such_key=1'],
      capture_output=True, text=True, cwd=REPO_ROOT)
  assert result.returncode != 0
  assert 'no_such_key' in result.stderr


def test_cli_reports_a_bad_config_value(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'mm1_jax.train', '--config=experiments/tiny.py',
       f'--workdir={tmp_path}', '--config.model.connector.kind=qformer'],
      capture_output=True, text=True, cwd=REPO_ROOT)
  assert result.returncode == 2
  assert 'config.model.connector.kind' in result.stderr
