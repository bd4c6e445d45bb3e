"""Llama-style decoder: token embedding, pre-RMSNorm blocks (GQA + RoPE, SwiGLU), tied or
untied output embedding.

The decoder consumes embeddings (so that MM1 can scatter image tokens into them first):
`embed_tokens(tokens)` then `__call__(embeddings, segment_ids, positions)` -> float32
logits. Attention is causal within each packed segment and ignores padding (segment 0);
RoPE uses the batch `positions`, which restart per segment.

KV-cache decoding: `prefill(embeddings, segment_ids, positions)` also returns every layer's
keys and values stacked [layers, b, l, k, h]; `decode(embeddings [b, 1, d], positions,
k_cache, v_cache, lengths)` appends one token per row to caches [layers, b, s, k, h].

`scan_layers=True` stacks the layers' parameters on a leading 'layers' axis (nnx.vmap at
construction, nnx.scan in the forward pass): one compiled layer body instead of
num_layers copies. `remat` names a rematerialisation policy (REMAT_POLICIES) applied
to each layer.

Einsum letters: b batch, l length, d embed, f mlp, v vocab.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mm1_jax.models import layers
from mm1_jax.models.attention import Attention, CausalSegments
from mm1_jax.parallel.rules import constrain

ACTIVATION_NAMES = ('batch', 'length', 'activation_embed')

REMAT_POLICIES = {
    'none': None,
    'full': jax.checkpoint_policies.nothing_saveable,
    'nothing_saveable': jax.checkpoint_policies.nothing_saveable,
    'dots_saveable': jax.checkpoint_policies.dots_saveable,
    'dots_with_no_batch_dims_saveable': jax.checkpoint_policies.dots_with_no_batch_dims_saveable,
    'everything_saveable': jax.checkpoint_policies.everything_saveable,
}


class SwiGLU(nnx.Module):
  """down(silu(gate(x)) * up(x))."""

  def __init__(self, d_model: int, d_ff: int, *, rngs: nnx.Rngs, dtype):
    self.gate = layers.Dense(d_model, d_ff, names=('embed', 'mlp'), rngs=rngs, dtype=dtype)
    self.up = layers.Dense(d_model, d_ff, names=('embed', 'mlp'), rngs=rngs, dtype=dtype)
    self.down = layers.Dense(d_ff, d_model, names=('mlp', 'embed'), rngs=rngs, dtype=dtype)

  def __call__(self, x):
    hidden = jax.nn.silu(self.gate(x)) * self.up(x)
    return self.down(constrain(hidden, ('batch', 'length', 'mlp')))


class DecoderLayer(nnx.Module):

  def __init__(self, decoder_config, *, rngs: nnx.Rngs, dtype):
    c = decoder_config
    self.attention_norm = layers.RMSNorm(c.d_model, eps=c.norm_eps, rngs=rngs, dtype=dtype)
    self.attention = Attention(c.d_model, c.num_heads, c.num_kv_heads, use_bias=False,
                               rope_theta=c.rope_theta, kind=c.attention, rngs=rngs, dtype=dtype)
    self.mlp_norm = layers.RMSNorm(c.d_model, eps=c.norm_eps, rngs=rngs, dtype=dtype)
    self.mlp = SwiGLU(c.d_model, c.d_ff, rngs=rngs, dtype=dtype)

  def _mlp_block(self, x):
    x = constrain(x, ACTIVATION_NAMES)
    x = x + self.mlp(self.mlp_norm(x))
    return constrain(x, ACTIVATION_NAMES)

  def __call__(self, x, mask, positions):
    return self._mlp_block(x + self.attention(self.attention_norm(x), mask=mask,
                                              positions=positions))

  def prefill(self, x, mask, positions):
    """As __call__, also returning this layer's keys and values [b, l, k, h]."""
    y, k, v = self.attention(self.attention_norm(x), mask=mask, positions=positions,
                             return_kv=True)
    return self._mlp_block(x + y), k, v

  def decode(self, x, positions, k_cache, v_cache, lengths):
    """One token per row [b, 1, d] against this layer's cache; returns (x, k, v caches)."""
    y, k_cache, v_cache = self.attention.decode(self.attention_norm(x), positions, k_cache,
                                                v_cache, lengths)
    return self._mlp_block(x + y), k_cache, v_cache


def _run_layer(layer: DecoderLayer, x, mask, positions):
  return layer(x, mask, positions)


