"""PyTorch building blocks of the MM1 reference: Dense, norms, activations, attention.

Each mirrors its JAX twin in mm1_jax/models (layers.py, attention.py) operation by
operation, with the parameters stored in the JAX layout and under the JAX names, so that
`state_dict()` keys are the export's flat keys (mm1_jax/export/naming.py). Parameters are
created empty (zeros): the reference exists to load exported weights, not to train.
Norm statistics, attention scores and softmax are computed in float32, as in JAX.

Einsum letters: b batch, t query position, s key position, d embed, n query heads,
k kv heads, g query heads per kv head (n = k * g), h head_dim, i input features,
o output features.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence

import torch
import torch.nn.functional as F
from torch import nn


def parameter(shape: Sequence[int]) -> nn.Parameter:
  """A float32 parameter of `shape` (zeros; loading replaces it)."""
  return nn.Parameter(torch.zeros(tuple(shape), dtype=torch.float32))


class Dense(nn.Module):
  """x @ kernel [i, o] (+ bias [o])."""

  def __init__(self, in_features: int, out_features: int, use_bias: bool = False):
    super().__init__()
    self.kernel = parameter((in_features, out_features))
    self.bias = parameter((out_features,)) if use_bias else None

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    y = torch.einsum('...i,io->...o', x.to(self.kernel.dtype), self.kernel)
    return y if self.bias is None else y + self.bias


class RMSNorm(nn.Module):
  """x * rsqrt(mean(x^2) + eps) * scale, statistics in float32."""

  def __init__(self, features: int, eps: float):
    super().__init__()
    self.scale = parameter((features,))
    self.eps = eps

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x32 = x.float()
    x32 = x32 * torch.rsqrt(torch.mean(x32 * x32, dim=-1, keepdim=True) + self.eps)
    return (x32 * self.scale.float()).to(x.dtype)


class LayerNorm(nn.Module):
  """(x - mean) * rsqrt(var + eps) * scale + bias, statistics in float32."""

  def __init__(self, features: int, eps: float):
    super().__init__()
    self.scale = parameter((features,))
    self.bias = parameter((features,))
    self.eps = eps

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    x32 = x.float()
    mean = torch.mean(x32, dim=-1, keepdim=True)
    var = torch.mean(torch.square(x32 - mean), dim=-1, keepdim=True)
    x32 = (x32 - mean) * torch.rsqrt(var + self.eps)
    return (x32 * self.scale.float() + self.bias.float()).to(x.dtype)


def quick_gelu(x: torch.Tensor) -> torch.Tensor:
  return x * torch.sigmoid(1.702 * x)


ACTIVATIONS: dict[str, Callable[[torch.Tensor], torch.Tensor]] = {
    'gelu': lambda x: F.gelu(x, approximate='tanh'),
    'gelu_exact': lambda x: F.gelu(x, approximate='none'),
    'quick_gelu': quick_gelu,
    'silu': F.silu,
}


def activation(name: str) -> Callable[[torch.Tensor], torch.Tensor]:
  if name not in ACTIVATIONS:
    raise ValueError(f'unknown activation {name!r}; known: {sorted(ACTIVATIONS)}')
  return ACTIVATIONS[name]


def rotary_embedding(x: torch.Tensor, positions: torch.Tensor, theta: float) -> torch.Tensor:
  """Rotates the halves of the head dimension of x [b, t, n, h] (dimension i with i + h/2)
  by angles positions [b, t] x 1/theta^(2j/h), computed in float32."""
  head_dim = x.shape[-1]
  fraction = torch.arange(0, head_dim, 2, dtype=torch.float32) / head_dim
  inv_freq = 1.0 / (theta ** fraction)
  angles = positions.float()[..., None] * inv_freq  # [b, t, h/2]
  sin = torch.sin(angles)[:, :, None, :]
  cos = torch.cos(angles)[:, :, None, :]
  first, second = torch.chunk(x.float(), 2, dim=-1)
  rotated = torch.cat([first * cos - second * sin, second * cos + first * sin], dim=-1)
  return rotated.to(x.dtype)


def packed_causal_mask(segment_ids: torch.Tensor) -> torch.Tensor:
  """bool [b, 1, 1, t, s]: causal AND same segment AND not padding (segment id 0)."""
  length = segment_ids.shape[1]
  causal = torch.tril(torch.ones((length, length), dtype=torch.bool))
  same_segment = segment_ids[:, :, None] == segment_ids[:, None, :]
  real = segment_ids != 0
  not_padding = real[:, :, None] & real[:, None, :]
  return (causal[None] & same_segment & not_padding)[:, None, None]


def softmax_attention(q: torch.Tensor, k: torch.Tensor, v: torch.Tensor,
                      mask: torch.Tensor | None) -> torch.Tensor:
  """q [b, t, n, h], k/v [b, s, k, h], mask bool broadcastable to [b, k, g, t, s].

  A fully masked row (padding) gets uniform weights, as in JAX; its output is never used.
  """
  batch, length, num_heads, head_dim = q.shape
  num_kv_heads = k.shape[2]
  q = q.reshape(batch, length, num_kv_heads, num_heads // num_kv_heads, head_dim)
  scores = torch.einsum('btkgh,bskh->bkgts', q.float(), k.float()) * (head_dim ** -0.5)
  if mask is not None:
    scores = torch.where(mask, scores, torch.finfo(torch.float32).min)
  weights = torch.softmax(scores, dim=-1).to(v.dtype)
  out = torch.einsum('bkgts,bskh->btkgh', weights, v)
  return out.reshape(batch, length, num_heads, head_dim)


class Attention(nn.Module):
  """Self-attention with `num_kv_heads` key/value heads; optional biases and RoPE."""

  def __init__(self, d_model: int, num_heads: int, num_kv_heads: int | None = None, *,
               use_bias: bool = False, rope_theta: float | None = None):
    super().__init__()
    num_kv_heads = num_kv_heads or num_heads
    if d_model % num_heads or num_heads % num_kv_heads:
      raise ValueError(f'd_model={d_model}, num_heads={num_heads}, '
                       f'num_kv_heads={num_kv_heads} do not divide evenly')
    head_dim = d_model // num_heads
    self.query = parameter((d_model, num_heads, head_dim))
    self.key = parameter((d_model, num_kv_heads, head_dim))
    self.value = parameter((d_model, num_kv_heads, head_dim))
    self.out = parameter((num_heads, head_dim, d_model))
    if use_bias:
      self.query_bias = parameter((num_heads, head_dim))
      self.key_bias = parameter((num_kv_heads, head_dim))
      self.value_bias = parameter((num_kv_heads, head_dim))
      self.out_bias = parameter((d_model,))
    else:
      self.query_bias = self.key_bias = self.value_bias = self.out_bias = None
    self.rope_theta = rope_theta

  @staticmethod
  def _project(x, kernel, bias):
    y = torch.einsum('btd,dnh->btnh', x, kernel)
    return y if bias is None else y + bias

  def forward(self, x: torch.Tensor, mask: torch.Tensor | None = None,
              positions: torch.Tensor | None = None) -> torch.Tensor:
    """x [b, t, d] -> [b, t, d]."""
    x = x.to(self.query.dtype)
    q = self._project(x, self.query, self.query_bias)
    k = self._project(x, self.key, self.key_bias)
    v = self._project(x, self.value, self.value_bias)
    if self.rope_theta is not None:
      if positions is None:
        raise ValueError('rotary attention needs positions')
      q = rotary_embedding(q, positions, self.rope_theta)
      k = rotary_embedding(k, positions, self.rope_theta)
    y = torch.einsum('btnh,nhd->btd', softmax_attention(q, k, v, mask), self.out)
    return y if self.out_bias is None else y + self.out_bias
