"""ViT: output shapes with/without class token and per feature_layer; pixel handling."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import tiny
from mm1_jax.models.vit import ViT, interpolate_position_embedding, normalize_pixels, set_size


def _vit_config(**overrides):
  config = tiny.get_config().model.vit
  config.update(overrides)
  return config


def _images(n, seed=0):
  return jnp.asarray(np.random.default_rng(seed).integers(0, 256, (n, 32, 32, 3), np.uint8))


@pytest.mark.parametrize('use_class_token', [False, True])
@pytest.mark.parametrize('feature_layer', [-1, -2])
def test_output_shape_and_blocks(use_class_token, feature_layer):
  config = _vit_config(use_class_token=use_class_token, feature_layer=feature_layer)
  vit = nnx.eval_shape(lambda: ViT(config, rngs=nnx.Rngs(0)))
  assert len(vit.blocks) == config.depth + 1 + feature_layer
  out = nnx.eval_shape(lambda m, x: m(x), vit, jax.ShapeDtypeStruct((3, 32, 32, 3), jnp.uint8))
  assert out.shape == (3, 16 + int(use_class_token), 64)


@pytest.mark.parametrize('activation', ['gelu', 'quick_gelu', 'gelu_exact'])
def test_runs_on_uint8_and_is_finite(activation):
  vit = ViT(_vit_config(activation=activation, use_class_token=True), rngs=nnx.Rngs(0))
  out = vit(_images(2))
  assert out.shape == (2, 17, 64) and out.dtype == jnp.float32
  assert bool(jnp.all(jnp.isfinite(out)))
  # Images are independent of each other.
  assert np.allclose(vit(_images(2)[:1]), out[:1], atol=1e-5)


def test_pixel_normalisation_uses_clip_statistics():
  white = jnp.full((1, 1, 1, 3), 255, jnp.uint8)
  np.testing.assert_allclose(normalize_pixels(white)[0, 0, 0],
                             (1 - np.array([0.48145466, 0.4578275, 0.40821073]))
                             / np.array([0.26862954, 0.26130258, 0.27577711]), rtol=1e-6)


def test_bad_feature_layer_names_the_key():
  with pytest.raises(ValueError, match='model.vit.feature_layer'):
    ViT(_vit_config(feature_layer=-4), rngs=nnx.Rngs(0))


def test_position_embedding_interpolation():
  table = jax.random.normal(jax.random.key(0), (1 + 16, 8))
  np.testing.assert_array_equal(interpolate_position_embedding(table, 4, True), table)
  bigger = interpolate_position_embedding(table, 6, True)
  assert bigger.shape == (1 + 36, 8)
  np.testing.assert_array_equal(bigger[0], table[0])  # the class token's row is kept
  constant = jnp.ones((16, 8))
  np.testing.assert_allclose(interpolate_position_embedding(constant, 7, False), 1.0, atol=1e-5)
  # A ramp along the columns stays a ramp (monotone, same range up to the cubic's overshoot).
  ramp = jnp.tile(jnp.arange(4.0), 4)[:, None]
  resized = np.asarray(interpolate_position_embedding(ramp, 8, False)).reshape(8, 8)
  assert np.all(np.diff(resized, axis=1) > 0) and np.allclose(resized, resized[:1])


def test_vit_runs_at_another_resolution():
  """Images of 48x48 on a ViT configured for 32x32: position embeddings interpolated."""
  vit = nnx.eval_shape(lambda: ViT(_vit_config(use_class_token=True), rngs=nnx.Rngs(0)))
  out = nnx.eval_shape(lambda m, x: m(x), vit, jax.ShapeDtypeStruct((2, 48, 48, 3), jnp.uint8))
  assert out.shape == (2, 1 + 36, 64)
  dropped = nnx.eval_shape(lambda: ViT(_vit_config(use_class_token=True, drop_class_token=True),
                                       rngs=nnx.Rngs(0)))
  out = nnx.eval_shape(lambda m, x: m(x), dropped, jax.ShapeDtypeStruct((2, 32, 32, 3), jnp.uint8))
  assert out.shape == (2, 16, 64)


def test_named_sizes():
  config = _vit_config()
  set_size(config, 'H/14', 378)
  assert (config.width, config.depth, config.num_heads, config.mlp_dim, config.patch_size,
          config.image_size) == (1280, 32, 16, 5120, 14, 378)
  with pytest.raises(ValueError, match='unknown ViT size'):
    set_size(config, 'G/14', 224)


def test_remat_keeps_values_and_gradients():
  """A remat policy only changes what the backward pass stores, never the numbers."""
  images = _images(2)

  def loss_and_grads(**overrides):
    vit = ViT(_vit_config(scan_layers=True, **overrides), rngs=nnx.Rngs(0))
    loss = lambda m: jnp.mean(m(images) ** 2)
    return nnx.value_and_grad(loss)(vit)

  plain_loss, plain_grads = loss_and_grads(remat='none')
  remat_loss, remat_grads = loss_and_grads(remat='dots_with_no_batch_dims_saveable')
  np.testing.assert_allclose(remat_loss, plain_loss, rtol=1e-6)
  for a, b in zip(jax.tree.leaves(remat_grads), jax.tree.leaves(plain_grads)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)


def test_unknown_remat_names_the_key():
  with pytest.raises(ValueError, match='model.vit.remat'):
    ViT(_vit_config(remat='sometimes'), rngs=nnx.Rngs(0))
