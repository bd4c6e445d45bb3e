"""The train step: accumulation equals the large batch, sharding changes nothing, and a
non-finite step leaves the state untouched.

The step runs at the peak learning rate (no warm-up: a warm-up starting at 0 makes the
first update exactly zero, and every parameter comparison would hold trivially). Each
comparison first checks that the step moved the parameters (`_assert_moved`), then compares
two things: Adam's first moments, which after one step are (1 - b1) x the clipped gradient,
tightly (MOMENT_TOLERANCE of their largest value); and the parameters, within
PARAM_TOLERANCE x lr. Adam's first update is lr x g / (|g| + eps), about lr x sign(g): it
moves a parameter by about lr, but turns rounding-level differences of a near-zero
gradient into visible ones, so the parameters cannot be compared tighter than that.

bfloat16 (`train.dtype`) runs the same steps as float32 with a loss that tracks float32's
within BF16_LOSS_TOLERANCE (tests/train/test_bf16.py checks the dtypes themselves).
"""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from data_pipelines import grain_pipeline
from mm1_jax.parallel import mesh as mesh_lib
from mm1_jax.train import optimizer as optimizer_lib
from mm1_jax.train import state as state_lib
from mm1_jax.train import step as step_lib
from mm1_jax.train import trainer


BF16_STEPS = 4


@pytest.fixture(scope='module')
def batches(synthetic_root):
  """(config, the first BF16_STEPS batches of tiny.py:smoke without warm-up)."""
  from experiments import tiny
  config = tiny.get_config('smoke')
  config.data.root = synthetic_root
  config.data.synthetic = False
  config.train.schedule.warmup = 0  # the first step moves the parameters at the peak lr
  iterator = grain_pipeline.make_iterator(config)
  found = [next(iterator) for _ in range(BF16_STEPS)]
  for batch in found:
    batch.pop('skipped_records')
  return config, found


@pytest.fixture(scope='module')
def config_and_batch(batches):
  config, found = batches
  return config, found[0]


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

  def losses(self, batches) -> list[float]:
    """The loss of each of consecutive steps from step 0, one batch each."""
    shardings = trainer.batch_shardings(self.mesh, batches[0])
    self(batches[0])  # compiles the step if needed
    losses = []
    with jax.set_mesh(self.mesh):
      state = jax.device_put(self.initial, self.layout.shardings)
      for batch in batches:
        device_batch = {k: jax.device_put(v, shardings[k]) for k, v in batch.items()}
        state, metrics = self._step(state, device_batch)
        losses.append(float(metrics['loss']))
    return losses


SINGLE = dict(data=1, fsdp=1, tensor=1, expert=1)


@pytest.fixture(scope='module')
def single_device(config_and_batch):
  config, batch = config_and_batch
  stepper = _Stepper(config, SINGLE)
  return stepper, stepper(batch)


# A parameter array moved if some value changed by >= MIN_MOVE x lr (Adam's first step
# moves one by ~lr); nearly all values (MOVED_FRACTION) must move by MIN_VALUE_MOVE x lr.
MIN_MOVE = 0.5
MIN_VALUE_MOVE = 0.1
MOVED_FRACTION = 0.99
# Softmax attention is invariant to a key bias (it adds the same q.b to every score of a
# query): its exact gradient is zero, and it does not move.
NO_GRADIENT = "['key_bias']"
PARAM_TOLERANCE = 0.05   # x lr: a twentieth of one step (measured: 0.04 sharded, 0.006 accum)
MOMENT_TOLERANCE = 1e-5  # x the largest first moment (measured: 6e-7 sharded, 2e-7 accum)


def _assert_moved(before, after, lr):
  """Every parameter array but the key biases moved by MIN_MOVE x lr somewhere, and
  MOVED_FRACTION of all values by MIN_VALUE_MOVE x lr."""
  paths = jax.tree_util.tree_leaves_with_path(before)
  moved_values = total_values = 0
  for (path, x), y in zip(paths, jax.tree.leaves(after), strict=True):
    change = np.abs(np.asarray(y, np.float64) - np.asarray(x, np.float64))
    name = jax.tree_util.keystr(path)
    if not name.endswith(NO_GRADIENT):
      assert change.max() >= MIN_MOVE * lr, f'{name} did not move: {change.max():.2e}'
    moved_values += int((change >= MIN_VALUE_MOVE * lr).sum())
    total_values += change.size
  assert moved_values >= MOVED_FRACTION * total_values, (moved_values, total_values)


def _assert_trees_close(a, b, atol):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_allclose(x, y, atol=atol, rtol=0)


