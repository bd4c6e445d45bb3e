"""Small shared layers: parameters with logical names, Dense, RMSNorm, LayerNorm, activations.

Every parameter is created by `param`, which records its logical axis names as the
Variable metadata `out_sharding` (eager sharding off: placement happens later, from
`mm1_jax.parallel.rules.state_shardings`). Parameters are float32; layers compute in the
`dtype` they are given.

Einsum letters: b batch, l length, i input features, o output features.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import jax
import jax.numpy as jnp
from flax import nnx

Initializer = Callable[..., jax.Array]


def param(rngs: nnx.Rngs | None, init: Initializer, shape: Sequence[int],
          names: Sequence[str | None]) -> nnx.Param:
  """A float32 nnx.Param of `shape` whose dimensions carry the logical `names`."""
  if len(names) != len(shape):
    raise ValueError(f'logical names {tuple(names)} do not match the shape {tuple(shape)}')
  key = rngs.params() if rngs is not None else None
  value = init(key, tuple(shape), jnp.float32)
  return nnx.Param(value, out_sharding=tuple(names), eager_sharding=False)


def zeros_init(key, shape, dtype):
  del key
  return jnp.zeros(shape, dtype)


def ones_init(key, shape, dtype):
  del key
  return jnp.ones(shape, dtype)


class Dense(nnx.Module):
  """x @ kernel (+ bias) over the last axis; the kernel's two axes carry logical names."""

  def __init__(self, in_features: int, out_features: int, *, names: tuple[str, str],
               use_bias: bool = False, rngs: nnx.Rngs, dtype=jnp.float32,
               kernel_init: Initializer | None = None):
    kernel_init = kernel_init or nnx.initializers.lecun_normal()
    self.kernel = param(rngs, kernel_init, (in_features, out_features), names)
    self.bias = param(rngs, zeros_init, (out_features,), names[1:]) if use_bias else None
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    y = jnp.einsum('...i,io->...o', x.astype(self.dtype), self.kernel[...].astype(self.dtype))
    if self.bias is not None:
      y = y + self.bias[...].astype(self.dtype)
    return y


class RMSNorm(nnx.Module):
  """Root-mean-square normalisation with a learned scale; statistics in float32."""

  def __init__(self, features: int, *, eps: float, rngs: nnx.Rngs | None = None,
               dtype=jnp.float32, name: str = 'norm'):
    self.scale = param(rngs, ones_init, (features,), (name,))
    self.eps = eps
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    x32 = x32 * jax.lax.rsqrt(jnp.mean(x32 * x32, axis=-1, keepdims=True) + self.eps)
    return (x32 * self.scale[...]).astype(self.dtype)


class LayerNorm(nnx.Module):
  """Layer normalisation with learned scale and bias; statistics in float32."""

  def __init__(self, features: int, *, eps: float, rngs: nnx.Rngs | None = None,
               dtype=jnp.float32, name: str = 'norm'):
    self.scale = param(rngs, ones_init, (features,), (name,))
    self.bias = param(rngs, zeros_init, (features,), (name,))
    self.eps = eps
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> jax.Array:
    x32 = x.astype(jnp.float32)
    mean = jnp.mean(x32, axis=-1, keepdims=True)
    var = jnp.mean(jnp.square(x32 - mean), axis=-1, keepdims=True)
    x32 = (x32 - mean) * jax.lax.rsqrt(var + self.eps)
    return (x32 * self.scale[...] + self.bias[...]).astype(self.dtype)


def quick_gelu(x: jax.Array) -> jax.Array:
  """OpenAI CLIP's sigmoid approximation of GELU."""
  return x * jax.nn.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[jax.Array], jax.Array]] = {
    'gelu': lambda x: jax.nn.gelu(x, approximate=True),
    'gelu_exact': lambda x: jax.nn.gelu(x, approximate=False),
    'quick_gelu': quick_gelu,
    'silu': jax.nn.silu,
}


def activation(name: str) -> Callable[[jax.Array], jax.Array]:
  if name not in ACTIVATIONS:
    raise ValueError(f'unknown activation {name!r}; known: {sorted(ACTIVATIONS)}')
  return ACTIVATIONS[name]
