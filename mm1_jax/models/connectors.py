"""Vision-language connectors: ViT features [n, P(+1), c] -> image tokens [n, K, d_model].

One interface, chosen by `config.model.connector.kind` through the `CONNECTORS` registry:
a connector class takes `(model_config, *, rngs, dtype)` and maps the ViT output to K
tokens of the decoder's width (its FLOPs are counted in mm1_jax.models.flops, with every
other part's). Every kind works on any square patch grid (the grid is read from the
features), so the ViT may run at another resolution than configured.

- 'avgpool': the class token dropped, the patches laid out on their grid and averaged to
  sqrt(K) x sqrt(K) cells by AREA-WEIGHTED pooling (`area_pooling_matrix`: output cell i
  covers [i*G/S, (i+1)*G/S) of the G input rows, each input row weighted by its overlap;
  exact average pooling when S divides G, adaptive pooling otherwise, no patch dropped or
  counted twice), then a 2-layer GELU MLP (LLaVA-1.5 style) to d_model.
- 'attnpool': K learned queries cross-attend (multi-head, `connector.num_heads`) over the
  layer-normalised patches (class token included when the ViT outputs it), then the same
  2-layer MLP.
- 'c_abstractor': Honeybee's convolutional abstractor: a ResNet-style stage of
  `connector.depth` bottleneck blocks (1x1 conv, 3x3 depthwise conv, squeeze-excite, 1x1
  conv, channel LayerNorms, SiLU, residual; the depthwise conv written as nine shifted
  products), area pooling to sqrt(K) x sqrt(K), a second
  such stage, and a `connector.mlp_depth`-layer SiLU MLP readout. Stage width
  `connector.width` (0: d_model). Honeybee's optional learned position embedding of the
  patches is left out: CLIP features already carry position.

Einsum letters: n images, g/w input grid rows/columns, i/j output grid rows/columns,
c ViT width, d decoder width, p patches (with the class token if any), k output tokens,
m heads, h head dim, o stage channels, r squeeze-excite channels.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mm1_jax.models import layers
from mm1_jax.models.vit import outputs_class_token
from mm1_jax.parallel.rules import constrain

TOKEN_NAMES = ('batch', 'image_tokens', 'activation_embed')


def area_pooling_matrix(input_size: int, output_size: int) -> np.ndarray:
  """[output_size, input_size] weights; row i averages its share of the input cells."""
  scale = input_size / output_size
  weights = np.zeros((output_size, input_size), np.float32)
  for i in range(output_size):
    start, end = i * scale, (i + 1) * scale
    for g in range(int(np.floor(start)), min(int(np.ceil(end)), input_size)):
      weights[i, g] = max(0.0, min(end, g + 1) - max(start, g))
  return weights / weights.sum(axis=1, keepdims=True)


def token_side(num_tokens: int) -> int:
  side = math.isqrt(num_tokens)
  if side * side != num_tokens:
    raise ValueError(f'model.connector.num_tokens={num_tokens} is not a square')
  return side


def patch_grid(features: jax.Array, has_class_token: bool) -> jax.Array:
  """[n, (1 +) g*g, c] -> [n, g, g, c], the class token dropped."""
  if has_class_token:
    features = features[:, 1:]
  n, num_patches, width = features.shape
  grid = math.isqrt(num_patches)
  if grid * grid != num_patches:
    raise ValueError(f'{num_patches} patches do not form a square grid')
  return features.reshape(n, grid, grid, width)


def area_pool(grid: jax.Array, side: int) -> jax.Array:
  """[n, g, g, c] -> [n, side, side, c] by area-weighted average pooling."""
  pool = jnp.asarray(area_pooling_matrix(grid.shape[1], side), grid.dtype)
  return jnp.einsum('ig,jw,ngwc->nijc', pool, pool, grid)


class ReadoutMLP(nnx.Module):
  """`depth` dense layers with an activation between them: in_features -> d_model."""

  def __init__(self, in_features: int, d_model: int, depth: int, activation, *,
               rngs: nnx.Rngs, dtype):
    sizes = [in_features] + [d_model] * depth
    self.layers = nnx.List([
        layers.Dense(a, b, names=('embed', 'mlp') if i % 2 == 0 else ('mlp', 'embed'),
                     use_bias=True, rngs=rngs, dtype=dtype)
        for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:]))])
    self.activation = activation

  def __call__(self, x):
    for i, layer in enumerate(self.layers):
      if i:
        x = self.activation(x)
      x = layer(x)
    return constrain(x, TOKEN_NAMES)


def _gelu(x):
  return jax.nn.gelu(x, approximate=True)


class AvgPoolConnector(nnx.Module):
  """Area-weighted average pooling to sqrt(K) x sqrt(K), then a 2-layer MLP."""

  def __init__(self, model_config, *, rngs: nnx.Rngs, dtype=jnp.float32):
    vit, connector = model_config.vit, model_config.connector
    self.side = token_side(connector.num_tokens)
    self.has_class_token = outputs_class_token(vit)
    self.readout = ReadoutMLP(vit.width, model_config.decoder.d_model, 2, _gelu,
                              rngs=rngs, dtype=dtype)
    self.dtype = dtype

  def __call__(self, features: jax.Array) -> jax.Array:
    grid = patch_grid(features.astype(self.dtype), self.has_class_token)
    pooled = area_pool(grid, self.side)
    pooled = pooled.reshape(pooled.shape[0], self.side * self.side, pooled.shape[-1])
    return self.readout(constrain(pooled, TOKEN_NAMES))


class AttnPoolConnector(nnx.Module):
  """K learned queries, multi-head cross-attention over the patches, then a 2-layer MLP."""

  def __init__(self, model_config, *, rngs: nnx.Rngs, dtype=jnp.float32):
    vit, connector = model_config.vit, model_config.connector
    d_model, heads = model_config.decoder.d_model, connector.num_heads
    if d_model % heads:
      raise ValueError(f'model.connector.num_heads={heads} does not divide d_model={d_model}')
    head_dim = d_model // heads
    self.queries = layers.param(rngs, nnx.initializers.normal(d_model ** -0.5),
                                (connector.num_tokens, d_model), ('image_tokens', 'embed'))
    self.norm = layers.LayerNorm(vit.width, eps=vit.norm_eps, rngs=rngs, dtype=dtype)
    init = nnx.initializers.lecun_normal(in_axis=0, out_axis=(1, 2))
    self.query = layers.param(rngs, init, (d_model, heads, head_dim),
                              ('embed', 'heads', 'head_dim'))
    self.key = layers.param(rngs, init, (vit.width, heads, head_dim),
                            ('embed', 'heads', 'head_dim'))
    self.value = layers.param(rngs, init, (vit.width, heads, head_dim),
                              ('embed', 'heads', 'head_dim'))
    self.out = layers.param(rngs, nnx.initializers.lecun_normal(in_axis=(0, 1), out_axis=2),
                            (heads, head_dim, d_model), ('heads', 'head_dim', 'embed'))
    self.readout = ReadoutMLP(d_model, d_model, 2, _gelu, rngs=rngs, dtype=dtype)
    self.dtype = dtype

  def __call__(self, features: jax.Array) -> jax.Array:
    dt = self.dtype
    x = self.norm(features.astype(dt))
    q = jnp.einsum('kd,dmh->kmh', self.queries[...].astype(dt), self.query[...].astype(dt))
    k = jnp.einsum('npc,cmh->npmh', x, self.key[...].astype(dt))
    v = jnp.einsum('npc,cmh->npmh', x, self.value[...].astype(dt))
    scores = jnp.einsum('kmh,npmh->nmkp', q, k, preferred_element_type=jnp.float32)
    weights = jax.nn.softmax(scores * q.shape[-1] ** -0.5, axis=-1).astype(dt)
    attended = jnp.einsum('nmkp,npmh->nkmh', weights, v)
    tokens = jnp.einsum('nkmh,mhd->nkd', attended, self.out[...].astype(dt))
    return self.readout(constrain(tokens, TOKEN_NAMES))


def depthwise_conv3x3(x: jax.Array, kernel: jax.Array) -> jax.Array:
  """'Same'-padded 3x3 depthwise convolution of x [n, g, w, o] with kernel [3, 3, o], as
  nine shifted products (cheap to compile and to differentiate; the op is memory-bound)."""
  rows, cols = x.shape[1:3]
  padded = jnp.pad(x, ((0, 0), (1, 1), (1, 1), (0, 0)))
  out = jnp.zeros_like(x)
  for i in range(3):
    for j in range(3):
      out = out + padded[:, i:i + rows, j:j + cols] * kernel[i, j]
  return out


class BottleneckBlock(nnx.Module):
  """ResNet-style block on [n, g, w, channels]: 1x1, 3x3 depthwise, squeeze-excite, 1x1."""

  def __init__(self, in_channels: int, channels: int, eps: float, *, rngs: nnx.Rngs, dtype):
    dense = lambda a, b, names, bias=False: layers.Dense(a, b, names=names, use_bias=bias,
                                                         rngs=rngs, dtype=dtype)
    norm = lambda: layers.LayerNorm(channels, eps=eps, rngs=rngs, dtype=dtype)
    self.expand = dense(in_channels, channels, ('embed', 'mlp'))
    self.expand_norm = norm()
    depthwise_init = nnx.initializers.lecun_normal(in_axis=(0, 1), out_axis=2)
    self.depthwise = layers.param(rngs, depthwise_init, (3, 3, channels), (None, None, 'mlp'))
    self.depthwise_norm = norm()
    squeeze = max(1, channels // 4)
    self.se_down = dense(channels, squeeze, ('mlp', None), bias=True)
    self.se_up = dense(squeeze, channels, (None, 'mlp'), bias=True)
    self.project = dense(channels, channels, ('mlp', 'embed'))
    self.project_norm = norm()
    self.shortcut = (dense(in_channels, channels, ('embed', 'mlp')) if in_channels != channels
                     else None)
    self.shortcut_norm = norm() if self.shortcut is not None else None
    self.dtype = dtype

  def __call__(self, x):
    h = jax.nn.silu(self.expand_norm(self.expand(x)))
    h = depthwise_conv3x3(h, self.depthwise[...].astype(self.dtype))
    h = jax.nn.silu(self.depthwise_norm(h))
    gate = jax.nn.sigmoid(self.se_up(jax.nn.silu(self.se_down(jnp.mean(h, axis=(1, 2))))))
    h = h * gate[:, None, None, :]
    h = self.project_norm(self.project(h))
    shortcut = x if self.shortcut is None else self.shortcut_norm(self.shortcut(x))
    return jax.nn.silu(h + shortcut)


class CAbstractor(nnx.Module):
  """Honeybee's C-Abstractor: stage, adaptive average pooling, stage, MLP readout."""

  def __init__(self, model_config, *, rngs: nnx.Rngs, dtype=jnp.float32):
    vit, connector = model_config.vit, model_config.connector
    d_model = model_config.decoder.d_model
    width = connector.width or d_model
    self.side = token_side(connector.num_tokens)
    self.has_class_token = outputs_class_token(vit)
    if connector.depth < 1 or connector.mlp_depth < 1:
      raise ValueError('model.connector.depth and model.connector.mlp_depth must be >= 1')
    eps = vit.norm_eps
    self.stage1 = nnx.List([BottleneckBlock(vit.width if i == 0 else width, width, eps,
                                            rngs=rngs, dtype=dtype)
                            for i in range(connector.depth)])
    self.stage2 = nnx.List([BottleneckBlock(width, width, eps, rngs=rngs, dtype=dtype)
                            for _ in range(connector.depth)])
    self.readout = ReadoutMLP(width, d_model, connector.mlp_depth, jax.nn.silu,
                              rngs=rngs, dtype=dtype)
    self.dtype = dtype

  def __call__(self, features: jax.Array) -> jax.Array:
    x = patch_grid(features.astype(self.dtype), self.has_class_token)
    for block in self.stage1:
      x = block(x)
    x = area_pool(x, self.side)
    for block in self.stage2:
      x = block(x)
    x = x.reshape(x.shape[0], self.side * self.side, x.shape[-1])
    return self.readout(constrain(x, TOKEN_NAMES))


CONNECTORS = {
    'avgpool': AvgPoolConnector,
    'attnpool': AttnPoolConnector,
    'c_abstractor': CAbstractor,
}


def connector_class(kind: str) -> type:
  if kind not in CONNECTORS:
    raise ValueError(f'model.connector.kind={kind!r} is unknown; known: {sorted(CONNECTORS)}')
  return CONNECTORS[kind]


def make_connector(model_config, *, rngs: nnx.Rngs, dtype=jnp.float32) -> nnx.Module:
  """The connector named by model_config.connector.kind."""
  return connector_class(model_config.connector.kind)(model_config, rngs=rngs, dtype=dtype)
