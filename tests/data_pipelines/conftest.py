"""Shared fixtures for the data pipeline tests: tiny sources, a tiny tokenizer, a config.

Everything is written once per test session into a temporary directory. Some records are
deliberately unusable (corrupt or truncated images, empty captions and texts) so that
skipping and counting can be checked. Caption i reads 'caption number <i in words>' so
that a test can tell which record a packed segment came from.
"""

import io

import numpy as np
import pytest
from PIL import Image

from data_pipelines import packing
from data_pipelines.sources import write_source
from data_pipelines.tokenizer import train_tokenizer
from mm1_jax import config_lib

IMAGE_SIZE = 16
NUM_IMAGE_TOKENS = 4
IMAGE_TOKEN_ID = 4
SEQ_LEN = 64
MAX_IMAGES = 3
NUM_CAPTIONS = 80

WORDS = ('red green blue yellow square circle triangle star left right above below next to '
         'the a is and of with one two three four five six seven eight nine zero big small '
         'picture shows there are how many what colour answer question caption number').split()
DIGIT_WORDS = 'zero one two three four five six seven eight nine'.split()


def caption_of(index: int) -> str:
  return 'caption number ' + ' '.join(DIGIT_WORDS[int(d)] for d in str(index))


def index_of_caption(text: str) -> int:
  words = text.split()
  assert words[:2] == ['caption', 'number'], text
  return int(''.join(str(DIGIT_WORDS.index(w)) for w in words[2:]))


def encode_png(rng: np.random.Generator, height: int, width: int) -> bytes:
  pixels = rng.integers(0, 256, (height, width, 3), dtype=np.uint8)
  buffer = io.BytesIO()
  Image.fromarray(pixels).save(buffer, format='PNG')
  return buffer.getvalue()


