"""The world itself: colours, shapes, sizes, grid positions, held-out compositions, scenes
of 1-3 objects, and their 64x64 pictures (PNG bytes).

Every part of the synthetic world draws from its own seeded stream (`stream_rng`), so
each is reproducible on its own.
"""

from __future__ import annotations

import io

import numpy as np
from PIL import Image, ImageDraw

IMAGE_SIZE = 64

COLOURS = {
    'red': (220, 40, 40),
    'green': (40, 160, 60),
    'blue': (40, 80, 220),
    'yellow': (235, 200, 30),
    'purple': (140, 60, 180),
    'orange': (245, 135, 30),
    'black': (30, 30, 30),
    'pink': (245, 130, 200),
}
SHAPES = ('circle', 'square', 'triangle', 'diamond', 'cross')
PLURALS = {'circle': 'circles', 'square': 'squares', 'triangle': 'triangles',
           'diamond': 'diamonds', 'cross': 'crosses'}
SIZES = {'small': 7, 'large': 10}  # radius in pixels at 64x64 (about 7 / 10 px at 32x32)
# The 3x3 grid, row-major: cell index = 3 * row + column.
POSITIONS = ('top left', 'top', 'top right', 'left', 'centre', 'right',
             'bottom left', 'bottom', 'bottom right')
NUMBER_WORDS = ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight',
                'nine', 'ten', 'eleven', 'twelve')
CORNERS = {'circle': 0, 'square': 4, 'triangle': 3, 'diamond': 4, 'cross': 12}
NUM_HELD_OUT = 4

# Independent random streams, so that each part is reproducible on its own.
_STREAMS = {'held_out': 0, 'captions': 1, 'interleaved': 2, 'text': 3,
            'coco_val': 10, 'coco_support': 11, 'vqa_val': 12, 'vqa_support': 13}


def stream_rng(seed: int, stream: str) -> np.random.Generator:
  return np.random.default_rng([seed, _STREAMS[stream]])


def choose(rng, options):
  return options[int(rng.integers(len(options)))]


# ----------------------------------------------------------------------------- the world


def choose_held_out(seed: int) -> list[tuple[str, str]]:
  """Colour-shape pairs kept out of every training source (distinct colours and shapes)."""
  rng = stream_rng(seed, 'held_out')
  colours = rng.permutation(list(COLOURS))[:NUM_HELD_OUT]
  shapes = rng.permutation(list(SHAPES))[:NUM_HELD_OUT]
  return sorted((str(c), str(s)) for c, s in zip(colours, shapes))


class Pairs:
  """Which colour-shape pairs a split may draw."""

  def __init__(self, held_out, include_held_out: bool):
    held_out = set(map(tuple, held_out))
    self.held_out = sorted(held_out)
    self.allowed = [(c, s) for c in COLOURS for s in SHAPES
                    if include_held_out or (c, s) not in held_out]

  def sample(self, rng, exclude=()):
    options = [p for p in self.allowed if p not in exclude]
    return choose(rng, options)


def sample_scene(rng, pairs: Pairs, force_pair=None) -> list[dict]:
  """1-3 objects in distinct grid cells. Objects that share colour and shape form a group
  of the same size ("two red circles"); otherwise every colour-shape pair is unique."""
  kind = rng.random()
  if kind < 0.4:
    group_sizes = [1]
  elif kind < 0.7:
    group_sizes = [1] * int(rng.integers(2, 4))
  elif kind < 0.85:
    group_sizes = [int(rng.integers(2, 4))]
  else:
    group_sizes = [2, 1]
  cells = rng.permutation(9)[:sum(group_sizes)]
  objects, used_pairs, next_cell = [], [], 0
  for group_index, count in enumerate(group_sizes):
    if group_index == 0 and force_pair is not None:
      pair = tuple(force_pair)
    else:
      pair = pairs.sample(rng, exclude=used_pairs)
    used_pairs.append(pair)
    size = choose(rng, list(SIZES))
    for _ in range(count):
      objects.append({'colour': pair[0], 'shape': pair[1], 'size': size,
                      'cell': int(cells[next_cell])})
      next_cell += 1
  return objects


def draw_png(objects: list[dict], rng) -> bytes:
  """The scene as PNG bytes (deterministic for a given rng state)."""
  background = tuple(int(v) for v in 255 - rng.integers(0, 18, size=3))
  image = Image.new('RGB', (IMAGE_SIZE, IMAGE_SIZE), background)
  draw = ImageDraw.Draw(image)
  cell_size = IMAGE_SIZE / 3
  for obj in objects:
    row, column = divmod(obj['cell'], 3)
    jitter = rng.integers(-1, 2, size=2)
    cx = (column + 0.5) * cell_size + jitter[0]
    cy = (row + 0.5) * cell_size + jitter[1]
    r = SIZES[obj['size']]
    fill = tuple(int(np.clip(v + rng.integers(-12, 13), 0, 255))
                 for v in COLOURS[obj['colour']])
    shape = obj['shape']
    if shape == 'circle':
      draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == 'square':
      h = 0.85 * r
      draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
    elif shape == 'triangle':
      draw.polygon([(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)], fill=fill)
    elif shape == 'diamond':
      draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    else:  # cross
      w = max(2.0, 0.35 * r)
      draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
      draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
  buffer = io.BytesIO()
  image.save(buffer, format='PNG')
  return buffer.getvalue()


# ------------------------------------------------------------------------------ language
