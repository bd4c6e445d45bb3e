"""PyTorch reference of the vision-language connectors (mm1_jax/models/connectors.py).

ViT features [n, P(+1), c] -> image tokens [n, K, d_model], for each `model.connector.kind`:
'avgpool' (area-weighted pooling of the patch grid to sqrt(K) x sqrt(K), 2-layer tanh-GELU
MLP), 'attnpool' (K learned queries, multi-head cross-attention over the layer-normalised
features, same MLP) and 'c_abstractor' (bottleneck stage, area pooling, bottleneck stage,
SiLU MLP readout). Parameters in JAX layout under the JAX names.

Einsum letters: n images, g/w input grid rows/columns, i/j output grid rows/columns,
c ViT width, d decoder width, p patches (with the class token if any), k output tokens,
m heads, h head dim.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mm1_jax.export import torch_layers as tl
from mm1_jax.export.torch_vit import outputs_class_token


def area_pooling_matrix(input_size: int, output_size: int) -> np.ndarray:
  """[output_size, input_size]: output cell i averages the input cells overlapping
  [i * G/S, (i+1) * G/S), each weighted by its overlap."""
  edges = np.arange(output_size + 1) * (input_size / output_size)
  cells = np.arange(input_size)
  overlap = np.clip(np.minimum(edges[1:, None], cells[None, :] + 1)
                    - np.maximum(edges[:-1, None], cells[None, :]), 0.0, None)
  overlap = overlap.astype(np.float32)
  return overlap / overlap.sum(axis=1, keepdims=True)


def token_side(num_tokens: int) -> int:
  side = math.isqrt(num_tokens)
  if side * side != num_tokens:
    raise ValueError(f'model.connector.num_tokens={num_tokens} is not a square')
  return side


def patch_grid(features: torch.Tensor, has_class_token: bool) -> torch.Tensor:
  """[n, (1 +) g*g, c] -> [n, g, g, c], the class token dropped."""
  if has_class_token:
    features = features[:, 1:]
  n, num_patches, width = features.shape
  grid = math.isqrt(num_patches)
  if grid * grid != num_patches:
    raise ValueError(f'{num_patches} patches do not form a square grid')
  return features.reshape(n, grid, grid, width)


def area_pool(grid: torch.Tensor, side: int) -> torch.Tensor:
  """[n, g, g, c] -> [n, side, side, c]."""
  pool = torch.from_numpy(area_pooling_matrix(grid.shape[1], side)).to(grid.dtype)
  return torch.einsum('ig,jw,ngwc->nijc', pool, pool, grid)


def _gelu(x):
  return F.gelu(x, approximate='tanh')


class ReadoutMLP(nn.Module):
  """`depth` dense layers (with biases), the activation between them."""

  def __init__(self, in_features: int, d_model: int, depth: int, activation):
    super().__init__()
    sizes = [in_features] + [d_model] * depth
    self.layers = nn.ModuleList(tl.Dense(a, b, use_bias=True)
                                for a, b in zip(sizes[:-1], sizes[1:]))
    self.activation = activation

  def forward(self, x):
    for i, layer in enumerate(self.layers):
      if i:
        x = self.activation(x)
      x = layer(x)
    return x


class AvgPoolConnector(nn.Module):

  def __init__(self, model_config: Mapping):
    super().__init__()
    vit, connector = model_config['vit'], model_config['connector']
    self.side = token_side(connector['num_tokens'])
    self.has_class_token = outputs_class_token(vit)
    self.readout = ReadoutMLP(vit['width'], model_config['decoder']['d_model'], 2, _gelu)

  def forward(self, features):
    pooled = area_pool(patch_grid(features, self.has_class_token), self.side)
    return self.readout(pooled.reshape(pooled.shape[0], self.side * self.side, -1))


class AttnPoolConnector(nn.Module):

  def __init__(self, model_config: Mapping):
    super().__init__()
    vit, connector = model_config['vit'], model_config['connector']
    d_model, heads = model_config['decoder']['d_model'], connector['num_heads']
    if d_model % heads:
      raise ValueError(f'model.connector.num_heads={heads} does not divide d_model={d_model}')
    head_dim = d_model // heads
    self.queries = tl.parameter((connector['num_tokens'], d_model))
    self.norm = tl.LayerNorm(vit['width'], vit['norm_eps'])
    self.query = tl.parameter((d_model, heads, head_dim))
    self.key = tl.parameter((vit['width'], heads, head_dim))
    self.value = tl.parameter((vit['width'], heads, head_dim))
    self.out = tl.parameter((heads, head_dim, d_model))
    self.readout = ReadoutMLP(d_model, d_model, 2, _gelu)

  def forward(self, features):
    x = self.norm(features)
    q = torch.einsum('kd,dmh->kmh', self.queries, self.query)
    k = torch.einsum('npc,cmh->npmh', x, self.key)
    v = torch.einsum('npc,cmh->npmh', x, self.value)
    scores = torch.einsum('kmh,npmh->nmkp', q.float(), k.float())
    weights = torch.softmax(scores * q.shape[-1] ** -0.5, dim=-1).to(v.dtype)
    attended = torch.einsum('nmkp,npmh->nkmh', weights, v)
    return self.readout(torch.einsum('nkmh,mhd->nkd', attended, self.out))


def depthwise_conv3x3(x: torch.Tensor, kernel: torch.Tensor) -> torch.Tensor:
  """'Same'-padded 3x3 depthwise convolution of x [n, g, w, o], kernel [3, 3, o]: the sum
  of nine shifted products, in the JAX model's order."""
  rows, cols = x.shape[1:3]
  padded = F.pad(x, (0, 0, 1, 1, 1, 1))
  out = torch.zeros_like(x)
  for i in range(3):
    for j in range(3):
      out = out + padded[:, i:i + rows, j:j + cols] * kernel[i, j]
  return out