def corrupt_image(rng: np.random.Generator, variant: int) -> bytes:
  if variant % 2:
    return b'definitely not an image'
  whole = encode_png(rng, 20, 30)
  return whole[:len(whole) // 2]  # truncated: the header parses, the pixels do not


def is_bad_caption(index: int) -> bool:
  return index % 7 == 3 or index % 11 == 5


def random_text(rng: np.random.Generator, low: int, high: int) -> str:
  return ' '.join(rng.choice(WORDS, size=int(rng.integers(low, high))))


def caption_records(rng):
  records = []
  for i in range(NUM_CAPTIONS):
    image = encode_png(rng, int(rng.integers(12, 40)), int(rng.integers(12, 40)))
    caption = caption_of(i)
    if i % 7 == 3:
      image = corrupt_image(rng, i)
    elif i % 11 == 5:
      caption = '   '
    records.append({'id': f'cap{i}', 'image': image, 'caption': caption})
  return records


def interleaved_records(rng, count=40):
  records = []
  for i in range(count):
    texts, images = [], []
    for _ in range(int(rng.integers(1, 7))):
      texts += [random_text(rng, 2, 25), '']
      images += [b'', encode_png(rng, 20, 24)]
    texts.append(random_text(rng, 1, 10))
    images.append(b'')
    if i % 9 == 4:
      images[1] = corrupt_image(rng, i)
    records.append({'id': f'doc{i}', 'texts': texts, 'images': images})
  return records


def text_records(rng, count=40):
  return [{'id': f'txt{i}', 'text': '' if i % 6 == 2 else random_text(rng, 5, 90)}
          for i in range(count)]


@pytest.fixture(scope='session')
def data_root(tmp_path_factory):
  root = tmp_path_factory.mktemp('mm1_data')
  rng = np.random.default_rng(1234)
  captions = caption_records(rng)
  interleaved = interleaved_records(rng)
  texts = text_records(rng)
  write_source('captions', captions, str(root / 'captions'))
  write_source('interleaved', interleaved, str(root / 'interleaved'))
  write_source('text', texts, str(root / 'text'))
  write_source('captions', [{'id': f'bad{i}', 'image': corrupt_image(rng, i), 'caption': 'x'}
                            for i in range(5)], str(root / 'all_bad'))
  corpus = [r['caption'] for r in captions] + [t for r in interleaved for t in r['texts']]
  corpus += [r['text'] for r in texts] + [' '.join(WORDS)] * 5
  train_tokenizer(corpus, str(root / 'tokenizer' / 'spm.model'), vocab_size=300)
  return root


@pytest.fixture(scope='session')
def tokenizer(data_root):
  from data_pipelines.tokenizer import Tokenizer  # pylint: disable=g-import-not-at-top
  return Tokenizer(str(data_root / 'tokenizer' / 'spm.model'))


@pytest.fixture
def config(data_root):
  return small_config(str(data_root))


def small_config(data_root: str):
  """A small valid config over the sources in data_root (every source weighted)."""
  c = config_lib.base_config()
  c.model.vit.image_size = IMAGE_SIZE
  c.model.vit.patch_size = 8
  c.model.vit.width = 32
  c.model.vit.num_heads = 2
  c.model.connector.num_tokens = NUM_IMAGE_TOKENS
  c.data.root = data_root
  c.data.sources.captions = dict(kind='captions', path='captions')
  c.data.sources.interleaved = dict(kind='interleaved', path='interleaved')
  c.data.sources.text = dict(kind='text', path='text')
  c.data.weights.captions = 0.5
  c.data.weights.interleaved = 0.3
  c.data.weights.text = 0.2
  c.data.seq_len = SEQ_LEN
  c.data.max_images = MAX_IMAGES
  c.data.tokenizer = 'tokenizer/spm.model'
  c.train.batch_size = 8
  config_lib.validate(c)
  return c


def check_row(row: dict, *, seq_len: int = SEQ_LEN, max_images: int = MAX_IMAGES,
              num_image_tokens: int = NUM_IMAGE_TOKENS, image_token_id: int = IMAGE_TOKEN_ID,
              image_size: int = IMAGE_SIZE, pad_id: int = 0) -> None:
  """Asserts the batch contract (DESIGN.md section 2) for one row without batch dim."""
  expected = {
      'tokens': (np.int32, (seq_len,)), 'targets': (np.int32, (seq_len,)),
      'loss_mask': (np.float32, (seq_len,)), 'segment_ids': (np.int32, (seq_len,)),
      'positions': (np.int32, (seq_len,)),
      'images': (np.uint8, (max_images, image_size, image_size, 3)),
      'image_valid': (np.bool_, (max_images,)),
  }
  for key, (dtype, shape) in expected.items():
    assert row[key].dtype == dtype, (key, row[key].dtype)
    assert row[key].shape == shape, (key, row[key].shape)
  tokens, targets, mask = row['tokens'], row['targets'], row['loss_mask']
  segments, positions = row['segment_ids'], row['positions']

  # Segments are 1..S in order, padding (0) only at the end; positions restart.
  used = segments > 0
  assert used.any()
  assert not np.any(used[1:] & ~used[:-1]), 'padding inside the row'
  ids = segments[used]
  assert ids[0] == 1 and np.all(np.diff(ids) >= 0) and np.all(np.diff(ids) <= 1)
  for segment in np.unique(ids):
    where = np.flatnonzero(segments == segment)
    np.testing.assert_array_equal(positions[where], np.arange(len(where)))
    seg_tokens, seg_targets, seg_mask = tokens[where], targets[where], mask[where]
    np.testing.assert_array_equal(seg_targets[:-1], seg_tokens[1:])
    assert seg_targets[-1] == pad_id and seg_mask[-1] == 0, 'segment end must not count'
    is_image_target = seg_targets[:-1] == image_token_id
    np.testing.assert_array_equal(seg_mask[:-1], (~is_image_target).astype(np.float32))
    # Image runs of exactly K, never split across segments.
    packing.image_run_starts(seg_tokens, num_image_tokens=num_image_tokens,
                             image_token_id=image_token_id)
  assert np.all(tokens[~used] == pad_id) and np.all(targets[~used] == pad_id)
  assert np.all(mask[~used] == 0) and np.all(positions[~used] == 0)
  assert set(np.unique(mask)) <= {0.0, 1.0}

  runs = packing.image_run_starts(tokens, num_image_tokens=num_image_tokens,
                                  image_token_id=image_token_id)
  valid = row['image_valid']
  assert len(runs) == valid.sum() <= max_images
  assert not np.any(valid[1:] & ~valid[:-1]), 'image slots must fill from the front'
  assert np.all(row['images'][~valid] == 0)
