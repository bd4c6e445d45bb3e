"""Records and user parts become Documents with exact layouts; bad records become Skipped."""

import io
import pickle
import struct
import zlib

import numpy as np
import pytest
from PIL import Image

from data_pipelines import skip_reasons
from data_pipelines.documents import (Document, RecordToDocument, Skipped, encode_parts,
                                      load_image)
from tests.data_pipelines.conftest import IMAGE_SIZE, IMAGE_TOKEN_ID, NUM_IMAGE_TOKENS

K = NUM_IMAGE_TOKENS


def png_bytes(pixels: np.ndarray, mode: str | None = None) -> bytes:
  buffer = io.BytesIO()
  Image.fromarray(pixels, mode=mode).save(buffer, format='PNG')
  return buffer.getvalue()


def three_bands(height: int, width: int) -> np.ndarray:
  """Red | green | blue vertical bands: a centre crop of a wide image is all green."""
  pixels = np.zeros((height, width, 3), np.uint8)
  third = width // 3
  pixels[:, :third, 0] = 255
  pixels[:, third:2 * third, 1] = 255
  pixels[:, 2 * third:, 2] = 255
  return pixels


def make(kind, tokenizer, **kwargs):
  return RecordToDocument(kind, tokenizer, image_size=IMAGE_SIZE, num_image_tokens=K,
                          image_token_id=IMAGE_TOKEN_ID, **kwargs)


def claims_size(png: bytes, width: int, height: int) -> bytes:
  """The PNG with a header that claims width x height (its pixel data stays small)."""
  header = b'IHDR' + struct.pack('>II', width, height) + png[24:29]
  return png[:12] + header + struct.pack('>I', zlib.crc32(header)) + png[33:]


def test_load_image_resizes_shorter_side_and_centre_crops():
  image = load_image(png_bytes(three_bands(32, 96)), IMAGE_SIZE)
  assert image.dtype == np.uint8 and image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3)
  centre = image[:, 2:-2].astype(int)  # away from the resampled band edges
  assert np.all(centre[..., 1] > 200) and np.all(centre[..., 0] < 60)
  assert np.all(centre[..., 2] < 60)


def test_load_image_converts_any_mode_to_rgb():
  gray = np.full((20, 10), 128, np.uint8)
  rgba = np.zeros((20, 20, 4), np.uint8)
  for source in (png_bytes(gray), png_bytes(rgba), Image.fromarray(gray), gray, rgba[..., :3]):
    image = load_image(source, IMAGE_SIZE)
    assert image.shape == (IMAGE_SIZE, IMAGE_SIZE, 3) and image.dtype == np.uint8


def test_caption_layout(tokenizer):
  record = {'id': 'c', 'image': png_bytes(three_bands(20, 30)), 'caption': ' a red star '}
  document = make('captions', tokenizer).map(record)
  expected = ([tokenizer.bos_id] + [IMAGE_TOKEN_ID] * K + tokenizer.encode('a red star')
              + [tokenizer.eos_id])
  assert document.tokens.dtype == np.int32
  assert document.tokens.tolist() == expected
  assert document.images.shape == (1, IMAGE_SIZE, IMAGE_SIZE, 3)


def test_interleaved_layout_keeps_order_and_joins_texts(tokenizer):
  a, b = png_bytes(three_bands(20, 30)), png_bytes(np.zeros((8, 8, 3), np.uint8))
  record = {'id': 'd', 'texts': ['one red', '', 'two', 'blue', '', 'end'],
            'images': [b'', a, b'', b'', b, b'']}
  document = make('interleaved', tokenizer).map(record)
  expected = ([tokenizer.bos_id] + tokenizer.encode('one red') + [IMAGE_TOKEN_ID] * K
              + tokenizer.encode('two blue') + [IMAGE_TOKEN_ID] * K + tokenizer.encode('end')
              + [tokenizer.eos_id])
  assert document.tokens.tolist() == expected
  assert document.num_images == 2
  np.testing.assert_array_equal(document.images[0], load_image(a, IMAGE_SIZE))
  np.testing.assert_array_equal(document.images[1], load_image(b, IMAGE_SIZE))


def test_text_layout(tokenizer):
  document = make('text', tokenizer).map({'id': 't', 'text': 'three blue circles'})
  assert document.tokens.tolist() == ([tokenizer.bos_id] + tokenizer.encode('three blue circles')
                                      + [tokenizer.eos_id])
  assert document.images.shape == (0, IMAGE_SIZE, IMAGE_SIZE, 3)


def test_literal_image_token_in_text_cannot_forge_a_placeholder(tokenizer):
  document = make('text', tokenizer).map({'id': 't', 'text': 'look <image> here'})
  assert IMAGE_TOKEN_ID not in document.tokens.tolist()


