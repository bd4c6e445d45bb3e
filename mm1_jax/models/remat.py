"""Rematerialisation policies by name, shared by the ViT and the decoder.

A policy says which intermediate values of a layer the backward pass keeps; the rest are
recomputed. 'none' keeps everything (no jax.checkpoint at all); 'full' keeps only the
layer's inputs.
"""

from __future__ import annotations

import jax
from flax import nnx

REMAT_POLICIES = {
    'none': None,
    'full': jax.checkpoint_policies.nothing_saveable,
    'nothing_saveable': jax.checkpoint_policies.nothing_saveable,
    'dots_saveable': jax.checkpoint_policies.dots_saveable,
    'dots_with_no_batch_dims_saveable': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    'everything_saveable': jax.checkpoint_policies.everything_saveable,
}


def check_policy(name: str, key: str) -> None:
  """Raise naming the config `key` when `name` is not a known policy."""
  if name not in REMAT_POLICIES:
    raise ValueError(f'{key}={name!r} is unknown; known: {sorted(REMAT_POLICIES)}')


def wrap(fn, name: str):
  """`fn(module, ...)` under the named policy (fn itself for 'none')."""
  if name == 'none':
    return fn
  return nnx.remat(fn, policy=REMAT_POLICIES[name])
