"""AdamW with MM1's learning-rate law, linear warm-up and cosine decay.

MM1 (following AXLearn) uses *decoupled* weight decay: each step shrinks a parameter by
`schedule(t) * weight_decay * p`, independent of the learning rate, and sets
weight_decay = 0.1 * peak_lr. `train.optimizer.weight_decay` has that meaning here. Only
matrices (ndim >= 2) decay; norms' scales and biases do not.

The peak learning rate is either a number or `'mm1_law'`:
    lr = exp(-0.4214 * ln(N) - 0.5535), N = number of parameters.
"""

from __future__ import annotations

import dataclasses
import math

import jax
import optax


def mm1_peak_lr(num_params: int) -> float:
  """MM1's fitted optimal peak learning rate for a model of `num_params` parameters."""
  return math.exp(-0.4214 * math.log(num_params) - 0.5535)


@dataclasses.dataclass(frozen=True)
class OptimizerSettings:
  peak_lr: float
  weight_decay: float
  warmup: int
  total_steps: int
  final_fraction: float


def resolve_settings(config, num_params: int) -> OptimizerSettings:
  opt = config.train.optimizer
  if opt.lr == 'mm1_law':
    peak = mm1_peak_lr(num_params)
  else:
    peak = float(opt.lr)
  weight_decay = 0.1 * peak if opt.weight_decay == 'mm1_law' else float(opt.weight_decay)
  return OptimizerSettings(
      peak_lr=peak, weight_decay=weight_decay, warmup=int(config.train.schedule.warmup),
      total_steps=int(config.train.steps),
      final_fraction=float(config.train.schedule.final_fraction))


def make_schedule(settings: OptimizerSettings) -> optax.Schedule:
  """Linear warm-up from 0 to the peak, then cosine decay to final_fraction * peak."""
  warmup = min(settings.warmup, max(settings.total_steps - 1, 0))
  return optax.warmup_cosine_decay_schedule(
      init_value=0.0, peak_value=settings.peak_lr, warmup_steps=warmup,
      decay_steps=max(settings.total_steps, warmup + 1),
      end_value=settings.peak_lr * settings.final_fraction)


def _decay_mask(params):
  return jax.tree.map(lambda p: getattr(p, 'ndim', 0) >= 2, params)


def make_optimizer(config, settings: OptimizerSettings) -> optax.GradientTransformation:
  opt = config.train.optimizer
  schedule = make_schedule(settings)
  parts = []
  if opt.clip_norm > 0:
    parts.append(optax.clip_by_global_norm(opt.clip_norm))
  parts.append(optax.scale_by_adam(b1=opt.b1, b2=opt.b2, eps=opt.eps))
  if settings.weight_decay > 0:
    # scale_by_learning_rate multiplies by -lr(t) = -peak * s(t); dividing the decay by the
    # peak makes the parameter shrink by s(t) * weight_decay per step (decoupled decay).
    parts.append(optax.add_decayed_weights(settings.weight_decay / settings.peak_lr,
                                           mask=_decay_mask))
  parts.append(optax.scale_by_learning_rate(schedule))
  return optax.chain(*parts)
