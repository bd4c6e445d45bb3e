"""Flax NNX models: ViT, connectors, attention, decoder and the MM1 assembly."""

from __future__ import annotations

import math

import jax
from flax import nnx

from mm1_jax.models.flops import model_flops_per_sequence
from mm1_jax.models.mm1 import MM1


def param_count(config) -> int:
  """Number of parameters of MM1(config), computed abstractly (allocates nothing)."""
  model = nnx.eval_shape(lambda: MM1(config, rngs=nnx.Rngs(0)))
  return sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))


__all__ = ['MM1', 'model_flops_per_sequence', 'param_count']
