"""Checkpoint faults that must never brick a run or cost the user a byte: an unreadable
newest step (passed over, kept, never tried or garbage-collected again), no readable step
at all (one error listing what was tried, exit 2), and a save that fails (reported at the
next check with its temporary directory removed, nothing else touched).

A small pytree of arrays stands in for the train state: no model, no compilation."""

import errno
import hashlib
import json
import os
import subprocess
import sys
import time

import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from orbax.checkpoint._src.handlers import json_checkpoint_handler

from mm1_jax.train import checkpoint as checkpoint_lib
from tests.train.conftest import REPO_ROOT

CONFIG = ml_collections.ConfigDict({'train': {'steps': 9}})


def _state(step: int) -> dict:
  return {'step': jnp.int32(step), 'w': jnp.arange(256, dtype=jnp.float32) * step}


def _abstract():
  import jax
  return jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape, x.dtype), _state(0))


def _write(directory, steps, keep=3) -> None:
  checkpointer = checkpoint_lib.Checkpointer(str(directory), keep=keep, use_async=False)
  for step in steps:
    checkpointer.save(step, _state(step), config=CONFIG)
  checkpointer.close()


def _damage(step_dir, how: str) -> None:
  """Garbage bytes or files cut to half in the array data of a step."""
  for root, _, files in os.walk(os.path.join(step_dir, 'state')):
    for name in files:
      path = os.path.join(root, name)
      if os.sep + 'd' + os.sep not in path:
        continue
      if how == 'garbage':
        with open(path, 'wb') as f:
          f.write(b'\x00not an array\xff' * 3)
      else:
        with open(path, 'r+b') as f:
          f.truncate(os.path.getsize(path) // 2)


def _fingerprint(directory) -> dict[str, str]:
  """{relative path: sha256} of every file under `directory`."""
  prints = {}
  for root, _, files in os.walk(directory):
    for name in files:
      path = os.path.join(root, name)
      with open(path, 'rb') as f:
        prints[os.path.relpath(path, directory)] = hashlib.sha256(f.read()).hexdigest()
  return prints


@pytest.mark.parametrize('how', ['garbage', 'truncated'])
def test_unreadable_newest_step_is_passed_over_kept_and_never_tried_again(tmp_path, how):
  _write(tmp_path, [1, 2, 3])
  _damage(tmp_path / '3', how)
  bad_files = _fingerprint(tmp_path / '3')

  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path), keep=3, use_async=False)
  restored = checkpointer.restore_latest(_abstract())
  assert restored.step == 2
  np.testing.assert_array_equal(restored.state['w'], _state(2)['w'])
  assert [step for step, _ in restored.unreadable] == [3]
  assert restored.unreadable[0][1]  # the cause, for the one warning line
  assert checkpointer.all_steps() == [1, 2]
  # The run reaches step 3 again: not saved over the user's bytes, and no failure.
  assert checkpointer.save(3, _state(3), config=CONFIG) is False
  # Later saves garbage-collect (keep=3) around it, never it.
  for step in (4, 5, 6):
    assert checkpointer.save(step, _state(step), config=CONFIG)
  checkpointer.close()
  assert _fingerprint(tmp_path / '3') == bad_files
  with open(tmp_path / checkpoint_lib.UNREADABLE_FILE) as f:
    assert list(json.load(f)) == ['3']

  reopened = checkpoint_lib.Checkpointer(str(tmp_path), keep=3, use_async=False)
  assert reopened.all_steps() == [4, 5, 6] and reopened.latest_step() == 6
  assert list(reopened.unreadable_steps()) == [3]
  with pytest.raises(FileNotFoundError, match='recorded as unreadable'):
    reopened.restore(3, _abstract())
  reopened.close()
  assert _fingerprint(tmp_path / '3') == bad_files


def test_recorded_unreadable_step_is_not_tried_at_the_next_restart(tmp_path):
  _write(tmp_path, [1, 2])
  _damage(tmp_path / '2', 'garbage')
  checkpoint_lib.Checkpointer(str(tmp_path), keep=3, use_async=False).restore_latest(
      _abstract())
  again = checkpoint_lib.Checkpointer(str(tmp_path), keep=3, use_async=False)
  restored = again.restore_latest(_abstract())
  assert restored.step == 1 and restored.unreadable == []  # passed over without a read
  again.close()


