"""End to end: train a few steps, write everything a run leaves, resume exactly."""

import errno
import json
import os
import pathlib
import shutil
import subprocess
import sys

import numpy as np
import pytest

from mm1_jax.train import checkpoint as checkpoint_lib
from mm1_jax.train import logging_lib, trainer

pytestmark = pytest.mark.slow

REPO_ROOT = pathlib.Path(__file__).resolve().parents[2]


def _losses(workdir):
  return logging_lib.read_steps(workdir)


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


def test_interrupted_run_resumes_with_identical_losses(tmp_path, smoke_run, monkeypatch):
  config, straight_dir, _ = smoke_run
  workdir = str(tmp_path / 'interrupted')

  class StopAfterThreeSteps(trainer._StopFlag):  # pylint: disable=protected-access
    """As a preemption after step 3: the warm-up has by then moved the parameters."""
    steps = 0

    def check(self):
      StopAfterThreeSteps.steps += 1
      if StopAfterThreeSteps.steps == 3:
        self.reason = 'SIGTERM'
      return super().check()

  with monkeypatch.context() as patch:
    patch.setattr(trainer, '_StopFlag', StopAfterThreeSteps)
    summary = trainer.train(config, workdir, show_progress=False)
  assert summary.stopped_early == 'SIGTERM'
  assert summary.steps == 3 and summary.checkpoints == [3]
  first_leg = _losses(workdir)
  # Steps 2 and 3 ran at a non-zero learning rate: checkpoint 3 holds moved parameters, so
  # a resume that re-initialised them (or the optimizer state) would change every loss after.
  assert max(first_leg[step]['lr'] for step in (2, 3)) > 0
  assert all(first_leg[step]['grad_norm'] > 0 for step in (2, 3))
  resumed = trainer.train(config, workdir, show_progress=False)
  assert resumed.start_step == 3 and resumed.steps == config.train.steps
  want, got = _losses(straight_dir), _losses(workdir)
  for step in range(1, config.train.steps + 1):
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


def _fingerprint(directory) -> dict[str, bytes]:
  return {os.path.relpath(os.path.join(root, name), directory):
          pathlib.Path(root, name).read_bytes()
          for root, _, files in os.walk(directory) for name in files}


def test_resume_passes_over_a_corrupt_checkpoint_and_records_a_changed_length(
    tmp_path, smoke_run, capsys):
  config, smoke_dir, _ = smoke_run
  workdir = str(tmp_path / 'run')
  shutil.copytree(smoke_dir, workdir)
  checkpoints = os.path.join(workdir, 'checkpoints')
  for root, _, files in os.walk(os.path.join(checkpoints, '6', 'state')):
    for name in files:  # garbage where the arrays are
      if os.sep + 'd' + os.sep in os.path.join(root, name):
        pathlib.Path(root, name).write_bytes(b'\x00garbage\xff' * 4)
  bad_files = _fingerprint(os.path.join(checkpoints, '6'))
  longer = config.copy_and_resolve_references()
  longer.train.steps = 8

  summary = trainer.train(longer, workdir, show_progress=False)
  out = capsys.readouterr().out
  assert 'warning: checkpoint 6 is unreadable (' in out and 'restored 3 instead' in out
  assert f'Resuming from {checkpoints}/3' in out
  assert 'train.steps 6 -> 8' in out
  # The bad step is kept byte for byte, never counted, and its number was not saved over.
  assert _fingerprint(os.path.join(checkpoints, '6')) == bad_files
  assert summary.start_step == 3 and summary.steps == 8
  assert summary.checkpoints == [3, 8] and summary.unsaved_checkpoints == [6]
  # metrics.jsonl: each step once, the config change at the resumed step; the first
  # attempt's steps 4-6 are set aside, not lost.
  records = logging_lib.read_records(workdir)
  assert [r['step'] for r in records if 'loss' in r] == list(range(1, 9))
  assert [r for r in records if 'config_change' in r] == [
      {'step': 3, 'config_change': {'train.steps': [6, 8]}}]
  superseded = [json.loads(line) for line in
                open(os.path.join(workdir, logging_lib.SUPERSEDED_FILE))]
  assert [r['step'] for r in superseded] == [4, 5, 6]
  # Restored exactly at 3 (parameters, optimizer, data position): step 4 as before.
  assert records[4]['step'] == 4 and records[4]['loss'] == superseded[0]['loss']
  with open(os.path.join(workdir, 'config.json')) as f:
    assert json.load(f)['train']['steps'] == 8  # written once the restore succeeded


def test_failed_save_stops_the_run_at_the_next_step(tmp_path, smoke_run, monkeypatch):
  from orbax.checkpoint._src.handlers import json_checkpoint_handler
  config, smoke_dir, _ = smoke_run
  workdir = str(tmp_path / 'run')
  shutil.copytree(smoke_dir, workdir)
  checkpoints = os.path.join(workdir, 'checkpoints')
  shutil.rmtree(os.path.join(checkpoints, '6'))  # this copy resumes from 3
  sparser = config.copy_and_resolve_references()
  sparser.checkpoint.every = 2  # saves 4 (fails in the background), then 6

  async def full_disk(self, x, directory):
    raise OSError(errno.ENOSPC, 'No space left on device')

  monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, '_save_fn', full_disk)
  with pytest.raises(checkpoint_lib.CheckpointSaveError,
                     match='checkpoint 4 could not be written: OSError: .*No space left'):
    trainer.train(sparser, workdir, show_progress=False)
  steps = [r['step'] for r in logging_lib.read_records(workdir) if 'loss' in r]
  assert steps[-1] in (4, 5)  # stopped at the step after the failed save, not at the next save
  assert sorted(os.listdir(checkpoints)) == ['3']  # the temporary directory is gone
