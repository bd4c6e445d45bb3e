"""Numerical faults in a real run: 'skip' counts the step and goes on, 'stop' names it, and
no checkpoint ever holds a non-finite value."""

import json

import jax
import numpy as np
import pytest

from data_pipelines import grain_pipeline
from mm1_jax.parallel import mesh as mesh_lib
from mm1_jax.train import checkpoint as checkpoint_lib
from mm1_jax.train import optimizer as optimizer_lib
from mm1_jax.train import state as state_lib
from mm1_jax.train import trainer
from tests.train.conftest import metric_records, resilience_config

pytestmark = pytest.mark.slow


class _PoisonedBatch:
  """Passes batches through, making the loss of batch number `at` (1-based) NaN."""

  def __init__(self, iterator, at: int):
    self._iterator, self._at, self._count = iterator, at, 0

  def __iter__(self):
    return self

  def __next__(self):
    batch = next(self._iterator)
    self._count += 1
    if self._count == self._at:
      batch['loss_mask'] = batch['loss_mask'] * np.float32('nan')
    return batch

  # Not a grain DatasetIterator, so grain's Orbax handler stores the state as bytes.
  def get_state(self) -> bytes:
    return json.dumps(self._iterator.get_state()).encode()

  def set_state(self, state: bytes):
    self._iterator.set_state(json.loads(state))

  def start_prefetch(self):
    self._iterator.start_prefetch()


def _poison_batch(monkeypatch, at: int):
  make = grain_pipeline.make_iterator
  monkeypatch.setattr(grain_pipeline, 'make_iterator',
                      lambda *a, **k: _PoisonedBatch(make(*a, **k), at))


def _assert_checkpoints_finite(config, workdir):
  tx = optimizer_lib.make_optimizer(config, optimizer_lib.resolve_settings(config, 1))
  layout = state_lib.make_layout(config, mesh_lib.make_mesh(config.mesh), tx)
  checkpointer = checkpoint_lib.Checkpointer(f'{workdir}/checkpoints', keep=10, use_async=False)
  steps = checkpointer.all_steps()
  for step in steps:
    state = checkpointer.restore(step, layout.abstract)
    assert all(np.isfinite(x).all() for x in jax.tree.leaves(jax.device_get(state))), step
  checkpointer.close()
  return steps


def test_skip_counts_the_step_and_keeps_training(tmp_path, monkeypatch, synthetic_root):
  config = resilience_config(synthetic_root)
  config.train.on_nonfinite = 'skip'
  _poison_batch(monkeypatch, at=3)  # the step whose checkpoint is written right after it
  summary = trainer.train(config, str(tmp_path), show_progress=False)
  assert summary.steps == config.train.steps and summary.nonfinite_steps == 1
  records = {r['step']: r for r in metric_records(tmp_path)}
  assert records[3]['nonfinite_steps'] == 1
  assert all(records[s]['nonfinite_steps'] == 0 for s in records if s != 3)
  assert all(np.isfinite(records[s]['loss']) for s in records if s != 3)
  assert _assert_checkpoints_finite(config, tmp_path) == [6, 9, 12]  # checkpoint.keep=3


def test_stop_names_the_step_and_checkpoints_nothing_after_it(tmp_path, monkeypatch,
                                                              synthetic_root):
  config = resilience_config(synthetic_root)
  config.train.on_nonfinite = 'stop'
  config.log.every = 100  # the step is found by the per-step check, not by logging
  _poison_batch(monkeypatch, at=5)
  with pytest.raises(trainer.NonFiniteError, match=r'^step 5: non-finite'):
    trainer.train(config, str(tmp_path), show_progress=False)
  assert _assert_checkpoints_finite(config, tmp_path) == [3]
