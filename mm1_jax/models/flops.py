"""Model FLOPs: the one count of what MM1 computes, which MFU is measured with.

The trainer (through `mm1_jax.train.flops`), the benchmarks and the AOT report all count
with this module; tests/models/test_flops.py checks every term against the dot operations
of XLA's program for that module alone.

Conventions:
- A multiply-add is 2 FLOPs. Model FLOPs are the matmul (dot) FLOPs of the forward pass,
  plus the C-Abstractor's depthwise 3x3 convolution (9 multiply-adds per channel and cell;
  the code writes it as shifted products). Norms, activations, softmax, residual adds,
  RoPE, pixel normalisation, squeeze-excite means and the image-token scatter are left out:
  XLA counts them too (one FLOP per element and op), a few percent of its total at small
  widths and less at real ones.
- The token embedding is a gather and counts nothing; the LM head counts, tied or not.
- Attention counts its scores and weighted values: 4 x queries x keys x head_dim per query
  head (grouped-query attention shares keys and values, not this work). Causal attention
  is counted over the full square, masked half included, the common convention for MFU
  (the 'xla' kernel computes the whole square; splash skips masked blocks and is credited
  the same).
- Mixture of experts: a token counts its top_k experts' SwiGLUs and the router. What a
  dispatch executes beyond that is not model work and is not counted: 'capacity' runs every
  expert on all its capacity slots (ceil(group x top_k x capacity_factor / E) per group,
  empty or not) and moves tokens with two one-hot einsums of 2 x group x E x capacity x
  d_model FLOPs each per group; 'dropless' runs exactly the top_k assignments in a grouped
  matmul (`jax.lax.ragged_dot`), which XLA:CPU lowers to a masked dense dot over all E
  experts (E times the experts' FLOPs).
- Rows and images: the decoder counts every position of its data.seq_len-token rows,
  padding included. The ViT and the connector count per image, and a step counts the
  images it is given: the trainer passes the valid images it saw (empty slots, which the
  ViT also runs on, are not model work), the AOT report every slot. The ViT counts the
  blocks that run up to `feature_layer`; its class token, when used, is a token of every
  block. The attnpool connector projects its learned queries once per call, not per
  image: counted nothing (2 K d_model^2 per forward call).
- Training is 3x the forward pass: the backward pass runs two matmuls per forward one
  (gradients for the input and for the weight). Rematerialisation's recomputation and the
  optimizer are not counted: these are model FLOPs, not the hardware's.
"""

from __future__ import annotations

from mm1_jax.models.connectors import token_side
from mm1_jax.models.decoder import expert_width, is_moe_layer, moe_every
from mm1_jax.models.vit import num_blocks, outputs_class_token

# Training FLOPs per forward FLOP: the forward pass and the backward pass's two matmuls.
TRAINING_PER_FORWARD = 3.0

# ----------------------------------------------------------------------- building blocks


def matmul_flops(rows: float, in_features: int, out_features: int) -> float:
  """[rows, in_features] @ [in_features, out_features]."""
  return 2.0 * rows * in_features * out_features


def attention_flops(queries: float, keys: int, num_heads: int, head_dim: int) -> float:
  """Scores (q . k) and weighted values of `queries` query rows over `keys` keys."""
  return 4.0 * queries * keys * num_heads * head_dim


def attention_projection_flops(tokens: float, width: int, num_heads: int, num_kv_heads: int,
                               head_dim: int) -> float:
  """The query, key, value and output projections of `tokens` tokens."""
  return (2 * matmul_flops(tokens, width, num_heads * head_dim)
          + 2 * matmul_flops(tokens, width, num_kv_heads * head_dim))


# --------------------------------------------------------------------------------- ViT


def vit_tokens(vit_config, grid: int) -> int:
  """Tokens of each ViT block: the grid x grid patches and the class token, if used."""
  return grid * grid + int(bool(vit_config.use_class_token))


def vit_block_flops(vit_config, tokens: int) -> float:
  """One pre-norm block over `tokens` tokens of one image: attention and MLP."""
  c = vit_config
  head_dim = c.width // c.num_heads
  return (attention_projection_flops(tokens, c.width, c.num_heads, c.num_heads, head_dim)
          + attention_flops(tokens, tokens, c.num_heads, head_dim)
          + matmul_flops(tokens, c.width, c.mlp_dim) + matmul_flops(tokens, c.mlp_dim, c.width))


