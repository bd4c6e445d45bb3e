"""High-resolution decomposition (data side) feeding the ViT at the crop resolution."""

import numpy as np
import pytest

from data_pipelines import high_res


def test_1344_becomes_four_672_crops_and_an_overview():
  assert high_res.num_tokens(144) == 720 and high_res.num_images() == 5
  # Small stand-in with the same geometry: 2 x 2 crops of 12 from a 24 image.
  image = np.random.default_rng(0).integers(0, 256, (24, 24, 3)).astype(np.uint8)
  parts = high_res.decompose(image, crop_size=12, grid=2)
  assert parts.shape == (5, 12, 12, 3) and parts.dtype == np.uint8
  np.testing.assert_array_equal(parts[0], image[:12, :12])
  np.testing.assert_array_equal(parts[1], image[:12, 12:])
  np.testing.assert_array_equal(parts[2], image[12:, :12])
  np.testing.assert_array_equal(parts[3], image[12:, 12:])
  # The overview is the whole image downscaled: its mean colour is the image's.
  np.testing.assert_allclose(parts[4].mean((0, 1)), image.mean((0, 1)), atol=8)
  first = high_res.decompose(image, crop_size=12, grid=2, overview_first=True)
  np.testing.assert_array_equal(first[0], parts[4])


def test_other_sizes_are_resized_and_bad_input_is_named():
  image = np.zeros((30, 50, 3), np.uint8)
  assert high_res.decompose(image, crop_size=8, grid=3).shape == (10, 8, 8, 3)
  with pytest.raises(ValueError, match='uint8'):
    high_res.decompose(np.zeros((8, 8), np.float32), crop_size=4)


def test_crops_run_through_a_vit_at_the_crop_resolution():
  """A ViT configured at 32 runs on 48x48 crops, position embeddings interpolated."""
  import jax
  from flax import nnx

  from experiments import tiny
  from mm1_jax.models.vit import ViT
  image = np.random.default_rng(1).integers(0, 256, (96, 96, 3)).astype(np.uint8)
  crops = high_res.decompose(image, crop_size=48, grid=2)
  vit = nnx.eval_shape(lambda: ViT(tiny.get_config().model.vit, rngs=nnx.Rngs(0)))
  out = nnx.eval_shape(lambda m, x: m(x), vit, jax.ShapeDtypeStruct(crops.shape, crops.dtype))
  assert out.shape == (5, 36, 64)
