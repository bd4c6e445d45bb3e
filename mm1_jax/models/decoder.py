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
num_layers copies. `remat` names a rematerialisation policy (mm1_jax.models.remat) applied
to each layer.

Mixture of experts (`model.moe.num_experts > 0`, pass `moe_config`): the last layer of
each group of `model.moe.every` layers (layers every-1, 2*every-1, ...) has an MoE
feed-forward block (models/moe.py) instead of SwiGLU. Unrolled, `layers` is a list of
num_layers layers. Scanned, `layers` is a stack of num_layers/every `DecoderGroup`s, each
holding `dense` (a list of every-1 SwiGLU layers) and `moe` (the MoE layer): the scan
runs over groups, one compiled group body. `layers_to_list` / `layers_from_list` convert
either parameter layout to one params dict per layer and back. `forward` also returns
the MoE layers' auxiliary values: the losses summed over MoE layers, the dropped fraction
and expert loads averaged (an empty dict for a dense decoder).

Einsum letters: b batch, l length, d embed, f mlp, v vocab.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mm1_jax.models import layers, remat
from mm1_jax.models.attention import Attention, CausalSegments
from mm1_jax.models.moe import MoE
from mm1_jax.parallel.rules import constrain

ACTIVATION_NAMES = ('batch', 'length', 'activation_embed')


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
  """Pre-norm attention and feed-forward blocks; the feed-forward is MoE with `moe_config`.

  Calls return (x, aux): aux is {} for a SwiGLU layer, the MoE scalars otherwise.
  """

  def __init__(self, decoder_config, *, rngs: nnx.Rngs, dtype, moe_config=None):
    c = decoder_config
    self.attention_norm = layers.RMSNorm(c.d_model, eps=c.norm_eps, rngs=rngs, dtype=dtype)
    self.attention = Attention(c.d_model, c.num_heads, c.num_kv_heads, use_bias=False,
                               rope_theta=c.rope_theta, kind=c.attention, rngs=rngs, dtype=dtype)
    self.mlp_norm = layers.RMSNorm(c.d_model, eps=c.norm_eps, rngs=rngs, dtype=dtype)
    if moe_config is None:
      self.mlp = SwiGLU(c.d_model, c.d_ff, rngs=rngs, dtype=dtype)
    else:
      self.mlp = MoE(c.d_model, expert_width(c, moe_config), moe_config, rngs=rngs,
                     dtype=dtype)
    self.is_moe = moe_config is not None

  def _mlp_block(self, x):
    x = constrain(x, ACTIVATION_NAMES)
    if self.is_moe:
      y, aux = self.mlp(self.mlp_norm(x))
    else:
      y, aux = self.mlp(self.mlp_norm(x)), {}
    return constrain(x + y, ACTIVATION_NAMES), aux

  def __call__(self, x, mask, positions):
    return self._mlp_block(x + self.attention(self.attention_norm(x), mask=mask,
                                              positions=positions))

  def prefill(self, x, mask, positions):
    """As __call__, also returning this layer's keys and values [b, l, k, h]."""
    y, k, v = self.attention(self.attention_norm(x), mask=mask, positions=positions,
                             return_kv=True)
    x, aux = self._mlp_block(x + y)
    return x, aux, k, v

  def decode(self, x, positions, k_cache, v_cache, lengths):
    """One token per row [b, 1, d] against this layer's cache; (x, aux, k, v caches)."""
    y, k_cache, v_cache = self.attention.decode(self.attention_norm(x), positions, k_cache,
                                                v_cache, lengths)
    x, aux = self._mlp_block(x + y)
    return x, aux, k_cache, v_cache


def expert_width(decoder_config, moe_config) -> int:
  """An expert's SwiGLU width: model.moe.d_ff, 0 (or absent) meaning model.decoder.d_ff."""
  return int(moe_config.get('d_ff', 0) or decoder_config.d_ff)


def moe_every(moe_config) -> int:
  """The MoE period of the layers, 0 for a dense decoder (no or zero num_experts)."""
  if moe_config is None or not moe_config.num_experts:
    return 0
  return int(moe_config.every)


def is_moe_layer(index: int, every: int) -> bool:
  """Layer `index` has an MoE block: the last of each group of `every` layers."""
  return every > 0 and (index + 1) % every == 0


class DecoderGroup(nnx.Module):
  """One scan step of an MoE decoder: `every` - 1 SwiGLU layers, then one MoE layer."""

  def __init__(self, decoder_config, moe_config, *, rngs: nnx.Rngs, dtype):
    every = int(moe_config.every)
    self.dense = nnx.List([DecoderLayer(decoder_config, rngs=rngs, dtype=dtype)
                           for _ in range(every - 1)])
    self.moe = DecoderLayer(decoder_config, rngs=rngs, dtype=dtype, moe_config=moe_config)

  def sublayers(self) -> list[DecoderLayer]:
    return [*self.dense, self.moe]


