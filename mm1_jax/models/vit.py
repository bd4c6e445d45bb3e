"""CLIP-style Vision Transformer: the image encoder.

uint8 images [n, H, W, 3] are normalised on device with the CLIP mean/std, cut into
patches (reshape + dense, equivalent to CLIP's stride-p convolution without bias), given
an optional class token and learned position embeddings, normalised once
("pre_layrnorm", as CLIP names it), passed through pre-norm blocks (MHA + MLP) and
normalised by a final LayerNorm.

`feature_layer` indexes the hidden states as CLIP/LLaVA do: state 0 is the embedding
output, state i the output of block i, so -1 is the last block and -2 the penultimate.
Blocks after the selected one would never run, so they are not built (an importer of
CLIP weights drops them). `final_norm` applies the final LayerNorm to the selected state
(CLIP's hidden states, which LLaVA and MM1 take, have none: set it False to match them).
With `use_class_token`, `drop_class_token` removes the class token from the output after
it took part in attention, as CLIP-feature consumers usually do.

`scan_layers` stacks the blocks on a leading 'layers' axis and scans over them, as the
decoder does (one compiled block for ViT-H's 32). `remat` names a rematerialisation
policy (mm1_jax.models.remat) for each block: with 16 images per row a ViT's saved
activations, attention probabilities above all, outgrow the decoder's.

Position embeddings are learned for the configured grid. Images of another size (any
multiple of the patch size) get the patch table resized bicubically to their grid (the
class token's embedding is kept): `interpolate_position_embedding`, which the HF importer
also uses when a checkpoint was trained at another resolution (224 -> 336 -> 378 -> 672).

Einsum letters: n images, p patches, c pixels per patch (p*p*3), d width, f mlp.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
from flax import nnx

from mm1_jax.models import layers, remat
from mm1_jax.models.attention import Attention
from mm1_jax.parallel.rules import constrain

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)

ACTIVATION_NAMES = ('batch', 'image_patches', 'activation_embed')

# Named sizes (CLIP's): width, depth, heads, mlp_dim, patch size.
VIT_SIZES = {
    'B/16': dict(width=768, depth=12, num_heads=12, mlp_dim=3072, patch_size=16),
    'L/14': dict(width=1024, depth=24, num_heads=16, mlp_dim=4096, patch_size=14),
    'H/14': dict(width=1280, depth=32, num_heads=16, mlp_dim=5120, patch_size=14),
}


def set_size(vit_config, name: str, image_size: int) -> None:
  """Sets a named size (VIT_SIZES) and the image size on a model.vit config section."""
  if name not in VIT_SIZES:
    raise ValueError(f'unknown ViT size {name!r}; known: {sorted(VIT_SIZES)}')
  vit_config.update(VIT_SIZES[name])
  vit_config.image_size = image_size


def outputs_class_token(vit_config) -> bool:
  """Whether the ViT's output starts with the class token."""
  return bool(vit_config.use_class_token) and not bool(vit_config.get('drop_class_token', False))


def interpolate_position_embedding(table: jax.Array, grid: int, has_class_token: bool):
  """[(1 +) g*g, d] -> [(1 +) grid*grid, d]: the patch part resized bicubically."""
  cls, patches = (table[:1], table[1:]) if has_class_token else (table[:0], table)
  old = math.isqrt(patches.shape[0])
  if old * old != patches.shape[0]:
    raise ValueError(f'{patches.shape[0]} position embeddings do not form a square grid')
  if old != grid:
    patches = jax.image.resize(patches.reshape(old, old, -1).astype(jnp.float32),
                               (grid, grid, patches.shape[-1]), 'bicubic')
    patches = patches.reshape(grid * grid, -1).astype(table.dtype)
  return jnp.concatenate([cls, patches], axis=0)


def normalize_pixels(images: jax.Array) -> jax.Array:
  """uint8 [..., 3] -> float32, CLIP-normalised."""
  x = images.astype(jnp.float32) / 255.0
  return (x - jnp.asarray(CLIP_MEAN)) / jnp.asarray(CLIP_STD)


def num_blocks(depth: int, feature_layer: int) -> int:
  """How many blocks run to produce hidden state `feature_layer` (of depth + 1 states)."""
  index = feature_layer if feature_layer >= 0 else depth + 1 + feature_layer
  if not 0 <= index <= depth:
    raise ValueError(f'model.vit.feature_layer={feature_layer} is out of range for '
                     f'model.vit.depth={depth} (hidden states -{depth + 1}..{depth})')
  return index


class MLP(nnx.Module):

  def __init__(self, width: int, mlp_dim: int, activation: str, *, rngs, dtype):
    self.up = layers.Dense(width, mlp_dim, names=('embed', 'mlp'), use_bias=True,
                           rngs=rngs, dtype=dtype)
    self.down = layers.Dense(mlp_dim, width, names=('mlp', 'embed'), use_bias=True,
                             rngs=rngs, dtype=dtype)
    self.activation = layers.activation(activation)

  def __call__(self, x):
    h = constrain(self.activation(self.up(x)), ('batch', 'image_patches', 'mlp'))
    return self.down(h)


