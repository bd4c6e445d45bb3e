"""PyTorch reference of the image encoder (mm1_jax/models/vit.py), parameters in JAX layout.

uint8 images [n, H, W, 3] -> CLIP-normalised float32 -> row-major patches [n, p, c] ->
patch embedding (+ class token) + position embeddings -> pre-LayerNorm -> pre-norm blocks
(the blocks up to `feature_layer`, as the JAX model builds them) -> optional final
LayerNorm -> optional removal of the class token. Images of another size than configured
get the patch position table resized bicubically (Keys cubic, antialiased: what
jax.image.resize does; torch's antialiased bicubic interpolation computes the same).

Einsum letters: n images, p patches, c pixels per patch (p*p*3), d width.
"""

from __future__ import annotations

import math
from collections.abc import Mapping

import torch
import torch.nn.functional as F
from torch import nn

from mm1_jax.export import torch_layers as tl

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)


def normalize_pixels(images: torch.Tensor) -> torch.Tensor:
  """uint8 [..., 3] -> float32, CLIP-normalised."""
  x = images.to(torch.float32) / 255.0
  mean = torch.tensor(CLIP_MEAN, dtype=torch.float32)
  std = torch.tensor(CLIP_STD, dtype=torch.float32)
  return (x - mean) / std


def num_blocks(depth: int, feature_layer: int) -> int:
  """How many blocks run to produce hidden state `feature_layer` (of depth + 1 states)."""
  index = feature_layer if feature_layer >= 0 else depth + 1 + feature_layer
  if not 0 <= index <= depth:
    raise ValueError(f'model.vit.feature_layer={feature_layer} is out of range for '
                     f'model.vit.depth={depth}')
  return index


def outputs_class_token(vit_config: Mapping) -> bool:
  return bool(vit_config['use_class_token']) and not bool(vit_config.get('drop_class_token',
                                                                          False))


def resize_position_table(table: torch.Tensor, grid: int, has_class_token: bool):
  """[(1 +) g*g, d] -> [(1 +) grid*grid, d]: the patch part resized bicubically."""
  cls, patches = (table[:1], table[1:]) if has_class_token else (table[:0], table)
  old = math.isqrt(patches.shape[0])
  if old * old != patches.shape[0]:
    raise ValueError(f'{patches.shape[0]} position embeddings do not form a square grid')
  if old != grid:
    square = patches.reshape(old, old, -1).permute(2, 0, 1)[None].float()  # [1, d, g, g]
    square = F.interpolate(square, size=(grid, grid), mode='bicubic', align_corners=False,
                           antialias=True)
    patches = square[0].permute(1, 2, 0).reshape(grid * grid, -1).to(table.dtype)
  return torch.cat([cls, patches], dim=0)


class MLP(nn.Module):

  def __init__(self, width: int, mlp_dim: int, activation: str):
    super().__init__()
    self.up = tl.Dense(width, mlp_dim, use_bias=True)
    self.down = tl.Dense(mlp_dim, width, use_bias=True)
    self.activation = tl.activation(activation)

  def forward(self, x):
    return self.down(self.activation(self.up(x)))


class Block(nn.Module):
  """x + attn(ln(x)), then x + mlp(ln(x))."""

  def __init__(self, c: Mapping):
    super().__init__()
    self.attention_norm = tl.LayerNorm(c['width'], c['norm_eps'])
    self.attention = tl.Attention(c['width'], c['num_heads'], use_bias=True)
    self.mlp_norm = tl.LayerNorm(c['width'], c['norm_eps'])
    self.mlp = MLP(c['width'], c['mlp_dim'], c['activation'])

  def forward(self, x):
    x = x + self.attention(self.attention_norm(x))
    return x + self.mlp(self.mlp_norm(x))


class ViT(nn.Module):
  """uint8 [n, H, W, 3] -> features [n, P (+1 with the class token first), width]."""

  def __init__(self, c: Mapping):
    super().__init__()
    self.patch_size = c['patch_size']
    grid = c['image_size'] // c['patch_size']
    self.use_class_token = bool(c['use_class_token'])
    self.patch_embedding = tl.Dense(c['patch_size'] ** 2 * 3, c['width'])
    self.class_token = tl.parameter((c['width'],)) if self.use_class_token else None
    self.position_embedding = tl.parameter((grid * grid + int(self.use_class_token),
                                            c['width']))
    self.pre_norm = tl.LayerNorm(c['width'], c['norm_eps'])
    self.blocks = nn.ModuleList(Block(c) for _ in range(num_blocks(c['depth'],
                                                                      c['feature_layer'])))
    self.final_norm = (tl.LayerNorm(c['width'], c['norm_eps']) if c.get('final_norm', True)
                       else None)
    self.drop_class_token = bool(c.get('drop_class_token', False))

  def patchify(self, images: torch.Tensor) -> torch.Tensor:
    """[n, H, W, 3] -> [n, rows*cols, p*p*3], patches in row-major grid order."""
    n, height, width, channels = images.shape
    p = self.patch_size
    if height % p or width % p or height != width:
      raise ValueError(f'images are {height}x{width}; the ViT needs square images whose '
                       f'side is a multiple of the patch size {p}')
    g = height // p
    x = images.reshape(n, g, p, g, p, channels).permute(0, 1, 3, 2, 4, 5)
    return x.reshape(n, g * g, p * p * channels)

  def forward(self, images: torch.Tensor) -> torch.Tensor:
    dtype = self.patch_embedding.kernel.dtype
    x = self.patch_embedding(self.patchify(normalize_pixels(images)).to(dtype))
    if self.class_token is not None:
      cls = self.class_token.expand(x.shape[0], 1, x.shape[-1])
      x = torch.cat([cls, x], dim=1)
    grid = images.shape[1] // self.patch_size
    x = x + resize_position_table(self.position_embedding, grid, self.class_token is not None)
    x = self.pre_norm(x)
    for block in self.blocks:
      x = block(x)
    if self.final_norm is not None:
      x = self.final_norm(x)
    return x[:, 1:] if self.drop_class_token and self.class_token is not None else x