def _run_layer(layer: DecoderLayer, x, mask, positions):
  return layer(x, mask, positions)


def reduce_aux(per_layer: dict[str, jax.Array]) -> dict[str, jax.Array]:
  """MoE values stacked over MoE layers [n] -> scalars: losses summed, the rest averaged."""
  return {k: jnp.sum(v, axis=0) if k.endswith('_loss') else jnp.mean(v, axis=0)
          for k, v in per_layer.items()}


# ------------------------------------------------------- parameter layout, per layer


def _child(tree: dict, key: int):
  """tree[key] for a list index stored as int (nnx) or str (some checkpoint readers)."""
  return tree[key] if key in tree else tree[str(key)]


def layers_to_list(layers: dict, *, num_layers: int, every: int, scan_layers: bool
                   ) -> list[dict]:
  """A decoder's `layers` params (pure dict) -> one params dict per layer, in order.

  `every`: the MoE period (0 for a dense decoder, see `moe_every`). Layer i's dict holds
  attention_norm, attention, mlp_norm and mlp, where mlp is SwiGLU's {gate, up, down:
  {kernel}} or MoE's {router, gate, up, down} arrays (numpy or jax);
  the inverse is `layers_from_list`.
  """
  if not scan_layers:
    return [_child(layers, i) for i in range(num_layers)]
  if not every:
    return [jax.tree.map(lambda a, i=i: a[i], layers) for i in range(num_layers)]
  out = []
  for group in range(num_layers // every):
    take = lambda tree, g=group: jax.tree.map(lambda a: a[g], tree)
    out += [take(_child(layers['dense'], j)) for j in range(every - 1)]
    out.append(take(layers['moe']))
  return out


def _stack(*arrays):
  """Stacks numpy arrays with numpy (nothing moved to a device), others with jax."""
  if all(isinstance(a, np.ndarray) for a in arrays):
    return np.stack(arrays)
  return jnp.stack(arrays)


def layers_from_list(per_layer: list[dict], *, every: int, scan_layers: bool) -> dict:
  """Inverse of `layers_to_list`: per-layer params dicts -> the decoder's `layers` params."""
  if not scan_layers:
    return {i: layer for i, layer in enumerate(per_layer)}
  stack = lambda trees: jax.tree.map(_stack, *trees)
  if not every:
    return stack(per_layer)
  if len(per_layer) % every:
    raise ValueError(f'{len(per_layer)} layers are not a whole number of groups of '
                     f'model.moe.every={every}')
  groups = [per_layer[g:g + every] for g in range(0, len(per_layer), every)]
  return {'dense': {j: stack([group[j] for group in groups]) for j in range(every - 1)},
          'moe': stack([group[-1] for group in groups])}


class Decoder(nnx.Module):
  """Embeddings [b, l, d] (+ segment_ids, positions [b, l]) -> float32 logits [b, l, v]."""

  def __init__(self, decoder_config, *, rngs: nnx.Rngs, dtype=jnp.float32, moe_config=None):
    c = decoder_config
    remat.check_policy(c.remat, 'model.decoder.remat')
    every = moe_every(moe_config)
    if every and c.num_layers % every:
      raise ValueError(f'model.decoder.num_layers={c.num_layers} is not divisible by '
                       f'model.moe.every={every}')
    # std d_model**-0.5: with tied embeddings the initial logits have unit scale, so the
    # first loss is close to ln(vocab_size).
    self.embedding = layers.param(rngs, nnx.initializers.normal(c.d_model ** -0.5),
                                  (c.vocab_size, c.d_model), ('vocab', 'embed'))
    self.scan_layers = bool(c.scan_layers)
    self.num_layers = int(c.num_layers)
    self.moe_every = every
    if self.scan_layers:
      stack_size = c.num_layers // every if every else c.num_layers

      @nnx.split_rngs(splits=stack_size)
      @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: 'layers'})
      def create_stack(rngs):
        if every:
          return DecoderGroup(c, moe_config, rngs=rngs, dtype=dtype)
        return DecoderLayer(c, rngs=rngs, dtype=dtype)
      self.layers = create_stack(rngs)
    else:
      self.layers = nnx.List([
          DecoderLayer(c, rngs=rngs, dtype=dtype,
                       moe_config=moe_config if is_moe_layer(i, every) else None)
          for i in range(c.num_layers)])
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
    return remat.wrap(_run_layer, self.remat)

  def _over_layers(self, fn, x, *per_layer):
    """x -> fn(layer, x, *slices) over the layers; returns (x, aux, extra outputs).

    `fn` returns (x, aux, *extras). `per_layer` arrays carry the layer on axis 0 (a KV
    cache); with them, extra i is the layers' new rows of per_layer[i]; without, the
    extras are stacked on a new leading layer axis. `aux` is the MoE layers' values
    reduced over them (`reduce_aux`; {} for a dense decoder). Scanned or unrolled as
    configured; scanned MoE decoders scan over groups of `every` layers.
    """
    if self.scan_layers and self.moe_every:
      return self._over_groups(fn, x, *per_layer)
    if self.scan_layers:
      @nnx.scan(in_axes=(nnx.Carry, 0) + (0,) * len(per_layer), out_axes=(nnx.Carry, 0),
                transform_metadata={nnx.PARTITION_NAME: 'layers'})
      def run_stack(x, layer, *slices):
        x, aux, *extras = fn(layer, x, *slices)
        return x, (aux, tuple(extras))
      x, (aux, extras) = run_stack(x, self.layers, *per_layer)
      return x, reduce_aux(aux), extras
    moe_aux = []
    if per_layer:  # outputs replace the inputs' rows (in place for a donated cache)
      per_layer = list(per_layer)
      for i, layer in enumerate(self.layers):
        x, aux, *extras = fn(layer, x, *(a[i] for a in per_layer))
        per_layer = [a.at[i].set(e) for a, e in zip(per_layer, extras)]
        moe_aux += [aux] if aux else []
      return x, _stack_aux(moe_aux), tuple(per_layer)
    outputs = []
    for layer in self.layers:
      x, aux, *extras = fn(layer, x)
      outputs.append(extras)
      moe_aux += [aux] if aux else []
    return x, _stack_aux(moe_aux), tuple(jnp.stack(column) for column in zip(*outputs))

  def _over_groups(self, fn, x, *per_layer):
    """_over_layers for a scanned MoE decoder: one scan step per group of `every` layers."""
    every = self.moe_every
    grouped = [a.reshape((a.shape[0] // every, every) + a.shape[1:]) for a in per_layer]

    @nnx.scan(in_axes=(nnx.Carry, 0) + (0,) * len(grouped), out_axes=(nnx.Carry, 0),
              transform_metadata={nnx.PARTITION_NAME: 'layers'})
    def run_groups(x, group, *slices):
      columns = []
      for j, layer in enumerate(group.sublayers()):
        x, aux, *extras = fn(layer, x, *(s[j] for s in slices))
        columns.append(extras)
      # aux: the group's last layer is its MoE layer
      return x, (aux, tuple(jnp.stack(column) for column in zip(*columns)))

    x, (aux, extras) = run_groups(x, self.layers, *grouped)
    extras = tuple(e.reshape((e.shape[0] * every,) + e.shape[2:]) for e in extras)
    return x, reduce_aux(aux), extras

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

  def forward(self, x: jax.Array, segment_ids: jax.Array, positions: jax.Array
              ) -> tuple[jax.Array, dict[str, jax.Array]]:
    """(float32 logits [b, l, v], MoE auxiliary scalars; {} for a dense decoder)."""
    mask = CausalSegments(segment_ids)
    x = constrain(x.astype(self.dtype), ACTIVATION_NAMES)
    layer_fn = self._layer_fn()
    x, aux, _ = self._over_layers(lambda layer, x: layer_fn(layer, x, mask, positions), x)
    return self.logits(x), aux

  def __call__(self, x: jax.Array, segment_ids: jax.Array, positions: jax.Array) -> jax.Array:
    """Logits only (training an MoE decoder needs `forward`'s auxiliary losses)."""
    return self.forward(x, segment_ids, positions)[0]

  def prefill(self, x: jax.Array, segment_ids: jax.Array, positions: jax.Array):
    """Forward pass that also returns keys and values: (logits, k, v [layers, b, l, k, h])."""
    mask = CausalSegments(segment_ids)
    x = constrain(x.astype(self.dtype), ACTIVATION_NAMES)
    x, _, (k, v) = self._over_layers(
        lambda layer, x: layer.prefill(x, mask, positions), x)
    return self.logits(x), k, v

  def decode(self, x: jax.Array, positions: jax.Array, k_cache: jax.Array,
             v_cache: jax.Array, lengths: jax.Array):
    """x [b, 1, d] at positions [b, 1] -> (logits [b, 1, v], k_cache, v_cache)."""
    x = constrain(x.astype(self.dtype), ACTIVATION_NAMES)
    x, _, (k_cache, v_cache) = self._over_layers(
        lambda layer, x, k, v: layer.decode(x, positions, k, v, lengths), x, k_cache, v_cache)
    return self.logits(x), k_cache, v_cache


def _stack_aux(per_layer: list[dict[str, jax.Array]]) -> dict[str, jax.Array]:
  """The MoE layers' aux dicts -> reduced scalars ({} without MoE layers)."""
  if not per_layer:
    return {}
  return reduce_aux({k: jnp.stack([aux[k] for aux in per_layer]) for k in per_layer[0]})