@pytest.mark.parametrize('kind,record,slug', [
    ('captions', {'id': 'x', 'image': b'garbage bytes', 'caption': 'a red star'},
     skip_reasons.UNDECODABLE_IMAGE),
    ('captions', {'id': 'x', 'image': png_bytes(three_bands(30, 30))[:60], 'caption': 'red'},
     skip_reasons.UNDECODABLE_IMAGE),
    ('captions', {'id': 'x', 'image': b'', 'caption': 'red'}, skip_reasons.EMPTY_IMAGE),
    ('captions', {'id': 'x', 'image': png_bytes(three_bands(30, 30)), 'caption': '  '},
     skip_reasons.EMPTY_TEXT),
    ('interleaved', {'id': 'x', 'texts': ['', ''], 'images': [b'junk', b'']},
     skip_reasons.EMPTY_DOCUMENT),
    ('interleaved', {'id': 'x', 'texts': ['  ', ''], 'images': [b'', b'']},
     skip_reasons.EMPTY_DOCUMENT),
    ('interleaved', {'id': 'x', 'texts': [], 'images': []}, skip_reasons.EMPTY_DOCUMENT),
    ('text', {'id': 'x', 'text': ''}, skip_reasons.EMPTY_TEXT),
    ('text', {'id': 'x', 'text': ' \n '}, skip_reasons.EMPTY_TEXT),
])
def test_unusable_records_become_skipped(tokenizer, kind, record, slug):
  result = make(kind, tokenizer).map(record)
  assert isinstance(result, Skipped) and 'x' in result.reason
  assert result.slug == slug and slug in skip_reasons.REASONS


def test_a_bad_image_costs_that_image_not_the_document(tokenizer):
  a, b = png_bytes(three_bands(20, 30)), png_bytes(np.zeros((8, 8, 3), np.uint8))
  truncated = png_bytes(three_bands(30, 30))[:60]
  record = {'id': 'd', 'texts': ['one red', '', 'two', '', 'blue', '', '', 'end'],
            'images': [b'', a, b'', b'not an image', b'', truncated, b, b'']}
  document = make('interleaved', tokenizer).map(record)
  assert isinstance(document, Document)
  # The bad images and their placeholders are gone; the texts around them are joined.
  expected = ([tokenizer.bos_id] + tokenizer.encode('one red') + [IMAGE_TOKEN_ID] * K
              + tokenizer.encode('two blue') + [IMAGE_TOKEN_ID] * K + tokenizer.encode('end')
              + [tokenizer.eos_id])
  assert document.tokens.tolist() == expected
  assert document.num_images == 2 == document.tokens.tolist().count(IMAGE_TOKEN_ID) // K
  np.testing.assert_array_equal(document.images[0], load_image(a, IMAGE_SIZE))
  np.testing.assert_array_equal(document.images[1], load_image(b, IMAGE_SIZE))
  assert document.dropped_images == {skip_reasons.UNDECODABLE_IMAGE: 2}


def test_oversized_images_are_dropped_by_reason_without_decoding(tokenizer):
  small = png_bytes(three_bands(20, 24))  # 480 pixels
  # Claims 12000 x 12000 pixels: decoding it would fail (the data is 20 x 24), so a
  # refusal for its size shows that the header alone decided.
  huge = claims_size(small, 12000, 12000)
  assert struct.unpack('>II', huge[16:24]) == (12000, 12000)
  record = {'id': 'd', 'texts': ['big', '', 'small', '', 'end'],
            'images': [b'', huge, b'', small, b'']}
  document = make('interleaved', tokenizer).map(record)
  assert document.num_images == 1
  assert document.dropped_images == {skip_reasons.IMAGE_OVER_MAX_PIXELS: 1}
  caption = make('captions', tokenizer).map({'id': 'c', 'image': huge, 'caption': 'big'})
  assert isinstance(caption, Skipped) and caption.slug == skip_reasons.IMAGE_OVER_MAX_PIXELS
  # The bound is the configured one (data.max_image_pixels); 0 disables it.
  bounded = make('interleaved', tokenizer, max_pixels=479).map(record)
  assert bounded.num_images == 0
  assert bounded.dropped_images == {skip_reasons.IMAGE_OVER_MAX_PIXELS: 2}
  unbounded = make('captions', tokenizer, max_pixels=0).map(
      {'id': 'c', 'image': small, 'caption': 'small'})
  assert isinstance(unbounded, Document)
  with pytest.raises(ValueError, match='max_image_pixels'):
    encode_parts(['x', small], tokenizer, image_size=IMAGE_SIZE, num_image_tokens=K,
                 max_pixels=479)


def test_encode_parts_for_inference(tokenizer):
  pil = Image.fromarray(three_bands(20, 30))
  array = np.zeros((10, 10, 3), np.uint8)
  document = encode_parts(['Question:', pil, array, 'how many?'], tokenizer,
                          image_size=IMAGE_SIZE, num_image_tokens=K)
  assert isinstance(document, Document)
  expected = ([tokenizer.bos_id] + tokenizer.encode('Question:') + [IMAGE_TOKEN_ID] * 2 * K
              + tokenizer.encode('how many?'))
  assert document.tokens.tolist() == expected  # no eos: generation continues the prompt
  assert document.num_images == 2
  with_eos = encode_parts(['hi'], tokenizer, image_size=IMAGE_SIZE, num_image_tokens=K,
                          add_eos=True)
  assert with_eos.tokens[-1] == tokenizer.eos_id
  with pytest.raises((ValueError, OSError)):
    encode_parts(['x', b'not an image'], tokenizer, image_size=IMAGE_SIZE, num_image_tokens=K)
  with pytest.raises(ValueError):
    encode_parts(['x', 3.5], tokenizer, image_size=IMAGE_SIZE, num_image_tokens=K)


def test_record_to_document_is_picklable(tokenizer):
  restored = pickle.loads(pickle.dumps(make('text', tokenizer)))
  assert restored.map({'id': 't', 'text': 'red'}).tokens.tolist() == (
      [tokenizer.bos_id] + tokenizer.encode('red') + [tokenizer.eos_id])
