"""The train step: accumulation equals the large batch, sharding changes nothing, and a
non-finite step leaves the state untouched."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest

from data_pipelines import grain_pipeline
from mm1_jax.parallel import mesh as mesh_lib
from mm1_jax.train import optimizer as optimizer_lib
from mm1_jax.train import state as state_lib
from mm1_jax.train import step as step_lib
from mm1_jax.train import trainer


@pytest.fixture(scope='module')
def config_and_batch(tmp_path_factory, synthetic_root):
  from experiments import tiny
  config = tiny.get_config('smoke')
  config.data.root = synthetic_root
  config.data.synthetic = False
  batch = next(grain_pipeline.make_iterator(config))
  batch.pop('skipped_records')
  return config, batch


class _Stepper:
  """Builds the state and the compiled step once per mesh; each call starts from step 0."""

  def __init__(self, config, mesh_sizes):
    devices = jax.devices()[:int(np.prod(list(mesh_sizes.values())))]
    self.mesh = mesh_lib.make_mesh(ml_collections.ConfigDict(mesh_sizes), devices=devices)
    tx = optimizer_lib.make_optimizer(config, optimizer_lib.resolve_settings(config, 1))
    layout = state_lib.make_layout(config, self.mesh, tx)
    self.initial = jax.device_get(state_lib.init_state(config, layout, tx))
    self.layout, self.tx, self.config = layout, tx, config
    self._step = None

  def __call__(self, batch, *, poison=False):
    shardings = trainer.batch_shardings(self.mesh, batch)
    with jax.set_mesh(self.mesh):
      if self._step is None:
        self._step = step_lib.jit_train_step(self.config, self.layout, shardings, self.tx,
                                             num_sources=3)
      state = jax.device_put(self.initial, self.layout.shardings)
      device_batch = {k: jax.device_put(v, shardings[k]) for k, v in batch.items()}
      if poison:
        device_batch['loss_mask'] = device_batch['loss_mask'] * jnp.nan
      new_state, metrics = self._step(state, device_batch)
    return self.initial['params'], jax.device_get(new_state), jax.device_get(metrics)


SINGLE = dict(data=1, fsdp=1, tensor=1, expert=1)


@pytest.fixture(scope='module')
def single_device(config_and_batch):
  config, batch = config_and_batch
  stepper = _Stepper(config, SINGLE)
  return stepper, stepper(batch)


def _assert_trees_close(a, b, atol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(x, y, atol=atol, rtol=0)


def test_gradient_accumulation_equals_the_large_batch(config_and_batch, single_device):
  config, batch = config_and_batch
  _, (_, full, full_metrics) = single_device
  accumulated_config = config.copy_and_resolve_references()
  accumulated_config.train.grad_accum = 2
  _, accumulated, acc_metrics = _Stepper(accumulated_config, SINGLE)(batch)
  assert acc_metrics['loss'] == pytest.approx(full_metrics['loss'], rel=1e-6)
  assert acc_metrics['grad_norm'] == pytest.approx(full_metrics['grad_norm'], rel=1e-5)
  _assert_trees_close(accumulated['params'], full['params'], atol=1e-6)


def test_sharded_step_equals_the_single_device_step(config_and_batch, single_device):
  config, batch = config_and_batch
  _, (_, single, single_metrics) = single_device
  _, sharded, sharded_metrics = _Stepper(config, dict(data=2, fsdp=2, tensor=2, expert=1))(batch)
  assert sharded_metrics['loss'] == pytest.approx(single_metrics['loss'], rel=1e-5)
  _assert_trees_close(sharded['params'], single['params'], atol=1e-5)


def test_per_source_losses_add_up_to_the_loss(config_and_batch, single_device):
  _, batch = config_and_batch
  _, (_, _, metrics) = single_device
  total = metrics['source_loss_sum'].sum() / metrics['source_tokens'].sum()
  assert total == pytest.approx(float(metrics['loss']), rel=1e-5)
  rows = np.bincount(batch['source_id'], minlength=3)
  np.testing.assert_array_equal(metrics['source_rows'], rows)


def test_non_finite_step_is_reported_and_not_applied(config_and_batch, single_device):
  _, batch = config_and_batch
  stepper, _ = single_device
  before, after, metrics = stepper(batch, poison=True)
  assert int(metrics['nonfinite']) == 1
  _assert_trees_close(after['params'], before, atol=0)
  assert all(np.isfinite(x).all() for x in jax.tree.leaves(after['opt_state']))
