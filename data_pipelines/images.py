"""Decoding encoded image bytes safely: one owner for the pixel bound, modes and skip reasons.

Both the importers (a decode check when a dataset is written) and the training input (the
decode of every draw) open images here, so the two agree on which images are usable and
why an image is not. `open_image` reads the header first and refuses an image whose
width x height exceeds the pixel bound before any pixel is decoded (a 12000x12000 PNG of
450 KB would otherwise decode to over 400 MB), forces the whole decode so that truncated
files fail here, and maps every mode to 8-bit RGB without clipping: 16-bit greyscale
('I;16*', 'I') is scaled down by its bit depth rather than converted (which saturates to
white), and palette or alpha images are converted as PIL does.

Failures raise `ImageError`, whose `reason` is one of REASONS: a short, stable phrase that
import reports and the training metrics count by.
"""

from __future__ import annotations

import io
import warnings

import numpy as np
from PIL import Image

# 2**25 pixels (e.g. 5792 x 5792): far above any training resolution, far below what
# would exhaust a worker's memory. Config key `data.max_image_pixels`, importer flag
# `--max-image-pixels`.
DEFAULT_MAX_IMAGE_PIXELS = 2**25

EMPTY = 'empty image'
UNDECODABLE = 'undecodable image'
TOO_LARGE = 'image over max_image_pixels'
UNSUPPORTED_MODE = 'unsupported image mode'
REASONS = (EMPTY, UNDECODABLE, TOO_LARGE, UNSUPPORTED_MODE)

# Modes PIL converts to RGB without loss of meaning ('P', 'LA', 'CMYK', ...); the
# integer modes of 16-bit files are handled by `_to_8bit`.
_SIXTEEN_BIT_MODES = ('I;16', 'I;16L', 'I;16B', 'I;16N', 'I')


class ImageError(ValueError):
  """An image that cannot be used; `reason` is one of REASONS."""

  def __init__(self, reason: str, detail: str = ''):
    assert reason in REASONS, reason
    self.reason = reason
    super().__init__(f'{reason}: {detail}' if detail else reason)


def _to_8bit(pil: Image.Image) -> Image.Image:
  """A 16-bit (or 32-bit integer) greyscale image as 8-bit 'L', scaled, not clipped."""
  array = np.asarray(pil)
  if pil.mode == 'I':
    # PNG gives 'I' for 16-bit greyscale in some Pillow versions; values fit 16 bits.
    if array.min(initial=0) < 0 or array.max(initial=0) > 65535:
      raise ImageError(UNSUPPORTED_MODE, f"32-bit integer pixels in mode 'I'")
  scaled = (array.astype(np.uint32) * 255 + 32767) // 65535
  return Image.fromarray(scaled.astype(np.uint8), mode='L')


def open_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS,
               draft_size: int | None = None) -> Image.Image:
  """Decodes encoded image bytes into an 8-bit RGB PIL image, or raises ImageError.

  max_pixels: the largest width x height accepted (checked from the header, before the
    decode); 0 or less disables the bound.
  draft_size: lets JPEG decode at a reduced scale that still covers this side length.
  """
  if not data:
    raise ImageError(EMPTY)
  with warnings.catch_warnings():
    # PIL warns (and at twice its own limit raises) about large images: the bound here
    # is ours, checked below.
    warnings.simplefilter('ignore', Image.DecompressionBombWarning)
    try:
      pil = Image.open(io.BytesIO(bytes(data)))
    except Image.DecompressionBombError as error:
      raise ImageError(TOO_LARGE, str(error)) from None
    except (OSError, ValueError, SyntaxError) as error:
      raise ImageError(UNDECODABLE, str(error) or type(error).__name__) from None
    width, height = pil.size
    if width <= 0 or height <= 0:
      raise ImageError(UNDECODABLE, f'{width}x{height} pixels')
    if max_pixels > 0 and width * height > max_pixels:
      raise ImageError(TOO_LARGE, f'{width}x{height} = {width * height} pixels > {max_pixels}')
    if draft_size:
      pil.draft('RGB', (draft_size, draft_size))
    try:
      pil.load()  # the whole decode: truncated data fails here, not later
    except Image.DecompressionBombError as error:
      raise ImageError(TOO_LARGE, str(error)) from None
    except (OSError, ValueError, SyntaxError, EOFError) as error:
      raise ImageError(UNDECODABLE, str(error) or type(error).__name__) from None
  if pil.mode in _SIXTEEN_BIT_MODES:
    pil = _to_8bit(pil)
  elif pil.mode == 'F':
    raise ImageError(UNSUPPORTED_MODE, "floating-point pixels (mode 'F')")
  if pil.mode != 'RGB':
    pil = pil.convert('RGB')
  return pil


def check_image(data: bytes, *, max_pixels: int = DEFAULT_MAX_IMAGE_PIXELS) -> str | None:
  """None when `data` decodes to a usable image, else the reason (one of REASONS)."""
  try:
    open_image(data, max_pixels=max_pixels)
  except ImageError as error:
    return error.reason
  return None
