"""Model FLOPs of one training sequence: ViT, connector, decoder and attention.

Counts multiply-adds as 2 FLOPs; training is 3x the forward pass (forward, and two
matmuls per weight in the backward pass). Attention scores and values cost 4 * length *
width FLOPs per token and layer, causal masking not discounted (the common convention
for MFU). The token embedding is a gather and counts nothing; the output projection
counts, tied or not. Norms, activations and softmax are left out.
"""

from __future__ import annotations

from mm1_jax.models.connectors import connector_class
from mm1_jax.models.vit import num_blocks, outputs_class_token


def moe_layer_counts(decoder_config, moe_config) -> tuple[int, int]:
  """(MoE layers, per-token active feed-forward weights of one MoE layer: top_k expert
  SwiGLUs and the router); (0, 0) for a dense decoder."""
  if moe_config is None or not moe_config.num_experts:
    return 0, 0
  c, m = decoder_config, moe_config
  width = int(m.get('d_ff', 0) or c.d_ff)
  return c.num_layers // m.every, m.top_k * 3 * c.d_model * width + c.d_model * m.num_experts


def inactive_expert_params(model_config) -> int:
  """Expert weights a token does not use: (num_experts - top_k) SwiGLUs per MoE layer."""
  c, m = model_config.decoder, model_config.moe
  if not m.num_experts:
    return 0
  width = int(m.get('d_ff', 0) or c.d_ff)
  return (c.num_layers // m.every) * (m.num_experts - m.top_k) * 3 * c.d_model * width


def decoder_forward_flops(decoder_config, length: int, moe_config=None) -> float:
  """Forward FLOPs of `length` tokens; an MoE layer counts its top_k experts and router in
  place of the dense SwiGLU (the dispatch einsums are left out, as norms are)."""
  c = decoder_config
  head_dim = c.d_model // c.num_heads
  attention_weights = (2 * c.d_model * c.num_heads * head_dim
                       + 2 * c.d_model * c.num_kv_heads * head_dim)
  moe_layers, moe_ffn = moe_layer_counts(c, moe_config)
  per_layer = attention_weights + 3 * c.d_model * c.d_ff
  matmul = (c.num_layers * per_layer + moe_layers * (moe_ffn - 3 * c.d_model * c.d_ff)
            + c.vocab_size * c.d_model)
  return float(length * 2 * matmul) + decoder_attention_flops(c, length)


def decoder_attention_flops(decoder_config, length: int) -> float:
  """Forward FLOPs of the attention scores and values of `length` tokens, all layers."""
  c = decoder_config
  return float(4 * c.num_layers * length * length * c.num_heads * (c.d_model // c.num_heads))


def vit_forward_flops(vit_config, image_size: int | None = None) -> float:
  """Forward FLOPs of one image (at `image_size`, default the configured one)."""
  c = vit_config
  grid = (image_size or c.image_size) // c.patch_size
  tokens = grid * grid + int(bool(c.use_class_token))
  blocks = num_blocks(c.depth, c.feature_layer)
  per_block = 4 * c.width * c.width + 2 * c.width * c.mlp_dim
  embed = 2 * grid * grid * c.patch_size * c.patch_size * 3 * c.width
  return float(embed + blocks * tokens * (2 * per_block + 4 * tokens * c.width))


def connector_forward_flops(model_config, image_size: int | None = None) -> float:
  grid = (image_size or model_config.vit.image_size) // model_config.vit.patch_size
  return float(connector_class(model_config.connector.kind).forward_flops(model_config, grid))


def model_flops_per_sequence(config, num_images: float | None = None) -> float:
  """Training FLOPs of one sequence of data.seq_len tokens with `num_images` images
  (default data.max_images, the most a sequence holds)."""
  images = config.data.max_images if num_images is None else num_images
  model = config.model
  forward = decoder_forward_flops(model.decoder, config.data.seq_len, model.moe)
  forward += images * (vit_forward_flops(model.vit) + connector_forward_flops(model))
  return 3.0 * forward


__all__ = ['model_flops_per_sequence', 'decoder_forward_flops', 'decoder_attention_flops',
           'inactive_expert_params', 'moe_layer_counts', 'vit_forward_flops',
           'connector_forward_flops', 'outputs_class_token']
