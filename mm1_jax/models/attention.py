"""Multi-head attention with grouped key/value heads, rotary embeddings and packed masks.

One `Attention` module serves the ViT (bidirectional, biases, no RoPE) and the decoder
(causal within segments, no biases, RoPE from the batch `positions`). The attention
kernel is chosen by name: 'xla' (einsum + mask, runs everywhere), 'cudnn' (cuDNN fused
attention through jax.nn.dot_product_attention, GPU only), 'splash' (the Pallas splash
kernel, TPU only; under a mesh it runs per shard in a shard_map over batch and heads).

The decoder describes its mask as `CausalSegments(segment_ids)` (causal within packed
segments, padding = segment 0) so that each kernel can use its own form: a dense boolean
mask for 'xla' and 'cudnn', segment ids and a causal block-sparse mask for 'splash'.

Einsum letters: b batch, t query position, s key position, d embed, n query heads,
k kv heads, g query heads per kv head (n = k * g), h head_dim.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp
from flax import nnx

from mm1_jax.models import layers
from mm1_jax.parallel.rules import constrain, logical_to_spec

ATTENTION_KINDS = ('xla', 'cudnn', 'splash')


def rotary_embedding(x: jax.Array, positions: jax.Array, theta: float) -> jax.Array:
  """Rotates the halves of the head dimension of x [b, t, n, h] by position-dependent angles.

  The 'rotate half' pairing (dimension i with i + h/2), as Llama in HF layout. Angles are
  computed in float32 from the integer positions [b, t].
  """
  head_dim = x.shape[-1]
  fraction = jnp.arange(0, head_dim, 2, dtype=jnp.float32) / head_dim
  inv_freq = 1.0 / (theta ** fraction)  # [h/2]
  angles = positions.astype(jnp.float32)[..., None] * inv_freq  # [b, t, h/2]
  sin = jnp.sin(angles)[:, :, None, :]
  cos = jnp.cos(angles)[:, :, None, :]
  first, second = jnp.split(x.astype(jnp.float32), 2, axis=-1)
  rotated = jnp.concatenate([first * cos - second * sin, second * cos + first * sin], axis=-1)
  return rotated.astype(x.dtype)


def packed_causal_mask(segment_ids: jax.Array) -> jax.Array:
  """bool [b, 1, 1, t, s]: causal AND same segment AND not padding (segment id 0)."""
  length = segment_ids.shape[1]
  causal = jnp.tril(jnp.ones((length, length), dtype=jnp.bool_))
  same_segment = segment_ids[:, :, None] == segment_ids[:, None, :]
  not_padding = (segment_ids != 0)[:, :, None] & (segment_ids != 0)[:, None, :]
  return (causal[None] & same_segment & not_padding)[:, None, None]


class CausalSegments(NamedTuple):
  """The decoder's mask: causal within each packed segment, segment id 0 is padding."""
  segment_ids: jax.Array  # int32 [b, t]


def dense_mask(mask):
  """A CausalSegments -> bool [b, 1, 1, t, s]; a boolean mask or None as it is."""
  return packed_causal_mask(mask.segment_ids) if isinstance(mask, CausalSegments) else mask


