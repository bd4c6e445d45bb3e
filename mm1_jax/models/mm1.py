"""MM1: ViT -> connector -> image tokens scattered into the decoder's input embeddings.

Image scatter (static shapes, no loops over data). The images of a row [b, m, ...] become
m*K embeddings [b, m*K, d] in slot order. A position whose token is `image_token_id`
takes embedding number r, where r is its rank among the image positions of its row
(cumulative count - 1). So the k-th run of K image ids in a row is image slot k — the
data pipeline guarantees one run of exactly K ids per valid image, in slot order.
Defensive choices when that invariant is broken: an image position whose slot is not
valid (`image_valid` False) or whose rank is beyond the m*K available embeddings gets a
zero embedding (never another image's, never NaN).

KV-cache decoding (static shapes, jit- and donation-friendly). The cache is a plain dict
    {'k', 'v': [num_layers, B, max_length, kv_heads, head_dim] (cache['k'][i] is layer i),
     'lengths': int32 [B]: how many positions of each row hold keys and values}
`prefill(batch, cache)` runs the prompt (one segment per row, right padding) and stores
positions 0..L-1; `decode_step(tokens, cache)` appends one token per row at index and
position lengths[b]. Entries at or beyond lengths[b] may hold stale values (the prompt's
padding); they are never attended to and are overwritten as the row grows.

Einsum letters: none (the assembly only gathers and selects).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
from flax import nnx

from mm1_jax.models.connectors import make_connector
from mm1_jax.models.decoder import ACTIVATION_NAMES, Decoder
from mm1_jax.models.vit import ViT
from mm1_jax.parallel.rules import constrain


class MM1(nnx.Module):
  """The multimodal decoder; `config` is the full ConfigDict (uses config.model.*)."""

  def __init__(self, config, *, rngs: nnx.Rngs, dtype=jnp.float32):
    model = config.model
    self.image_token_id = int(model.image_token_id)
    self.num_image_tokens = int(model.connector.num_tokens)
    self.vit = ViT(model.vit, rngs=rngs, dtype=dtype)
    self.connector = make_connector(model, rngs=rngs, dtype=dtype)
    self.decoder = Decoder(model.decoder, rngs=rngs, dtype=dtype,
                           moe_config=model.moe if model.moe.num_experts else None)
    d = model.decoder
    self.cache_shape = (d.num_layers, d.num_kv_heads, d.d_model // d.num_heads)
    self.dtype = dtype

  def image_features(self, images: jax.Array) -> jax.Array:
    """uint8 [n, H, W, 3] -> the ViT output the connector consumes [n, P(+1), width]."""
    return self.vit(images)

  def embed_images(self, images: jax.Array) -> jax.Array:
    """uint8 [n, H, W, 3] -> image tokens [n, K, d_model]."""
    return self.connector(self.image_features(images))

  def scatter_images(self, text_embeddings: jax.Array, tokens: jax.Array,
                     images: jax.Array, image_valid: jax.Array) -> jax.Array:
    """Replaces the embeddings at image positions by the row's image tokens, in order."""
    batch, slots = images.shape[:2]
    image_tokens = self.embed_images(images.reshape(batch * slots, *images.shape[2:]))
    valid = image_valid.reshape(batch * slots, 1, 1).astype(image_tokens.dtype)
    image_tokens = image_tokens * valid
    available = slots * self.num_image_tokens
    image_tokens = image_tokens.reshape(batch, available, -1).astype(text_embeddings.dtype)
    is_image = tokens == self.image_token_id
    rank = jnp.cumsum(is_image, axis=1, dtype=jnp.int32) - 1
    gathered = jnp.take_along_axis(image_tokens, jnp.clip(rank, 0, available - 1)[..., None],
                                   axis=1)
    use = is_image & (rank < available)
    return constrain(jnp.where(use[..., None], gathered, text_embeddings), ACTIVATION_NAMES)

  def embed(self, batch) -> jax.Array:
    """Token embeddings with the batch's images scattered into their runs [b, l, d]."""
    tokens = batch['tokens']
    x = self.decoder.embed_tokens(tokens)
    if 'images' in batch and batch['images'].shape[1] > 0:
      image_valid = batch.get('image_valid')
      if image_valid is None:
        image_valid = jnp.ones(batch['images'].shape[:2], jnp.bool_)
      x = self.scatter_images(x, tokens, batch['images'], image_valid)
    return x

  def __call__(self, batch) -> tuple[jax.Array, dict]:
    """batch (the DESIGN.md contract) -> (float32 logits [b, l, v], aux scalars).

    aux is {} for a dense decoder; with MoE layers it holds float32 scalars named
    'moe/<name>' for the names of models/moe.py: the weighted losses summed over the MoE
    layers (the '_loss' keys, which the train step adds to the loss), the dropped fraction
    and expert load max/min averaged over them.
    """
    logits, aux = self.decoder.forward(self.embed(batch), batch['segment_ids'],
                                       batch['positions'])
    return logits, {f'moe/{k}': v for k, v in aux.items()}

  def init_cache(self, batch_size: int, max_length: int) -> dict:
    """An empty KV cache for `batch_size` rows of up to `max_length` positions."""
    num_layers, kv_heads, head_dim = self.cache_shape
    shape = (num_layers, batch_size, max_length, kv_heads, head_dim)
    return {'k': jnp.zeros(shape, self.dtype), 'v': jnp.zeros(shape, self.dtype),
            'lengths': jnp.zeros((batch_size,), jnp.int32)}

  def prefill(self, batch, cache: dict) -> tuple[jax.Array, dict]:
    """Runs the prompts (one segment per row, segment id 0 on right padding).

    Returns float32 logits [b, l, v] and the cache holding positions 0..l-1 of each row,
    with lengths[b] = the number of non-padding tokens of row b.
    """
    segment_ids = batch['segment_ids']
    length, max_length = segment_ids.shape[1], cache['k'].shape[2]
    if length > max_length:
      raise ValueError(f'prompt length {length} exceeds the cache length {max_length}')
    logits, k, v = self.decoder.prefill(self.embed(batch), segment_ids, batch['positions'])
    cache = {
        'k': jax.lax.dynamic_update_slice(cache['k'], k.astype(cache['k'].dtype), (0,) * 5),
        'v': jax.lax.dynamic_update_slice(cache['v'], v.astype(cache['v'].dtype), (0,) * 5),
        'lengths': jnp.sum(segment_ids != 0, axis=1, dtype=jnp.int32)}
    return logits, cache

  def decode_step(self, tokens: jax.Array, cache: dict) -> tuple[jax.Array, dict]:
    """Appends tokens int32 [b] at index and position lengths[b]; float32 logits [b, v]."""
    lengths = cache['lengths']
    x = self.decoder.embed_tokens(tokens[:, None])
    logits, k, v = self.decoder.decode(x, lengths[:, None], cache['k'], cache['v'], lengths)
    return logits[:, 0], {'k': k, 'v': v, 'lengths': lengths + 1}
