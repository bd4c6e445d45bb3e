"""Input pipeline throughput against bare image decoding, and packing efficiency.

    python benchmarks/pipeline.py [--rows 400] [--workers N] [--packing fill|whole]

Prints two ratios measured in this run on this machine, then the JSON they come from:

1. throughput per image: the images/s that the grain pipeline delivers at seq_len 4096
   with up to 16 images of 378x378 per row (K=144), over the images/s that bare
   decode-and-resize of the same JPEGs reaches on the same cores (a process pool), both
   measured in this run. Per image, not per row: rows hold fewer than 16 images, and a
   row-based ratio would credit the pipeline for the slots it leaves empty. Goal: >= 0.8.
2. packing: non-padding tokens over the best possible under the image budget, on the
   synthetic mix (experiments/tiny.py on a small synthetic world). Goal: >= 0.97.
"""

from __future__ import annotations

import argparse
import io
import json
import multiprocessing
import os
import sys
import tempfile
import time

import numpy as np
from PIL import Image

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

from data_pipelines import grain_pipeline, inspection, synthetic  # noqa: E402
from data_pipelines.documents import load_image  # noqa: E402
from data_pipelines.sources import write_source  # noqa: E402
from data_pipelines.tokenizer import train_tokenizer  # noqa: E402
from mm1_jax import config_lib  # noqa: E402

IMAGE_SIZE, NUM_TOKENS, SEQ_LEN, MAX_IMAGES = 378, 144, 4096, 16
WORDS = 'a photo of the red blue green cat dog on in with two small large near'.split()


def _jpegs(rng, count: int) -> list[bytes]:
  """Photo-like JPEGs (smooth gradients plus noise) of web-typical sizes."""
  images = []
  for _ in range(count):
    h, w = int(rng.integers(380, 640)), int(rng.integers(380, 640))
    y, x = np.mgrid[0:h, 0:w]
    base = np.stack([(x * c1 + y * c2) % 256 for c1, c2 in rng.uniform(0.1, 1, (3, 2))], -1)
    pixels = np.clip(base + rng.normal(0, 12, (h, w, 3)), 0, 255).astype(np.uint8)
    buffer = io.BytesIO()
    Image.fromarray(pixels).save(buffer, format='JPEG', quality=90)
    images.append(buffer.getvalue())
  return images


def _text(rng, n):
  return ' '.join(rng.choice(WORDS, n))


def _write_sources(root: str, images: list[bytes], rng) -> None:
  captions = [{'id': f'c{i}', 'image': images[i % len(images)], 'caption': _text(rng, 12)}
              for i in range(400)]
  documents = []
  for i in range(120):
    texts, parts = [], []
    for _ in range(int(rng.integers(2, 8))):
      texts += [_text(rng, int(rng.integers(20, 120))), '']
      parts += [b'', images[int(rng.integers(len(images)))]]
    documents.append({'id': f'd{i}', 'texts': texts, 'images': parts})
  write_source('captions', captions, os.path.join(root, 'captions'))
  write_source('interleaved', documents, os.path.join(root, 'interleaved'))
  train_tokenizer([_text(rng, 50) for _ in range(50)],
                  os.path.join(root, 'tokenizer', 'spm.model'), vocab_size=300)


def _config(root: str, workers: int, packing: str):
  c = config_lib.base_config()
  c.data.packing = packing
  c.model.vit.image_size, c.model.vit.patch_size = IMAGE_SIZE, 14
  c.model.connector.num_tokens = NUM_TOKENS
  c.data.root = root
  c.data.sources.captions = dict(kind='captions', path='captions')
  c.data.sources.interleaved = dict(kind='interleaved', path='interleaved')
  c.data.weights.captions = 0.5
  c.data.weights.interleaved = 0.5
  c.data.seq_len, c.data.max_images = SEQ_LEN, MAX_IMAGES
  c.data.tokenizer = 'tokenizer/spm.model'
  c.data.num_workers = workers
  c.train.batch_size = 4
  config_lib.validate(c)
  return c