def _assert_same_step(state, reference, lr):
  """The same gradient (first moments) and the same parameters as `reference`."""
  moments = optax.tree_utils.tree_get(state['opt_state'], 'mu')
  reference_moments = optax.tree_utils.tree_get(reference['opt_state'], 'mu')
  scale = max(float(np.abs(x).max()) for x in jax.tree.leaves(reference_moments))
  assert scale > 0
  _assert_trees_close(moments, reference_moments, atol=MOMENT_TOLERANCE * scale)
  _assert_trees_close(state['params'], reference['params'], atol=PARAM_TOLERANCE * lr)


def test_gradient_accumulation_equals_the_large_batch(config_and_batch, single_device):
  config, batch = config_and_batch
  _, (initial, full, full_metrics) = single_device
  lr = config.train.optimizer.lr
  accumulated_config = config.copy_and_resolve_references()
  accumulated_config.train.grad_accum = 2
  _, accumulated, acc_metrics = _Stepper(accumulated_config, SINGLE)(batch)
  _assert_moved(initial, full['params'], lr)
  _assert_moved(initial, accumulated['params'], lr)
  assert acc_metrics['loss'] == pytest.approx(full_metrics['loss'], rel=1e-6)
  assert acc_metrics['grad_norm'] == pytest.approx(full_metrics['grad_norm'], rel=1e-5)
  _assert_same_step(accumulated, full, lr)


def test_sharded_step_equals_the_single_device_step(config_and_batch, single_device):
  config, batch = config_and_batch
  _, (initial, single, single_metrics) = single_device
  lr = config.train.optimizer.lr
  _, sharded, sharded_metrics = _Stepper(config, dict(data=2, fsdp=2, tensor=2, expert=1))(batch)
  _assert_moved(initial, single['params'], lr)
  _assert_moved(initial, sharded['params'], lr)
  assert sharded_metrics['loss'] == pytest.approx(single_metrics['loss'], rel=1e-5)
  assert sharded_metrics['grad_norm'] == pytest.approx(single_metrics['grad_norm'], rel=1e-5)
  _assert_same_step(sharded, single, lr)


def test_per_source_losses_add_up_to_the_loss(config_and_batch, single_device):
  _, batch = config_and_batch
  _, (_, _, metrics) = single_device
  total = metrics['source_loss_sum'].sum() / metrics['source_tokens'].sum()
  assert total == pytest.approx(float(metrics['loss']), rel=1e-5)
  rows = np.bincount(batch['source_id'], minlength=3)
  np.testing.assert_array_equal(metrics['source_rows'], rows)


def test_non_finite_step_is_reported_and_not_applied(config_and_batch, single_device):
  config, batch = config_and_batch
  stepper, (initial, healthy, _) = single_device
  # The same step on the same batch, not poisoned, moves the parameters...
  _assert_moved(initial, healthy['params'], config.train.optimizer.lr)
  before, after, metrics = stepper(batch, poison=True)
  assert int(metrics['nonfinite']) == 1
  # ...poisoned, it leaves parameters and optimizer state exactly as they were.
  _assert_trees_close(after['params'], before, atol=0)
  _assert_trees_close(after['opt_state'], stepper.initial['opt_state'], atol=0)


# Relative difference of the bfloat16 loss from the float32 one at each step (measured:
# 3e-5 at step 1, at most 8e-5 over the 4 steps, while the loss falls from 6.8 to 5.2).
# Identical losses would mean bfloat16 was ignored.
BF16_LOSS_TOLERANCE = 2e-3
BF16_MIN_DIFFERENCE = 1e-6


def test_bfloat16_loss_tracks_float32(batches, single_device):
  """BF16_STEPS steps from the same parameters on the same batches, bfloat16 against the
  module's float32 step (already compiled)."""
  config, found = batches
  stepper, _ = single_device
  bf16_config = config.copy_and_resolve_references()
  bf16_config.train.dtype = 'bfloat16'
  bf16 = _Stepper(bf16_config, SINGLE)
  float32_losses, bf16_losses = stepper.losses(found), bf16.losses(found)
  print(f'float32 losses {np.round(float32_losses, 4)}, bfloat16 {np.round(bf16_losses, 4)}')
  assert float32_losses[-1] < float32_losses[0] - 0.1  # the steps train
  relative = np.abs(np.array(bf16_losses) / np.array(float32_losses) - 1)
  assert relative.max() <= BF16_LOSS_TOLERANCE, relative
  assert relative.max() >= BF16_MIN_DIFFERENCE, relative  # bfloat16 was not ignored
