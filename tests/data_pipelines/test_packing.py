"""Packing: budgets, run-safe cuts, the row contract, skip counts and exact resume."""

import grain
import numpy as np
import pytest

from data_pipelines import packing
from data_pipelines.documents import Document, Skipped
from tests.data_pipelines.conftest import (IMAGE_SIZE, IMAGE_TOKEN_ID, MAX_IMAGES,
                                           NUM_IMAGE_TOKENS, SEQ_LEN, check_row)

K = NUM_IMAGE_TOKENS
BOS, EOS = 2, 3
BUDGETS = dict(seq_len=SEQ_LEN, max_images=MAX_IMAGES, num_image_tokens=K,
               image_token_id=IMAGE_TOKEN_ID)


class DocumentMaker:
  """Documents whose images carry a unique pixel value, so that they can be traced."""

  def __init__(self, seed=0):
    self.rng = np.random.default_rng(seed)
    self.next_image = 1

  def __call__(self, text_lengths, add_eos=True) -> Document:
    """text_lengths[i] text tokens, then an image, ...; the last entry ends the document."""
    tokens, images = [BOS], []
    for i, length in enumerate(text_lengths):
      tokens += self.rng.integers(10, 200, size=length).tolist()
      if i < len(text_lengths) - 1:
        tokens += [IMAGE_TOKEN_ID] * K
        images.append(np.full((IMAGE_SIZE, IMAGE_SIZE, 3), self.next_image % 256, np.uint8))
        self.next_image += 1
    if add_eos:
      tokens.append(EOS)
    pixels = np.stack(images) if images else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    return Document(np.asarray(tokens, np.int32), pixels)


def mixed_documents(count, seed=0):
  make = DocumentMaker(seed)
  rng = np.random.default_rng(seed + 1)
  documents = []
  for i in range(count):
    shape = i % 4
    if shape == 0:  # caption-like
      documents.append(make([int(rng.integers(0, 1)), int(rng.integers(3, 12))]))
    elif shape == 1:  # text-only, sometimes longer than a row
      documents.append(make([int(rng.integers(5, 150))]))
    elif shape == 2:  # interleaved, often over both budgets
      documents.append(make([int(rng.integers(0, 30)) for _ in range(rng.integers(2, 9))]))
    else:
      documents.append(Skipped(f'bad {i}'))
  return documents


def test_split_keeps_runs_whole_and_respects_budgets():
  make = DocumentMaker()
  document = make([5, 20, 3, 0, 0, 30, 2, 50])  # 7 images, 5+20+...: far over one row
  chunks = packing.split_document(document, **BUDGETS)
  assert len(chunks) > 2
  np.testing.assert_array_equal(np.concatenate([c.tokens for c in chunks]), document.tokens)
  np.testing.assert_array_equal(np.concatenate([c.images for c in chunks]), document.images)
  for index, chunk in enumerate(chunks):
    assert len(chunk.tokens) <= SEQ_LEN and chunk.num_images <= MAX_IMAGES
    runs = packing.image_run_starts(chunk.tokens, num_image_tokens=K,
                                    image_token_id=IMAGE_TOKEN_ID)
    assert len(runs) == chunk.num_images
    assert (chunk.tokens[0] == BOS) == (index == 0)  # only the first chunk has a bos


def test_split_cuts_at_image_boundaries_for_the_image_budget():
  document = DocumentMaker()([1] * 8)  # 7 images with one token between: few tokens
  assert len(document.tokens) <= SEQ_LEN
  chunks = packing.split_document(document, **BUDGETS)
  assert [c.num_images for c in chunks] == [3, 3, 1]
  for chunk in chunks[1:]:
    assert chunk.tokens[0] == IMAGE_TOKEN_ID  # each cut falls right before an image


def test_split_moves_a_straddling_run_to_the_next_chunk():
  document = DocumentMaker()([SEQ_LEN - 3, 4])  # the run would cross position SEQ_LEN
  chunks = packing.split_document(document, **BUDGETS)
  assert len(chunks[0].tokens) == SEQ_LEN - 2 and chunks[0].num_images == 0
  assert chunks[1].tokens[:K].tolist() == [IMAGE_TOKEN_ID] * K


