"""MM1's learning-rate law, the warm-up + cosine schedule, and decoupled weight decay."""

import math

import jax.numpy as jnp
import numpy as np
import optax
import pytest

from experiments import tiny
from mm1_jax.train import optimizer


@pytest.mark.parametrize('params, expected', [(3e9, 6e-5), (7e9, 4e-5), (30e9, 2e-5)])
def test_mm1_law_gives_the_published_rates(params, expected):
  # MM1 quotes 6e-5 / 4e-5 / 2e-5 for 3B / 7B / 30B; the law gives them to ~10%.
  assert optimizer.mm1_peak_lr(params) == pytest.approx(expected, rel=0.12)


def test_mm1_law_setting_resolves_lr_and_weight_decay():
  config = tiny.get_config()
  config.train.optimizer.lr = 'mm1_law'
  config.train.optimizer.weight_decay = 'mm1_law'
  settings = optimizer.resolve_settings(config, num_params=1_200_000_000)
  assert settings.peak_lr == pytest.approx(math.exp(-0.4214 * math.log(1.2e9) - 0.5535))
  assert settings.weight_decay == pytest.approx(0.1 * settings.peak_lr)


def test_schedule_warms_up_then_decays_to_the_final_fraction():
  settings = optimizer.OptimizerSettings(peak_lr=1e-3, weight_decay=0.0, warmup=10,
                                         total_steps=100, final_fraction=0.1)
  schedule = optimizer.make_schedule(settings)
  assert float(schedule(0)) == 0.0
  assert float(schedule(5)) == pytest.approx(5e-4)
  assert float(schedule(10)) == pytest.approx(1e-3)
  values = [float(schedule(s)) for s in range(10, 101)]
  assert all(a >= b - 1e-12 for a, b in zip(values, values[1:]))  # monotone decay
  assert float(schedule(100)) == pytest.approx(1e-4)


def test_weight_decay_is_decoupled_and_skips_vectors():
  config = tiny.get_config()
  config.train.optimizer.clip_norm = 0.0
  settings = optimizer.OptimizerSettings(peak_lr=1e-2, weight_decay=0.05, warmup=0,
                                         total_steps=10, final_fraction=1.0)
  tx = optimizer.make_optimizer(config, settings)
  params = {'matrix': jnp.ones((2, 2)), 'scale': jnp.ones((2,))}
  zero_grads = {'matrix': jnp.zeros((2, 2)), 'scale': jnp.zeros((2,))}
  updates, _ = tx.update(zero_grads, tx.init(params), params)
  new = optax.apply_updates(params, updates)
  # With zero gradients only decay acts: each step shrinks a matrix by weight_decay itself
  # (not lr * weight_decay), and vectors (norm scales, biases) do not decay.
  np.testing.assert_allclose(new['matrix'], 1.0 - 0.05, rtol=1e-6)
  np.testing.assert_allclose(new['scale'], 1.0)
