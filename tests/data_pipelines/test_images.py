"""data_pipelines/images.py: the pixel bound, 16-bit modes and the skip reasons."""

import io
import tracemalloc

import numpy as np
import pytest
from PIL import Image

from data_pipelines import images
from data_pipelines.documents import load_image


def _encode(pil: Image.Image, fmt: str = 'PNG') -> bytes:
  buffer = io.BytesIO()
  pil.save(buffer, format=fmt)
  return buffer.getvalue()


def test_sixteen_bit_greyscale_png_is_scaled_not_saturated():
  ramp = np.linspace(0, 65535, 64 * 64).reshape(64, 64).astype(np.uint16)
  data = _encode(Image.fromarray(ramp))
  assert Image.open(io.BytesIO(data)).mode.startswith('I')
  # What PIL's own conversion does to it: everything above 255 saturates to white.
  assert np.mean(np.asarray(Image.open(io.BytesIO(data)).convert('RGB')) == 255) > 0.99
  rgb = np.asarray(images.open_image(data))
  assert rgb.shape == (64, 64, 3) and rgb.dtype == np.uint8
  np.testing.assert_array_equal(rgb[..., 0], rgb[..., 2])
  expected = np.round(ramp.astype(np.float64) * 255 / 65535)
  np.testing.assert_allclose(rgb[..., 0], expected, atol=1)


def test_oversized_image_is_refused_from_its_header_before_decoding():
  # 12000 x 12000 one-bit pixels: a small PNG that decodes to 144 M pixels.
  data = _encode(Image.new('1', (12000, 12000)))
  assert len(data) < 1_000_000
  tracemalloc.start()
  with pytest.raises(images.ImageError) as error:
    images.open_image(data, max_pixels=2**25)
  _, peak = tracemalloc.get_traced_memory()
  tracemalloc.stop()
  assert error.value.reason == images.TOO_LARGE
  assert peak < 50 * 2**20
  assert images.check_image(data, max_pixels=2**25) == images.TOO_LARGE
  with pytest.raises(images.ImageError, match='max_image_pixels'):
    load_image(data, 16, max_pixels=2**25)


def test_bound_is_inclusive_and_zero_disables_it():
  data = _encode(Image.new('RGB', (40, 25), (10, 20, 30)))
  assert images.check_image(data, max_pixels=1000) is None
  assert images.check_image(data, max_pixels=999) == images.TOO_LARGE
  assert images.check_image(data, max_pixels=0) is None


@pytest.mark.parametrize('data, reason', [
    (b'', images.EMPTY),
    (b'not an image at all', images.UNDECODABLE),
])
def test_unusable_bytes_name_their_reason(data, reason):
  assert images.check_image(data) == reason


def test_truncated_png_is_undecodable():
  noise = np.random.default_rng(0).integers(0, 256, (64, 64, 3), np.uint8)
  data = _encode(Image.fromarray(noise))
  assert images.check_image(data) is None
  assert images.check_image(data[:len(data) // 2]) == images.UNDECODABLE


def test_float_images_are_refused_as_unsupported():
  data = _encode(Image.fromarray(np.ones((8, 8), np.float32)), 'TIFF')
  assert images.check_image(data) == images.UNSUPPORTED_MODE


def test_palette_and_alpha_images_keep_their_colours():
  rgba = Image.new('RGBA', (8, 8), (200, 100, 50, 255))
  np.testing.assert_array_equal(np.asarray(images.open_image(_encode(rgba)))[0, 0],
                                [200, 100, 50])
  palette = rgba.convert('RGB').convert('P', palette=Image.Palette.ADAPTIVE)
  np.testing.assert_array_equal(np.asarray(images.open_image(_encode(palette)))[0, 0],
                                [200, 100, 50])