def pack(documents, window=packing.DEFAULT_PACKING_WINDOW):
  stream = grain.MapDataset.source(documents).to_iter_dataset()
  return packing.pack_documents(stream, window=window, **BUDGETS)


def segments_of(row):
  """(tokens, images) of each segment of a row, images found via the cumulative run count."""
  runs = packing.image_run_starts(row['tokens'], num_image_tokens=K,
                                  image_token_id=IMAGE_TOKEN_ID)
  result = []
  for segment in range(1, row['segment_ids'].max() + 1):
    where = np.flatnonzero(row['segment_ids'] == segment)
    inside = np.flatnonzero((runs >= where[0]) & (runs <= where[-1]))
    result.append((tuple(row['tokens'][where]), row['images'][inside]))
  return result


def test_packed_rows_follow_the_contract_and_keep_every_chunk():
  documents = mixed_documents(120)
  rows = list(pack(documents))
  for row in rows:
    check_row(row)
    assert row['num_skipped'].dtype == np.int32 and row['num_skipped'].shape == ()

  expected = {}
  for document in documents:
    if isinstance(document, Document):
      for chunk in packing.split_document(document, **BUDGETS):
        expected.setdefault(tuple(chunk.tokens), []).append(chunk.images)
  packed = [s for row in rows for s in segments_of(row)]
  assert len(packed) == sum(len(v) for v in expected.values())
  for tokens, images in packed:
    # The segment's images are its own document's images, in the order of its runs.
    assert any(np.array_equal(images, candidate) for candidate in expected[tokens])
  # Skipped records are counted, never silently dropped.
  assert sum(int(r['num_skipped']) for r in rows) == sum(
      isinstance(d, Skipped) for d in documents)


def test_first_fit_fills_earlier_rows():
  make = DocumentMaker()
  documents = [make([38]), make([48]), make([18])]  # 40, 50 and 20 tokens with bos/eos
  rows = list(pack(documents))
  assert len(rows) == 2  # next-fit would need three rows
  assert rows[0]['segment_ids'].max() == 2


def test_exact_resume_mid_window():
  documents = mixed_documents(60, seed=3)
  stream = grain.MapDataset.source(documents).repeat().to_iter_dataset()
  rows = packing.pack_documents(stream, **BUDGETS)
  for taken in (0, 1, 5, 13):
    iterator = iter(rows)
    for _ in range(taken):
      next(iterator)
    state = iterator.get_state()
    expected = [next(iterator) for _ in range(9)]
    resumed = iter(rows)
    resumed.set_state(state)
    for want, got in zip(expected, [next(resumed) for _ in range(9)]):
      for key in want:
        np.testing.assert_array_equal(want[key], got[key], err_msg=key)


def test_rows_from_documents_one_per_row_padded_right():
  make = DocumentMaker()
  documents = [make([3, 5], add_eos=False), make([10]), make([1, 1, 1])]
  batch = packing.rows_from_documents(documents, image_token_id=IMAGE_TOKEN_ID)
  longest = max(len(d.tokens) for d in documents)
  assert batch['tokens'].shape == (3, longest)
  assert batch['images'].shape == (3, 2, IMAGE_SIZE, IMAGE_SIZE, 3)
  assert batch['source_id'].dtype == np.int32 and batch['skipped_records'].shape == (3,)
  for i, document in enumerate(documents):
    row = {key: value[i] for key, value in batch.items()}
    check_row(row, seq_len=longest, max_images=2)
    length = len(document.tokens)
    np.testing.assert_array_equal(row['tokens'][:length], document.tokens)
    assert np.all(row['segment_ids'][:length] == 1) and np.all(row['segment_ids'][length:] == 0)
    np.testing.assert_array_equal(row['images'][:document.num_images], document.images)
  with pytest.raises(ValueError, match='tokens'):
    packing.rows_from_documents(documents, image_token_id=IMAGE_TOKEN_ID, seq_len=5)
