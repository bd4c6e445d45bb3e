"""High-resolution input, MM1's fine-tuning recipe: one large image -> grid crops + overview.

A square image of side `grid * crop_size` (1344 = 2 x 672 by default) is cut into
grid x grid non-overlapping crops of `crop_size`, in row-major order, followed by the whole
image downscaled to `crop_size` (the overview). Each of the grid*grid + 1 images is then an
ordinary image slot of the batch contract, so with K connector tokens an image costs
(grid*grid + 1) * K tokens (4 x 144 + 144 = 720 for MM1) and the ViT runs at `crop_size`
(its position embeddings interpolated to the 672 grid; see mm1_jax/models/vit.py).

Images of another size or aspect ratio are first resized (bicubic) to the square side
`grid * crop_size`, as the fixed-shape batch needs; `overview_first` puts the overview
before the crops instead of after them.

Nothing here imports mm1_jax: sizes come from the caller (the config).
"""

from __future__ import annotations

import numpy as np
from PIL import Image


def _as_pil(image) -> Image.Image:
  if isinstance(image, Image.Image):
    return image.convert('RGB')
  array = np.asarray(image)
  if array.dtype != np.uint8 or array.ndim != 3 or array.shape[-1] != 3:
    raise ValueError(f'expected a uint8 [H, W, 3] image, got {array.dtype} {array.shape}')
  return Image.fromarray(array)


def decompose(image, *, crop_size: int = 672, grid: int = 2,
              overview_first: bool = False) -> np.ndarray:
  """uint8 [grid*grid + 1, crop_size, crop_size, 3]: the crops (row-major) and the overview."""
  if crop_size < 1 or grid < 1:
    raise ValueError(f'crop_size={crop_size} and grid={grid} must be positive')
  side = grid * crop_size
  pil = _as_pil(image)
  if pil.size != (side, side):
    pil = pil.resize((side, side), Image.BICUBIC)
  full = np.asarray(pil, np.uint8)
  crops = (full.reshape(grid, crop_size, grid, crop_size, 3).transpose(0, 2, 1, 3, 4)
           .reshape(grid * grid, crop_size, crop_size, 3))
  overview = np.asarray(pil.resize((crop_size, crop_size), Image.BICUBIC), np.uint8)[None]
  parts = [overview, crops] if overview_first else [crops, overview]
  return np.concatenate(parts, axis=0)


def num_images(grid: int = 2) -> int:
  """How many image slots one high-resolution image takes."""
  return grid * grid + 1


def num_tokens(num_image_tokens: int, grid: int = 2) -> int:
  """Connector tokens of one high-resolution image (5 x 144 = 720 for MM1)."""
  return num_images(grid) * num_image_tokens
