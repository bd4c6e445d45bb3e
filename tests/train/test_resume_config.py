"""A resume compares the config with the one its checkpoint saved: shape and data-identity
changes are refused before anything is written (one line naming the keys, exit 2), run
changes are allowed and recorded, and data.shards is judged by its effective value."""

import hashlib
import json
import os
import subprocess
import sys

import jax.numpy as jnp
import pytest

from experiments import tiny
from mm1_jax.train import checkpoint as checkpoint_lib
from mm1_jax.train import resume_check
from tests.train.conftest import REPO_ROOT


def _saved(config) -> dict:
  return json.loads(config.to_json_best_effort())


def _compare(saved_config, config, saved_processes=1, processes=1):
  return resume_check.compare(_saved(saved_config), config,
                              saved_process_count=saved_processes, process_count=processes)


def test_every_key_of_the_schema_has_a_class():
  keys = resume_check.flatten(_saved(tiny.get_config()))
  assert {resume_check.classify(k)[0] for k in keys} <= {
      resume_check.IDENTITY, resume_check.RUN, resume_check.SHARDS}
  assert resume_check.classify('model.decoder.d_model')[0] == resume_check.IDENTITY
  assert resume_check.classify('mesh.fsdp')[0] == resume_check.RUN  # another mesh: supported


@pytest.mark.parametrize('key, value', [
    ('model.decoder.d_model', 256), ('data.seq_len', 256), ('data.max_images', 2),
    ('data.tokenizer', 'other.model'), ('data.seed', 7), ('data.packing', 'whole'),
    ('data.sources.text.path', 'elsewhere'), ('train.freeze', '^vit/')])
def test_shape_and_data_identity_changes_are_refused_naming_the_key(key, value):
  old = tiny.get_config('smoke')
  new = tiny.get_config('smoke')
  section, name = key.rsplit('.', 1)
  parent = new
  for part in section.split('.'):
    parent = parent[part]
  parent[name] = value
  comparison = _compare(old, new)
  assert list(comparison.refused) == [key]
  with pytest.raises(resume_check.ResumeConfigError) as raised:
    comparison.raise_if_refused(6, '/w/checkpoints')
  assert key in str(raised.value) and '\n' not in str(raised.value)


def test_run_changes_are_allowed_and_listed_for_the_record():
  old = tiny.get_config('smoke')
  new = tiny.get_config('smoke')
  new.train.steps = 9
  new.train.batch_size = 16
  new.train.schedule.warmup = 0
  new.train.optimizer.lr = 1e-4
  new.data.weights.text = 3.0
  new.checkpoint.every = 1
  new.mesh.fsdp = 2
  comparison = _compare(old, new)
  assert comparison.refused == {} and not comparison.restart_data
  assert comparison.changes == {
      'checkpoint.every': [3, 1], 'data.weights.text': [old.data.weights.text, 3.0],
      'mesh.fsdp': [1, 2], 'train.batch_size': [8, 16],
      'train.optimizer.lr': [old.train.optimizer.lr, 1e-4], 'train.schedule.warmup': [2, 0],
      'train.steps': [6, 9]}
  assert 'train.steps 6 -> 9' in comparison.describe()
  assert _compare(old, tiny.get_config('smoke')).changes == {}


def test_a_key_the_checkpoint_does_not_know_is_recorded_not_refused():
  old = _saved(tiny.get_config('smoke'))
  del old['data']['max_image_pixels']  # a checkpoint written before the key existed
  comparison = resume_check.compare(old, tiny.get_config('smoke'), saved_process_count=1,
                                    process_count=1)
  assert comparison.refused == {} and list(comparison.changes) == ['data.max_image_pixels']


def test_data_shards_is_judged_by_its_effective_value():
  implicit = tiny.get_config('smoke')  # data.shards 0: one per process
  explicit = tiny.get_config('smoke')
  explicit.data.shards = 2
  # 0 on 2 processes == 2 on 2 processes: nothing changes.
  assert _compare(implicit, explicit, 2, 2).changes == {}
  # 0 on 1 process resumed with 0 on 2: the row stream would change silently.
  assert list(_compare(implicit, implicit, 1, 2).refused) == ['data.shards']
  # An explicit change restarts the data stream, on the record.
  comparison = _compare(implicit, explicit, 1, 1)
  assert comparison.refused == {} and comparison.restart_data
  assert comparison.changes == {'data.shards': [1, 2]}
  # Same shards, another process count: the position is kept per process.
  assert list(_compare(explicit, explicit, 1, 2).refused) == ['data.shards']


def _fingerprint(directory) -> dict[str, str]:
  prints = {}
  for root, _, files in os.walk(directory):
    for name in files:
      with open(os.path.join(root, name), 'rb') as f:
        prints[os.path.relpath(os.path.join(root, name), directory)] = (
            hashlib.sha256(f.read()).hexdigest())
  return prints


def test_cli_refuses_a_changed_shape_before_writing_anything(tmp_path, synthetic_root):
  """A workdir as a run leaves it (config.json, metrics, checkpoint 3 with its config);
  the state is a stand-in: the refusal comes before any array is read."""
  config = tiny.get_config('smoke')
  config.data.root = synthetic_root
  config.data.synthetic = False
  (tmp_path / 'config.json').write_text(config.to_json_best_effort(indent=2))
  (tmp_path / 'metrics.jsonl').write_text('{"step": 3, "loss": 6.0}\n')
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path / 'checkpoints'), keep=3,
                                             use_async=False)
  checkpointer.save(3, {'step': jnp.int32(3)}, config=config)
  checkpointer.close()
  before = _fingerprint(tmp_path)
  result = subprocess.run(
      [sys.executable, '-m', 'mm1_jax.train', '--config=experiments/tiny.py:smoke',
       f'--workdir={tmp_path}', f'--config.data.root={synthetic_root}',
       '--config.data.synthetic=False', '--config.model.decoder.d_model=256',
       '--config.train.steps=9'],
      capture_output=True, text=True, cwd=REPO_ROOT, timeout=300)
  assert result.returncode == 2, result.stderr[-3000:]
  errors = [line for line in result.stderr.splitlines() if line.startswith('error:')]
  assert len(errors) == 1, result.stderr[-3000:]
  assert 'model.decoder.d_model 128 -> 256' in errors[0]
  assert 'train.steps' not in errors[0]  # a run change is not a reason to refuse
  assert _fingerprint(tmp_path) == before  # config.json byte-identical, nothing added