def vit_forward_flops(vit_config, image_size: int | None = None) -> float:
  """Forward FLOPs of one image (at `image_size`, default the configured one)."""
  c = vit_config
  grid = (image_size or c.image_size) // c.patch_size
  embed = matmul_flops(grid * grid, c.patch_size * c.patch_size * 3, c.width)
  blocks = num_blocks(c.depth, c.feature_layer)
  return embed + blocks * vit_block_flops(c, vit_tokens(c, grid))


# --------------------------------------------------------------------------- connectors


def area_pool_flops(grid: int, side: int, channels: int) -> float:
  """Area pooling of a grid x grid map to side x side: columns first, then rows."""
  return matmul_flops(grid * grid, channels, side) + matmul_flops(side * grid, channels, side)


def readout_flops(tokens: int, in_features: int, d_model: int, depth: int) -> float:
  """The connectors' MLP readout: `depth` dense layers, in_features -> d_model."""
  return (matmul_flops(tokens, in_features, d_model)
          + (depth - 1) * matmul_flops(tokens, d_model, d_model))


def avgpool_flops(model_config, grid: int) -> float:
  width, k = model_config.vit.width, model_config.connector.num_tokens
  return (area_pool_flops(grid, token_side(k), width)
          + readout_flops(k, width, model_config.decoder.d_model, 2))


