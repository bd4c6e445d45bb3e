"""AdamW with MM1's learning-rate law, linear warm-up and cosine decay.

MM1 (following AXLearn) uses *decoupled* weight decay: each step shrinks a parameter by
`schedule(t) * weight_decay * p`, independent of the learning rate, and sets
weight_decay = 0.1 * peak_lr. `train.optimizer.weight_decay` has that meaning here. Only
matrices (ndim >= 2) decay; norms' scales and biases do not.

The peak learning rate is either a number or `'mm1_law'`:
    lr = exp(-0.4214 * ln(N) - 0.5535), N = number of parameters.

Parameter groups are regex rules over parameter paths ('vit/layers/0/mlp/up/kernel'):
`train.freeze` names parameters that never change (no update, no decay, no optimizer
state, and their gradients do not count in the clipping norm); `train.lr_scales` is a
sequence of (regex, factor) pairs, the first match scaling that parameter's update (and so
its learning rate; e.g. a faster connector).
"""

from __future__ import annotations

import dataclasses
import math
import re

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


def param_path(key_path) -> str:
  """'vit/layers/0/mlp/up/kernel' for a jax key path into the parameter dict."""
  parts = []
  for key in key_path:
    for attribute in ('key', 'idx', 'name'):
      if hasattr(key, attribute):
        parts.append(str(getattr(key, attribute)))
        break
    else:
      parts.append(str(key))
  return '/'.join(parts)


def _paths_matching(pattern: str):
  """A mask function: True for the parameters whose path matches `pattern` (re.search)."""
  compiled = re.compile(pattern)
  return lambda params: jax.tree_util.tree_map_with_path(
      lambda path, _: bool(compiled.search(param_path(path))), params)


def _first_match_masks(rules) -> list[tuple[float, object]]:
  """[(factor, mask function)], where a parameter belongs to the first rule it matches."""
  compiled = [(re.compile(pattern), float(factor)) for pattern, factor in rules]

  def group_of(path) -> int:
    text = param_path(path)
    return next((i for i, (regex, _) in enumerate(compiled) if regex.search(text)), -1)

  def mask_for(index):
    return lambda params: jax.tree_util.tree_map_with_path(
        lambda path, _: group_of(path) == index, params)

  return [(factor, mask_for(i)) for i, (_, factor) in enumerate(compiled)]


def make_optimizer(config, settings: OptimizerSettings) -> optax.GradientTransformation:
  tx = _trainable_optimizer(config, settings)
  freeze = config.train.get('freeze', '')
  if not freeze:
    return tx
  frozen = _paths_matching(freeze)
  labels = lambda params: jax.tree.map(lambda f: 'frozen' if f else 'trainable',
                                       frozen(params))
  return optax.multi_transform({'trainable': tx, 'frozen': optax.set_to_zero()}, labels)


def _trainable_optimizer(config, settings: OptimizerSettings) -> optax.GradientTransformation:
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
  for factor, mask in _first_match_masks(config.train.get('lr_scales', ())):
    parts.append(optax.masked(optax.scale(factor), mask))
  return optax.chain(*parts)