class Block(nnx.Module):
  """Pre-norm transformer block: x + attn(ln(x)), then x + mlp(ln(x))."""

  def __init__(self, vit_config, *, rngs: nnx.Rngs, dtype):
    c = vit_config
    self.attention_norm = layers.LayerNorm(c.width, eps=c.norm_eps, rngs=rngs, dtype=dtype)
    self.attention = Attention(c.width, c.num_heads, use_bias=True, rngs=rngs, dtype=dtype)
    self.mlp_norm = layers.LayerNorm(c.width, eps=c.norm_eps, rngs=rngs, dtype=dtype)
    self.mlp = MLP(c.width, c.mlp_dim, c.activation, rngs=rngs, dtype=dtype)

  def __call__(self, x):
    x = x + self.attention(self.attention_norm(x))
    x = constrain(x, ACTIVATION_NAMES)
    x = x + self.mlp(self.mlp_norm(x))
    return constrain(x, ACTIVATION_NAMES)


def _run_block(block: Block, x):
  return block(x)


class ViT(nnx.Module):
  """uint8 [n, H, W, 3] -> features [n, P (+1 with the class token first), width]."""

  def __init__(self, vit_config, *, rngs: nnx.Rngs, dtype=jnp.float32):
    c = vit_config
    if c.image_size % c.patch_size:
      raise ValueError(f'model.vit.image_size={c.image_size} is not a multiple of '
                       f'model.vit.patch_size={c.patch_size}')
    self.patch_size = c.patch_size
    self.grid = c.image_size // c.patch_size
    self.use_class_token = bool(c.use_class_token)
    num_positions = self.grid * self.grid + int(self.use_class_token)
    self.patch_embedding = layers.Dense(c.patch_size * c.patch_size * 3, c.width,
                                        names=('patch_pixels', 'embed'), rngs=rngs, dtype=dtype)
    normal = nnx.initializers.normal(c.width ** -0.5)
    self.class_token = (layers.param(rngs, normal, (c.width,), ('embed',))
                        if self.use_class_token else None)
    self.position_embedding = layers.param(rngs, normal, (num_positions, c.width),
                                           ('image_patches', 'embed'))
    self.pre_norm = layers.LayerNorm(c.width, eps=c.norm_eps, rngs=rngs, dtype=dtype)
    count = num_blocks(c.depth, c.feature_layer)
    self.scan_layers = bool(c.get('scan_layers', False))
    if self.scan_layers:
      @nnx.split_rngs(splits=count)
      @nnx.vmap(in_axes=(0,), out_axes=0, transform_metadata={nnx.PARTITION_NAME: 'layers'})
      def create_stack(rngs):
        return Block(c, rngs=rngs, dtype=dtype)
      self.blocks = create_stack(rngs)
    else:
      self.blocks = nnx.List([Block(c, rngs=rngs, dtype=dtype) for _ in range(count)])
    self.final_norm = (layers.LayerNorm(c.width, eps=c.norm_eps, rngs=rngs, dtype=dtype)
                       if c.get('final_norm', True) else None)
    self.drop_class_token = bool(c.get('drop_class_token', False))
    self.remat = c.get('remat', 'none')
    remat.check_policy(self.remat, 'model.vit.remat')
    self.dtype = dtype

  def patchify(self, images: jax.Array) -> jax.Array:
    """[n, H, W, 3] -> [n, rows*cols, p*p*3], patches in row-major grid order."""
    n, height, width, channels = images.shape
    p = self.patch_size
    if height % p or width % p or height != width:
      raise ValueError(f'images are {height}x{width}; the ViT needs square images whose '
                       f'side is a multiple of the patch size {p}')
    g = height // p
    x = images.reshape(n, g, p, g, p, channels).transpose(0, 1, 3, 2, 4, 5)
    return x.reshape(n, g * g, p * p * channels)

  def __call__(self, images: jax.Array) -> jax.Array:
    x = self.patch_embedding(self.patchify(normalize_pixels(images)))
    if self.class_token is not None:
      cls = jnp.broadcast_to(self.class_token[...].astype(self.dtype), (x.shape[0], 1, x.shape[-1]))
      x = jnp.concatenate([cls, x], axis=1)
    grid = images.shape[1] // self.patch_size
    positions = interpolate_position_embedding(self.position_embedding[...], grid,
                                               self.class_token is not None)
    x = x + positions.astype(self.dtype)
    x = constrain(self.pre_norm(x), ACTIVATION_NAMES)
    run_block = remat.wrap(_run_block, self.remat)
    if self.scan_layers:
      @nnx.scan(in_axes=(nnx.Carry, 0), out_axes=nnx.Carry,
                transform_metadata={nnx.PARTITION_NAME: 'layers'})
      def run_stack(x, block):
        return run_block(block, x)
      x = run_stack(x, self.blocks)
    else:
      for block in self.blocks:
        x = run_block(block, x)
    if self.final_norm is not None:
      x = self.final_norm(x)
    return x[:, 1:] if self.drop_class_token and self.class_token is not None else x