def test_no_readable_step_is_one_error_listing_what_was_tried(tmp_path):
  _write(tmp_path, [1, 2])
  for step in (1, 2):
    _damage(tmp_path / str(step), 'garbage')
  before = _fingerprint(tmp_path)
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path), keep=3, use_async=False)
  with pytest.raises(checkpoint_lib.UnreadableCheckpointsError) as raised:
    checkpointer.restore_latest(_abstract())
  message = str(raised.value)
  assert '\n' not in message
  assert message.index('step 2 (') < message.index('step 1 (')  # newest first, with causes
  checkpointer.close()
  # Nothing recorded (a storage outage must not condemn good checkpoints), nothing touched.
  assert _fingerprint(tmp_path) == before


def _fail_json_writes(monkeypatch):
  """The config item's writer fails as on a full disk (in Orbax's background threads)."""
  async def full_disk(self, x, directory):
    raise OSError(errno.ENOSPC, 'No space left on device')
  monkeypatch.setattr(json_checkpoint_handler.JsonCheckpointHandler, '_save_fn', full_disk)


@pytest.mark.parametrize('use_async', [True, False])
def test_failed_save_is_reported_at_the_next_check_and_its_temporary_directory_removed(
    tmp_path, monkeypatch, use_async):
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path), keep=3, use_async=use_async)
  checkpointer.save(1, _state(1), config=CONFIG)
  checkpointer.wait()
  # What an earlier attempt killed mid-save left: not this save's, so never removed.
  leftover = tmp_path / '2.orbax-checkpoint-tmp-1700000000'
  leftover.mkdir()
  untouched = {n: _fingerprint(tmp_path / n) for n in os.listdir(tmp_path)}

  _fail_json_writes(monkeypatch)
  with pytest.raises(checkpoint_lib.CheckpointSaveError) as raised:
    checkpointer.save(2, _state(2), config=CONFIG)  # the synchronous save fails here
    deadline = time.monotonic() + 60
    while time.monotonic() < deadline:  # the asynchronous one at the first check after
      checkpointer.raise_if_save_failed()
      time.sleep(0.01)
  message = str(raised.value)
  assert 'checkpoint 2' in message and 'No space left on device' in message
  assert '\n' not in message
  assert {n: _fingerprint(tmp_path / n) for n in os.listdir(tmp_path)} == untouched

  monkeypatch.undo()
  assert checkpointer.save(3, _state(3), config=CONFIG)  # the run could go on
  checkpointer.close()
  assert checkpoint_lib.Checkpointer(str(tmp_path), keep=3, use_async=False).all_steps() == [1, 3]


def test_cli_exits_2_with_one_line_when_no_checkpoint_is_readable(tmp_path, synthetic_root):
  """`python -m mm1_jax.train` on a workdir whose only checkpoint is damaged."""
  from experiments import tiny
  config = tiny.get_config('smoke')
  config.data.root = synthetic_root
  config.data.synthetic = False
  checkpoints = tmp_path / 'checkpoints'
  checkpointer = checkpoint_lib.Checkpointer(str(checkpoints), keep=3, use_async=False)
  checkpointer.save(3, _state(3), config=config)  # the CLI's config: the resume is allowed
  checkpointer.close()
  _damage(checkpoints / '3', 'garbage')
  before = _fingerprint(tmp_path)
  result = subprocess.run(
      [sys.executable, '-m', 'mm1_jax.train', '--config=experiments/tiny.py:smoke',
       f'--workdir={tmp_path}', f'--config.data.root={synthetic_root}',
       '--config.data.synthetic=False'],
      capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
  assert result.returncode == 2, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1 and 'no readable checkpoint' in errors[0] and 'step 3 (' in errors[0]
  assert 'Traceback' not in result.stderr
  assert _fingerprint(tmp_path) == before  # nothing written: no config.json, no record
