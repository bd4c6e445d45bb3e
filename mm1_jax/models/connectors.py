"""Vision-language connectors: ViT features [n, P(+1), width] -> image tokens [n, K, d_model].

One interface, chosen by `config.model.connector.kind` through the `CONNECTORS` registry:
a connector class takes `(model_config, *, rngs, dtype)` and maps the ViT output to K
tokens of the decoder's width. Adding 'attnpool' or 'c_abstractor' is adding a class and
a registry entry.

'avgpool' drops the class token, lays the patches out on their grid and averages them to
sqrt(K) x sqrt(K) cells by AREA-WEIGHTED pooling: output cell i covers the interval
[i*G/S, (i+1)*G/S) of the G input rows and each input row contributes in proportion to
its overlap. When S divides G this is exact average pooling; otherwise it is the
adaptive pooling that PyTorch's AdaptiveAvgPool would approximate, without dropping or
double-counting patches. The pooling is a fixed linear map (two [S, G] matrices), so it
shards and differentiates like any einsum. A 2-layer GELU MLP (LLaVA-1.5 style) projects
to d_model.

Einsum letters: n images, g/h input grid rows/columns, i/j output grid rows/columns,
d ViT width.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mm1_jax.models import layers
from mm1_jax.parallel.rules import constrain


def area_pooling_matrix(input_size: int, output_size: int) -> np.ndarray:
  """[output_size, input_size] weights; row i averages its share of the input cells."""
  scale = input_size / output_size
  weights = np.zeros((output_size, input_size), np.float32)
  for i in range(output_size):
    start, end = i * scale, (i + 1) * scale
    for g in range(int(np.floor(start)), min(int(np.ceil(end)), input_size)):
      weights[i, g] = max(0.0, min(end, g + 1) - max(start, g))
  return weights / weights.sum(axis=1, keepdims=True)


class AvgPoolConnector(nnx.Module):
  """Area-weighted average pooling to sqrt(K) x sqrt(K), then a 2-layer MLP."""

  def __init__(self, model_config, *, rngs: nnx.Rngs, dtype=jnp.float32):
    vit, connector = model_config.vit, model_config.connector
    d_model = model_config.decoder.d_model
    self.side = math.isqrt(connector.num_tokens)
    if self.side * self.side != connector.num_tokens:
      raise ValueError(f'model.connector.num_tokens={connector.num_tokens} is not a square')
    self.grid = vit.image_size // vit.patch_size
    self.use_class_token = bool(vit.use_class_token)
    self.up = layers.Dense(vit.width, d_model, names=('embed', 'mlp'), use_bias=True,
                           rngs=rngs, dtype=dtype)
    self.down = layers.Dense(d_model, d_model, names=('mlp', 'embed'), use_bias=True,
                             rngs=rngs, dtype=dtype)
    self.dtype = dtype

  def __call__(self, features: jax.Array) -> jax.Array:
    if self.use_class_token:
      features = features[:, 1:]
    n, num_patches, width = features.shape
    if num_patches != self.grid * self.grid:
      raise ValueError(f'expected {self.grid}x{self.grid} patches, got {num_patches}')
    grid = features.reshape(n, self.grid, self.grid, width).astype(self.dtype)
    pool = jnp.asarray(area_pooling_matrix(self.grid, self.side), self.dtype)
    pooled = jnp.einsum('ig,jh,nghd->nijd', pool, pool, grid)
    pooled = pooled.reshape(n, self.side * self.side, width)
    pooled = constrain(pooled, ('batch', 'image_tokens', 'activation_embed'))
    hidden = constrain(jax.nn.gelu(self.up(pooled)), ('batch', 'image_tokens', 'mlp'))
    return constrain(self.down(hidden), ('batch', 'image_tokens', 'activation_embed'))


def _not_implemented(kind: str):
  """A registry placeholder that fails clearly when the kind is chosen."""

  def build(*args, **kwargs):
    del args, kwargs
    implemented = sorted(k for k, v in CONNECTORS.items() if isinstance(v, type))
    raise NotImplementedError(f'model.connector.kind={kind!r} is not implemented yet; '
                              f'implemented: {implemented}')

  return build


CONNECTORS = {
    'avgpool': AvgPoolConnector,
    'attnpool': _not_implemented('attnpool'),
    'c_abstractor': _not_implemented('c_abstractor'),
}


def make_connector(model_config, *, rngs: nnx.Rngs, dtype=jnp.float32) -> nnx.Module:
  """The connector named by model_config.connector.kind."""
  kind = model_config.connector.kind
  if kind not in CONNECTORS:
    raise ValueError(f'model.connector.kind={kind!r} is unknown; known: {sorted(CONNECTORS)}')
  return CONNECTORS[kind](model_config, rngs=rngs, dtype=dtype)