def attnpool_flops(model_config, grid: int) -> float:
  """Keys and values of the patches, attention of K queries, output projection, readout.
  The learned queries' own projection does not depend on the image (module docstring)."""
  width, d, k = (model_config.vit.width, model_config.decoder.d_model,
                 model_config.connector.num_tokens)
  patches = grid * grid + int(outputs_class_token(model_config.vit))
  heads = model_config.connector.num_heads
  return (2 * matmul_flops(patches, width, d) + attention_flops(k, patches, heads, d // heads)
          + matmul_flops(k, d, d) + readout_flops(k, d, d, 2))


def bottleneck_flops(in_channels: int, channels: int, cells: int) -> float:
  """One C-Abstractor bottleneck block on `cells` cells of one image: 1x1 expansion,
  depthwise 3x3, squeeze-excite, 1x1 projection and, when the width changes, the 1x1
  shortcut."""
  squeeze = max(1, channels // 4)
  total = matmul_flops(cells, in_channels, channels) + 2.0 * 9 * cells * channels
  total += matmul_flops(1, channels, squeeze) + matmul_flops(1, squeeze, channels)
  total += matmul_flops(cells, channels, channels)
  if in_channels != channels:
    total += matmul_flops(cells, in_channels, channels)
  return total


def c_abstractor_flops(model_config, grid: int) -> float:
  connector = model_config.connector
  d, width_in = model_config.decoder.d_model, model_config.vit.width
  width, k = connector.width or d, connector.num_tokens
  total = bottleneck_flops(width_in, width, grid * grid)
  total += (connector.depth - 1) * bottleneck_flops(width, width, grid * grid)
  total += area_pool_flops(grid, token_side(k), width)
  total += connector.depth * bottleneck_flops(width, width, k)
  return total + readout_flops(k, width, d, connector.mlp_depth)


CONNECTOR_FLOPS = {
    'avgpool': avgpool_flops,
    'attnpool': attnpool_flops,
    'c_abstractor': c_abstractor_flops,
}


def connector_forward_flops(model_config, image_size: int | None = None) -> float:
  """Forward FLOPs of the connector on one image's ViT features (at `image_size`)."""
  kind = model_config.connector.kind
  if kind not in CONNECTOR_FLOPS:
    raise ValueError(f'model.connector.kind={kind!r} has no FLOP count; known: '
                     f'{sorted(CONNECTOR_FLOPS)}')
  grid = (image_size or model_config.vit.image_size) // model_config.vit.patch_size
  return CONNECTOR_FLOPS[kind](model_config, grid)


def image_forward_flops(model_config, image_size: int | None = None) -> float:
  """ViT and connector forward FLOPs of one image."""
  return (vit_forward_flops(model_config.vit, image_size)
          + connector_forward_flops(model_config, image_size))


# ----------------------------------------------------------------------------- decoder


def swiglu_flops(tokens: float, d_model: int, d_ff: int) -> float:
  """gate, up and down projections of `tokens` tokens."""
  return 3 * matmul_flops(tokens, d_model, d_ff)


def router_flops(tokens: float, d_model: int, num_experts: int) -> float:
  return matmul_flops(tokens, d_model, num_experts)


def moe_flops(tokens: float, d_model: int, d_ff: int, moe_config) -> float:
  """Model FLOPs of an MoE block: top_k expert SwiGLUs per token and the router (the
  dispatch's own work is not counted: module docstring)."""
  return (moe_config.top_k * swiglu_flops(tokens, d_model, d_ff)
          + router_flops(tokens, d_model, moe_config.num_experts))


def decoder_attention_flops(decoder_config, length: int) -> float:
  """Attention scores and values of one sequence of `length` tokens, all layers."""
  c = decoder_config
  return c.num_layers * attention_flops(length, length, c.num_heads, c.d_model // c.num_heads)


def decoder_layer_flops(decoder_config, length: int, moe_config=None) -> float:
  """One layer on a sequence of `length` tokens: attention, then SwiGLU or, with
  `moe_config`, an MoE block."""
  c = decoder_config
  head_dim = c.d_model // c.num_heads
  attention = (attention_projection_flops(length, c.d_model, c.num_heads, c.num_kv_heads,
                                          head_dim)
               + attention_flops(length, length, c.num_heads, head_dim))
  if moe_config is None:
    return attention + swiglu_flops(length, c.d_model, c.d_ff)
  return attention + moe_flops(length, c.d_model, expert_width(c, moe_config), moe_config)


def lm_head_flops(decoder_config, tokens: float) -> float:
  """The output projection to the vocabulary (tied or not)."""
  return matmul_flops(tokens, decoder_config.d_model, decoder_config.vocab_size)


def decoder_forward_flops(decoder_config, length: int, moe_config=None) -> float:
  """Forward FLOPs of one sequence of `length` tokens: every layer and the LM head.
  `moe_config`: model.moe (None or no experts: a dense decoder)."""
  every = moe_every(moe_config)
  total = sum(decoder_layer_flops(decoder_config, length,
                                  moe_config if is_moe_layer(i, every) else None)
              for i in range(decoder_config.num_layers))
  return total + lm_head_flops(decoder_config, length)


# ------------------------------------------------------------------------ whole model


def _images_per_step(config, num_images: float | None) -> float:
  if num_images is None:
    return float(config.train.batch_size * config.data.max_images)
  return float(num_images)


def train_flops_by_part(config, num_images: float | None = None) -> dict[str, float]:
  """Training FLOPs of one step of train.batch_size rows of data.seq_len tokens holding
  `num_images` images in all (default: every slot, batch_size x data.max_images), by part:
  vit, connector, decoder_attention (scores and values), decoder_layers (the layers'
  projections and feed-forward blocks) and lm_head."""
  model, rows, length = config.model, config.train.batch_size, config.data.seq_len
  images = _images_per_step(config, num_images)
  attention = decoder_attention_flops(model.decoder, length)
  head = lm_head_flops(model.decoder, length)
  forward = {
      'vit': images * vit_forward_flops(model.vit),
      'connector': images * connector_forward_flops(model),
      'decoder_attention': rows * attention,
      'decoder_layers': rows * (decoder_forward_flops(model.decoder, length, model.moe)
                                - attention - head),
      'lm_head': rows * head,
  }
  return {part: TRAINING_PER_FORWARD * flops for part, flops in forward.items()}


def train_flops_per_step(config, num_images: float | None = None) -> float:
  """Training FLOPs of one step holding `num_images` images (see train_flops_by_part)."""
  return sum(train_flops_by_part(config, num_images).values())


def forward_flops_per_sequence(config, num_images: float | None = None) -> float:
  """Forward FLOPs of one sequence of data.seq_len tokens with `num_images` images
  (default data.max_images, the most a sequence holds)."""
  images = config.data.max_images if num_images is None else num_images
  model = config.model
  return (decoder_forward_flops(model.decoder, config.data.seq_len, model.moe)
          + images * image_forward_flops(model))


def model_flops_per_sequence(config, num_images: float | None = None) -> float:
  """Training FLOPs (3x forward) of one sequence; see forward_flops_per_sequence."""
  return TRAINING_PER_FORWARD * forward_flops_per_sequence(config, num_images)


__all__ = ['model_flops_per_sequence', 'forward_flops_per_sequence', 'train_flops_per_step',
           'train_flops_by_part', 'decoder_forward_flops', 'decoder_attention_flops',
           'decoder_layer_flops', 'lm_head_flops', 'moe_flops', 'vit_forward_flops',
           'vit_block_flops', 'connector_forward_flops', 'image_forward_flops',
           'TRAINING_PER_FORWARD']