def _decode(image: bytes) -> int:
  return load_image(image, IMAGE_SIZE).shape[0]


def bare_decode_images_per_s(images: list[bytes], workers: int, count: int) -> float:
  """Images/s that a process pool decodes and resizes, over `count` images."""
  work = [images[i % len(images)] for i in range(count)]
  with multiprocessing.get_context('spawn').Pool(max(workers, 1)) as pool:
    pool.map(_decode, work[:workers * 2])  # warm the workers up
    start = time.perf_counter()
    pool.map(_decode, work, chunksize=4)
    seconds = time.perf_counter() - start
  return count / seconds


def pipeline_rows_per_s(config, rows: int) -> tuple[float, float]:
  """(rows/s, valid images per row) of the training iterator over about `rows` rows."""
  iterator = grain_pipeline.make_iterator(config)
  next(iterator)
  start, seen, images = time.perf_counter(), 0, 0
  while seen < rows:
    batch = next(iterator)
    seen += len(batch['source_id'])
    images += int(batch['image_valid'].sum())
  seconds = time.perf_counter() - start
  iterator.close()
  return seen / seconds, images / seen


def synthetic_packing(root: str, packing: str) -> dict:
  from experiments import tiny  # pylint: disable=import-outside-toplevel
  config = tiny.get_config()
  config.data.packing = packing
  config.data.root = os.path.join(root, 'world')
  config.data.synthetic = False
  synthetic.generate(config.data.root, scale=0.02)
  return inspection.measure(config, rows=1000)['packing_efficiency']  # per source + 'all'


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--rows', type=int, default=400,
                      help='rows to time; fewer mostly time the prefetch that filled during warm-up')
  parser.add_argument('--workers', type=int, default=os.cpu_count())
  parser.add_argument('--packing', choices=('fill', 'whole'), default='fill',
                      help='config.data.packing for both measurements')
  args = parser.parse_args()
  rng = np.random.default_rng(0)
  with tempfile.TemporaryDirectory(prefix='mm1-bench-') as root:
    images = _jpegs(rng, 32)
    _write_sources(root, images, rng)
    config = _config(root, args.workers, args.packing)
    pipeline_rows, images_per_row = pipeline_rows_per_s(config, args.rows)
    if not images_per_row:
      raise SystemExit(f'the pipeline delivered no images in {args.rows} rows: there is '
                       'no per-image throughput to compare')
    pipeline_images = pipeline_rows * images_per_row
    bare_images = bare_decode_images_per_s(images, args.workers,
                                           int(args.rows * images_per_row))
    packing_per_source = synthetic_packing(root, args.packing)
  packing = packing_per_source['all']
  result = {
      'cores': os.cpu_count(), 'workers': args.workers, 'packing': args.packing,
      'seq_len': SEQ_LEN,
      'max_images': MAX_IMAGES, 'image_size': IMAGE_SIZE,
      'pipeline_rows_per_s': pipeline_rows, 'pipeline_images_per_row': images_per_row,
      'pipeline_images_per_s': pipeline_images, 'bare_decode_images_per_s': bare_images,
      'throughput_ratio': pipeline_images / bare_images,
      'synthetic_packing': packing_per_source,
  }
  print(f'pipeline / bare decode throughput, images/s over images/s: '
        f'{result["throughput_ratio"]:.2f}  ({images_per_row:.1f} images a row; goal >= 0.8)')
  print(f'packing efficiency on the synthetic mix, of the best under the image budget: '
        f'{packing["of_best"]:.3f}  (fill {packing["fill"]:.3f}; goal >= 0.97; per source: '
        + ', '.join(f'{name} {p["of_best"]:.3f}' for name, p in packing_per_source.items()
                    if name != 'all') + ')')
  print(json.dumps(result))


if __name__ == '__main__':
  main()