class Decoder(nnx.Module):
  """Embeddings [b, l, d] (+ segment_ids, positions [b, l]) -> float32 logits [b, l, v]."""

  def __init__(self, decoder_config, *, rngs: nnx.Rngs, dtype=jnp.float32):
    c = decoder_config
    if c.remat not in REMAT_POLICIES:
      raise ValueError(f'model.decoder.remat={c.remat!r} is unknown; known: '
                       f'{sorted(REMAT_POLICIES)}')
    # std d_model**-0.5: with tied embeddings the initial logits have unit scale, so the
    # first loss is close to ln(vocab_size).
    self.embedding = layers.param(rngs, nnx.initializers.normal(c.d_model ** -0.5),
                                  (c.vocab_size, c.d_model), ('vocab', 'embed'))
    self.scan_layers = bool(c.scan_layers)
    if self.scan_layers:
      @nnx.split_rngs(splits=c.num_layers)
      @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: 'layers'})
      def create_stack(rngs):
        return DecoderLayer(c, rngs=rngs, dtype=dtype)
      self.layers = create_stack(rngs)
    else:
      self.layers = nnx.List([DecoderLayer(c, rngs=rngs, dtype=dtype)
                              for _ in range(c.num_layers)])
    self.final_norm = layers.RMSNorm(c.d_model, eps=c.norm_eps, rngs=rngs, dtype=dtype)
    self.output = (None if c.tie_embeddings else
                   layers.param(rngs, nnx.initializers.lecun_normal(),
                                (c.d_model, c.vocab_size), ('embed', 'vocab')))
    self.remat = c.remat
    self.dtype = dtype

  def embed_tokens(self, tokens: jax.Array) -> jax.Array:
    x = jnp.take(self.embedding[...], tokens, axis=0).astype(self.dtype)
    return constrain(x, ACTIVATION_NAMES)

  def _layer_fn(self):
    if self.remat == 'none':
      return _run_layer
    return nnx.remat(_run_layer, policy=REMAT_POLICIES[self.remat])

  def _over_layers(self, fn, x, *per_layer):
    """x -> fn(layer, x, *slices) over the layers; returns (x, stacked extra outputs).

    `per_layer` arrays carry the layer on axis 0 (a KV cache); `fn` returns (x, *extras).
    With `per_layer`, extra i is layer's new row of per_layer[i]; without, the extras are
    stacked on a new leading layer axis. Scanned or unrolled as configured.
    """
    if self.scan_layers:
      @nnx.scan(in_axes=(nnx.Carry, 0) + (0,) * len(per_layer), out_axes=(nnx.Carry, 0),
                transform_metadata={nnx.PARTITION_NAME: 'layers'})
      def run_stack(x, layer, *slices):
        x, *extras = fn(layer, x, *slices)
        return x, tuple(extras)
      return run_stack(x, self.layers, *per_layer)
    if per_layer:  # outputs replace the inputs' rows (in place for a donated cache)
      per_layer = list(per_layer)
      for i, layer in enumerate(self.layers):
        x, *extras = fn(layer, x, *(a[i] for a in per_layer))
        per_layer = [a.at[i].set(e) for a, e in zip(per_layer, extras)]
      return x, tuple(per_layer)
    outputs = []
    for layer in self.layers:
      x, *extras = fn(layer, x)
      outputs.append(extras)
    return x, tuple(jnp.stack(column) for column in zip(*outputs))

  def logits(self, x: jax.Array) -> jax.Array:
    """Final norm and output projection: [b, l, d] -> float32 [b, l, v]."""
    x = self.final_norm(x)
    if self.output is None:
      logits = jnp.einsum('bld,vd->blv', x, self.embedding[...].astype(self.dtype),
                          preferred_element_type=jnp.float32)
    else:
      logits = jnp.einsum('bld,dv->blv', x, self.output[...].astype(self.dtype),
                          preferred_element_type=jnp.float32)
    return constrain(logits.astype(jnp.float32), ('batch', 'length', 'vocab'))

  def __call__(self, x: jax.Array, segment_ids: jax.Array, positions: jax.Array) -> jax.Array:
    mask = CausalSegments(segment_ids)
    x = constrain(x.astype(self.dtype), ACTIVATION_NAMES)
    layer_fn = self._layer_fn()
    if self.scan_layers:
      @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry,
                transform_metadata={nnx.PARTITION_NAME: 'layers'})
      def run_stack(x, layer):
        return layer_fn(layer, x, mask, positions)
      x = run_stack(x, self.layers)
    else:
      for layer in self.layers:
        x = layer_fn(layer, x, mask, positions)
    return self.logits(x)

  def prefill(self, x: jax.Array, segment_ids: jax.Array, positions: jax.Array):
    """Forward pass that also returns keys and values: (logits, k, v [layers, b, l, k, h])."""
    mask = CausalSegments(segment_ids)
    x = constrain(x.astype(self.dtype), ACTIVATION_NAMES)
    x, (k, v) = self._over_layers(
        lambda layer, x: layer.prefill(x, mask, positions), x)
    return self.logits(x), k, v

  def decode(self, x: jax.Array, positions: jax.Array, k_cache: jax.Array,
             v_cache: jax.Array, lengths: jax.Array):
    """x [b, 1, d] at positions [b, 1] -> (logits [b, 1, v], k_cache, v_cache)."""
    x = constrain(x.astype(self.dtype), ACTIVATION_NAMES)
    x, (k_cache, v_cache) = self._over_layers(
        lambda layer, x, k, v: layer.decode(x, positions, k, v, lengths), x, k_cache, v_cache)
    return self.logits(x), k_cache, v_cache