class BottleneckBlock(nn.Module):
  """1x1, 3x3 depthwise, squeeze-excite, 1x1, channel LayerNorms, SiLU, residual."""

  def __init__(self, in_channels: int, channels: int, eps: float):
    super().__init__()
    self.expand = tl.Dense(in_channels, channels)
    self.expand_norm = tl.LayerNorm(channels, eps)
    self.depthwise = tl.parameter((3, 3, channels))
    self.depthwise_norm = tl.LayerNorm(channels, eps)
    squeeze = max(1, channels // 4)
    self.se_down = tl.Dense(channels, squeeze, use_bias=True)
    self.se_up = tl.Dense(squeeze, channels, use_bias=True)
    self.project = tl.Dense(channels, channels)
    self.project_norm = tl.LayerNorm(channels, eps)
    if in_channels != channels:
      self.shortcut = tl.Dense(in_channels, channels)
      self.shortcut_norm = tl.LayerNorm(channels, eps)
    else:
      self.shortcut = self.shortcut_norm = None

  def forward(self, x):
    h = F.silu(self.expand_norm(self.expand(x)))
    h = F.silu(self.depthwise_norm(depthwise_conv3x3(h, self.depthwise)))
    gate = torch.sigmoid(self.se_up(F.silu(self.se_down(torch.mean(h, dim=(1, 2))))))
    h = self.project_norm(self.project(h * gate[:, None, None, :]))
    shortcut = x if self.shortcut is None else self.shortcut_norm(self.shortcut(x))
    return F.silu(h + shortcut)


class CAbstractor(nn.Module):

  def __init__(self, model_config: Mapping):
    super().__init__()
    vit, connector = model_config['vit'], model_config['connector']
    d_model = model_config['decoder']['d_model']
    width = connector['width'] or d_model
    self.side = token_side(connector['num_tokens'])
    self.has_class_token = outputs_class_token(vit)
    depth, eps = connector['depth'], vit['norm_eps']
    if depth < 1 or connector['mlp_depth'] < 1:
      raise ValueError('model.connector.depth and model.connector.mlp_depth must be >= 1')
    self.stage1 = nn.ModuleList(BottleneckBlock(vit['width'] if i == 0 else width, width, eps)
                                for i in range(depth))
    self.stage2 = nn.ModuleList(BottleneckBlock(width, width, eps) for _ in range(depth))
    self.readout = ReadoutMLP(width, d_model, connector['mlp_depth'], F.silu)

  def forward(self, features):
    x = patch_grid(features, self.has_class_token)
    for block in self.stage1:
      x = block(x)
    x = area_pool(x, self.side)
    for block in self.stage2:
      x = block(x)
    return self.readout(x.reshape(x.shape[0], self.side * self.side, -1))


CONNECTORS = {
    'avgpool': AvgPoolConnector,
    'attnpool': AttnPoolConnector,
    'c_abstractor': CAbstractor,
}


def make_connector(model_config: Mapping) -> nn.Module:
  kind = model_config['connector']['kind']
  if kind not in CONNECTORS:
    raise ValueError(f'model.connector.kind={kind!r} is unknown; known: {sorted(CONNECTORS)}')
  return CONNECTORS[kind](model_config)