def xla_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                  mask: jax.Array | None) -> jax.Array:
  """Softmax attention. q [b,t,n,h], k/v [b,s,k,h], mask bool broadcastable to [b,k,g,t,s].

  Scores and softmax in float32; a fully masked row (padding) gets uniform weights
  instead of NaN, and its output is never used.
  """
  batch, length, num_heads, head_dim = q.shape
  num_kv_heads = k.shape[2]
  q = q.reshape(batch, length, num_kv_heads, num_heads // num_kv_heads, head_dim)
  scores = jnp.einsum('btkgh,bskh->bkgts', q, k, preferred_element_type=jnp.float32)
  scores = scores * (head_dim ** -0.5)
  if mask is not None:
    scores = jnp.where(mask, scores, jnp.finfo(jnp.float32).min)
  weights = jax.nn.softmax(scores, axis=-1).astype(v.dtype)
  out = jnp.einsum('bkgts,bskh->btkgh', weights, v)
  return out.reshape(batch, length, num_heads, head_dim)


def cudnn_attention(q: jax.Array, k: jax.Array, v: jax.Array,
                    mask: jax.Array | None) -> jax.Array:
  if jax.default_backend() != 'gpu':
    raise ValueError(f"model.decoder.attention='cudnn' needs a GPU, but the backend is "
                     f"{jax.default_backend()!r}; use 'xla'")
  if mask is not None:
    mask = mask[:, :, 0]  # [b, 1, t, s]: broadcast over heads
  return jax.nn.dot_product_attention(q, k, v, mask=mask, implementation='cudnn')


def _splash_local(q, k, v, segment_ids):
  """Splash attention on one shard: q [b, t, n, h], k/v [b, s, k, h], segment_ids [b, t]."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_mask
  _, length, num_heads, head_dim = q.shape
  mask = splash_attention_mask.MultiHeadMask(
      [splash_attention_mask.CausalMask((length, length)) for _ in range(num_heads)])
  kernel = splash_attention_kernel.make_splash_mha(mask, head_shards=1, q_seq_shards=1)
  # The kernel does not scale: fold 1/sqrt(h) into q. Layout [heads, length, head_dim].
  q = jnp.swapaxes(q * (head_dim ** -0.5), 1, 2)
  k, v = jnp.swapaxes(k, 1, 2), jnp.swapaxes(v, 1, 2)

  def one_row(q, k, v, ids):
    return kernel(q, k, v, segment_ids=splash_attention_kernel.SegmentIds(q=ids, kv=ids))

  return jnp.swapaxes(jax.vmap(one_row)(q, k, v, segment_ids), 1, 2)


def target_platform() -> str:
  """The platform being compiled for: that of the active mesh's devices (another machine's
  when compiling ahead of time, see mm1_jax.aot), else the default backend."""
  mesh = jax.sharding.get_abstract_mesh()
  device = None if mesh.empty else getattr(mesh, 'abstract_device', None)
  return device.platform if device is not None else jax.default_backend()


def splash_attention(q, k, v, mask) -> jax.Array:
  if target_platform() != 'tpu':
    raise ValueError(f"model.decoder.attention='splash' needs a TPU, but the backend is "
                     f"{target_platform()!r}; use 'xla'")
  if not isinstance(mask, CausalSegments):
    raise ValueError("attention='splash' serves the decoder's causal segment mask only")
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return _splash_local(q, k, v, mask.segment_ids)
  # Pallas kernels see local arrays: run per shard (batch and heads split, length whole).
  q_spec = logical_to_spec(('batch', None, 'heads', None), q.shape, mesh)
  kv_spec = logical_to_spec(('batch', None, 'kv_heads', None), k.shape, mesh)
  if q_spec[2] != kv_spec[2]:  # kv heads that cannot follow the query heads' split
    q_spec = logical_to_spec(('batch', None, None, None), q.shape, mesh)
    kv_spec = q_spec
  ids_spec = jax.sharding.PartitionSpec(q_spec[0], None)
  return jax.shard_map(_splash_local, mesh=mesh, in_specs=(q_spec, kv_spec, kv_spec, ids_spec),
                       out_specs=q_spec, check_vma=False)(q, k, v, mask.segment_ids)


def attend(q, k, v, mask, kind: str) -> jax.Array:
  """mask: None, a bool mask broadcastable to [b, k, g, t, s], or CausalSegments."""
  if kind == 'xla':
    return xla_attention(q, k, v, dense_mask(mask))
  if kind == 'cudnn':
    return cudnn_attention(q, k, v, dense_mask(mask))
  if kind == 'splash':
    return splash_attention(q, k, v, mask)
  raise ValueError(f'model.decoder.attention={kind!r} is unknown; known: {ATTENTION_KINDS}')


class Attention(nnx.Module):
  """Self-attention with `num_kv_heads` key/value heads shared by groups of query heads."""

  def __init__(self, d_model: int, num_heads: int, num_kv_heads: int | None = None, *,
               use_bias: bool = False, rope_theta: float | None = None, kind: str = 'xla',
               rngs: nnx.Rngs, dtype=jnp.float32):
    num_kv_heads = num_kv_heads or num_heads
    if d_model % num_heads or num_heads % num_kv_heads:
      raise ValueError(f'd_model={d_model}, num_heads={num_heads}, '
                       f'num_kv_heads={num_kv_heads} do not divide evenly')
    head_dim = d_model // num_heads
    init = nnx.initializers.lecun_normal(in_axis=0, out_axis=(1, 2))
    out_init = nnx.initializers.lecun_normal(in_axis=(0, 1), out_axis=2)
    self.query = layers.param(rngs, init, (d_model, num_heads, head_dim),
                              ('embed', 'heads', 'head_dim'))
    self.key = layers.param(rngs, init, (d_model, num_kv_heads, head_dim),
                            ('embed', 'kv_heads', 'head_dim'))
    self.value = layers.param(rngs, init, (d_model, num_kv_heads, head_dim),
                              ('embed', 'kv_heads', 'head_dim'))
    self.out = layers.param(rngs, out_init, (num_heads, head_dim, d_model),
                            ('heads', 'head_dim', 'embed'))
    if use_bias:
      zeros = layers.zeros_init
      self.query_bias = layers.param(rngs, zeros, (num_heads, head_dim), ('heads', 'head_dim'))
      self.key_bias = layers.param(rngs, zeros, (num_kv_heads, head_dim),
                                   ('kv_heads', 'head_dim'))
      self.value_bias = layers.param(rngs, zeros, (num_kv_heads, head_dim),
                                     ('kv_heads', 'head_dim'))
      self.out_bias = layers.param(rngs, zeros, (d_model,), ('embed',))
    else:
      self.query_bias = self.key_bias = self.value_bias = self.out_bias = None
    self.rope_theta = rope_theta
    self.kind = kind
    self.dtype = dtype

  def _project(self, x, kernel, bias, head_names):
    y = jnp.einsum('btd,dnh->btnh', x, kernel[...].astype(self.dtype))
    if bias is not None:
      y = y + bias[...].astype(self.dtype)
    return constrain(y, ('batch', 'length', head_names, 'head_dim'))

  def project(self, x: jax.Array, positions: jax.Array | None):
    """x [b, t, d] -> q [b, t, n, h], k and v [b, t, k, h] (q and k rotated when RoPE)."""
    x = x.astype(self.dtype)
    q = self._project(x, self.query, self.query_bias, 'heads')
    k = self._project(x, self.key, self.key_bias, 'kv_heads')
    v = self._project(x, self.value, self.value_bias, 'kv_heads')
    if self.rope_theta is not None:
      if positions is None:
        raise ValueError('rotary attention needs positions')
      q = rotary_embedding(q, positions, self.rope_theta)
      k = rotary_embedding(k, positions, self.rope_theta)
    return q, k, v

  def combine(self, out: jax.Array) -> jax.Array:
    """Attention output [b, t, n, h] -> [b, t, d] through the output projection."""
    out = constrain(out, ('batch', 'length', 'heads', 'head_dim'))
    y = jnp.einsum('btnh,nhd->btd', out, self.out[...].astype(self.dtype))
    if self.out_bias is not None:
      y = y + self.out_bias[...].astype(self.dtype)
    return y

  def __call__(self, x: jax.Array, *, mask: jax.Array | None = None,
               positions: jax.Array | None = None, return_kv: bool = False):
    """x [b, t, d] -> [b, t, d]. mask: bool broadcastable to [b, k, g, t, s].

    With `return_kv`, also the keys and values [b, t, k, h] (what a KV cache stores).
    """
    q, k, v = self.project(x, positions)
    y = self.combine(attend(q, k, v, mask, self.kind))
    return (y, k, v) if return_kv else y

  def decode(self, x: jax.Array, positions: jax.Array, k_cache: jax.Array,
             v_cache: jax.Array, lengths: jax.Array):
    """One new token per row against a KV cache.

    x [b, 1, d]; positions [b, 1]; k_cache/v_cache [b, s, k, h]; lengths [b]: how many
    cached entries of each row are valid. The new key/value is written at index
    lengths[b] and the query attends to entries 0..lengths[b]. The XLA kernel serves
    every `kind` here: one query row is memory-bound, a fused kernel gains nothing.
    Returns (y [b, 1, d], k_cache, v_cache).
    """
    q, k, v = self.project(x, positions)
    rows = jnp.arange(k_cache.shape[0])
    # A scatter of one entry per row (in place when the cache is donated); a row already
    # full (lengths[b] == s) drops its write.
    k_cache = k_cache.at[rows, lengths].set(k[:, 0].astype(k_cache.dtype), mode='drop')
    v_cache = v_cache.at[rows, lengths].set(v[:, 0].astype(v_cache.dtype), mode='drop')
    slots = jnp.arange(k_cache.shape[1], dtype=jnp.int32)
    k_cache = constrain(k_cache, ('batch', 'length', 'kv_heads', 'head_dim'))
    v_cache = constrain(v_cache, ('batch', 'length', 'kv_heads', 'head_dim'))
    visible = (slots[None, :] <= lengths[:, None])[:, None, None, None, :]  # [b,1,1,1,s]
    out = xla_attention(q, k_cache.astype(self.dtype), v_cache.astype(self.dtype), visible)
    return self.combine(out), k_cache, v_cache
