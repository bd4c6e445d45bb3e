"""PyTorch reference of the decoder (mm1_jax/models/decoder.py and moe.py), per layer.

Embeddings [b, l, d] (+ segment_ids, positions [b, l]) -> float32 logits [b, l, v]:
pre-RMSNorm layers (grouped-query attention, causal within packed segments, RoPE at the
batch positions; then SwiGLU, or a mixture of experts in the last layer of each group of
`model.moe.every` layers), a final RMSNorm and the tied (embedding^T) or untied output.

The MoE layer is computed as its definition: each token's router probabilities
softmax(x @ router), its top_k experts, their probabilities renormalised to sum to one
(`model.moe.renormalize`, default True), y = sum over the chosen experts of weight x
SwiGLU_e(x). No assignment is ever dropped: this equals the JAX model with
`model.moe.dispatch='dropless'`, or 'capacity' when no expert overflows its capacity.

Einsum letters: b batch, l length, d embed, f mlp, v vocab, e expert, t token, k choice.
"""

from __future__ import annotations

from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from mm1_jax.export import torch_layers as tl


def moe_every(model_config: Mapping) -> int:
  """The MoE period of the layers; 0 for a dense decoder."""
  moe = model_config.get('moe') or {}
  return int(moe.get('every', 1)) if moe.get('num_experts', 0) else 0


def is_moe_layer(index: int, every: int) -> bool:
  """Layer `index` has an MoE block: the last of each group of `every` layers."""
  return every > 0 and (index + 1) % every == 0


class SwiGLU(nn.Module):
  """down(silu(gate(x)) * up(x))."""

  def __init__(self, d_model: int, d_ff: int):
    super().__init__()
    self.gate = tl.Dense(d_model, d_ff)
    self.up = tl.Dense(d_model, d_ff)
    self.down = tl.Dense(d_ff, d_model)

  def forward(self, x):
    return self.down(F.silu(self.gate(x)) * self.up(x))


class MoE(nn.Module):
  """Top-k routed SwiGLU experts: router [d, e], gate/up [e, d, f], down [e, f, d]."""

  def __init__(self, d_model: int, d_ff: int, moe_config: Mapping):
    super().__init__()
    experts = int(moe_config['num_experts'])
    self.router = tl.parameter((d_model, experts))
    self.gate = tl.parameter((experts, d_model, d_ff))
    self.up = tl.parameter((experts, d_model, d_ff))
    self.down = tl.parameter((experts, d_ff, d_model))
    self.top_k = int(moe_config['top_k'])
    self.renormalize = bool(moe_config.get('renormalize', True))

  def route(self, x: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """Tokens x [t, d] -> (gate weights float32 [t, k], experts int64 [t, k])."""
    probs = torch.softmax(torch.einsum('td,de->te', x.float(), self.router.float()), dim=-1)
    weights, experts = torch.topk(probs, self.top_k, dim=-1)
    if self.renormalize:
      weights = weights / torch.sum(weights, dim=-1, keepdim=True)
    return weights, experts

  def forward(self, x: torch.Tensor) -> torch.Tensor:
    shape = x.shape
    tokens = x.reshape(-1, shape[-1]).to(self.gate.dtype)
    weights, experts = self.route(tokens)
    y = torch.zeros_like(tokens)
    for e in range(self.gate.shape[0]):
      rows, choice = torch.nonzero(experts == e, as_tuple=True)
      if rows.numel() == 0:
        continue
      h = tokens[rows]
      out = (F.silu(h @ self.gate[e]) * (h @ self.up[e])) @ self.down[e]
      y.index_add_(0, rows, out * weights[rows, choice, None].to(out.dtype))
    return y.reshape(shape)


class DecoderLayer(nn.Module):
  """x + attention(norm(x)), then x + mlp(norm(x)); mlp is SwiGLU or MoE."""

  def __init__(self, c: Mapping, moe_config: Mapping | None = None):
    super().__init__()
    self.attention_norm = tl.RMSNorm(c['d_model'], c['norm_eps'])
    self.attention = tl.Attention(c['d_model'], c['num_heads'], c['num_kv_heads'],
                                  rope_theta=c['rope_theta'])
    self.mlp_norm = tl.RMSNorm(c['d_model'], c['norm_eps'])
    if moe_config is None:
      self.mlp = SwiGLU(c['d_model'], c['d_ff'])
    else:
      self.mlp = MoE(c['d_model'], int(moe_config.get('d_ff', 0) or c['d_ff']), moe_config)

  def forward(self, x, mask, positions):
    x = x + self.attention(self.attention_norm(x), mask=mask, positions=positions)
    return x + self.mlp(self.mlp_norm(x))


class Decoder(nn.Module):
  """embedding [v, d], layers, final_norm, output [d, v] (None when tied)."""

  def __init__(self, model_config: Mapping):
    super().__init__()
    c = model_config['decoder']
    every = moe_every(model_config)
    if every and c['num_layers'] % every:
      raise ValueError(f"model.decoder.num_layers={c['num_layers']} is not divisible by "
                       f'model.moe.every={every}')
    self.embedding = tl.parameter((c['vocab_size'], c['d_model']))
    self.layers = nn.ModuleList(
        DecoderLayer(c, model_config['moe'] if is_moe_layer(i, every) else None)
        for i in range(c['num_layers']))
    self.final_norm = tl.RMSNorm(c['d_model'], c['norm_eps'])
    self.output = None if c['tie_embeddings'] else tl.parameter((c['d_model'],
                                                                 c['vocab_size']))

  def embed_tokens(self, tokens: torch.Tensor) -> torch.Tensor:
    return self.embedding[tokens.long()]

  def forward(self, x, segment_ids, positions) -> torch.Tensor:
    mask = tl.packed_causal_mask(segment_ids)
    x = x.to(self.embedding.dtype)
    for layer in self.layers:
      x = layer(x, mask, positions)
    x = self.final_norm(x)
    if self.output is None:
      return torch.einsum('bld,vd->blv', x, self.embedding).float()
    return torch.einsum('bld,dv->blv', x, self.output).float()
