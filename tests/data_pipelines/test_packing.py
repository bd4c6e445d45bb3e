"""Packing: budgets, run-safe cuts, the row contract, skip counts and exact resume."""

import json

import grain
import numpy as np
import pytest

from data_pipelines import cuts, fill_packing, packing, skip_reasons
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


def pack(documents, window=packing.DEFAULT_PACKING_WINDOW, **kwargs):
  stream = grain.MapDataset.source(documents).to_iter_dataset()
  return packing.pack_documents(stream, window=window, **BUDGETS, **kwargs)


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


@pytest.mark.parametrize('mode, window', [('whole', packing.DEFAULT_PACKING_WINDOW),
                                          ('fill', 4)])
def test_exact_resume_mid_window(mode, window):
  documents = mixed_documents(60, seed=3)
  stream = grain.MapDataset.source(documents).repeat().to_iter_dataset()
  rows = packing.pack_documents(stream, mode=mode, window=window, **BUDGETS)
  for taken in (0, 1, 5, 13):
    iterator = iter(rows)
    for _ in range(taken):
      next(iterator)
    state = json.loads(json.dumps(iterator.get_state()))  # as the checkpoint stores it
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


# Fill packing (data.packing='fill'): documents are cut to fill rows.

class UniqueDocuments:
  """Documents whose text tokens and images are unique over the whole stream, so that a
  packed segment tells which document and which offset it came from."""

  def __init__(self):
    self.documents = []
    self.place = {}  # text token or ('image', id) -> (document index, token offset)
    self.next_token, self.next_image = 10, 1

  def __call__(self, text_lengths) -> Document:
    index = len(self.documents)
    tokens, images = [], []
    for i, length in enumerate(text_lengths):
      for _ in range(length):
        self.place[self.next_token] = (index, len(tokens))
        tokens.append(self.next_token)
        self.next_token += 1
      if i < len(text_lengths) - 1:
        self.place[('image', self.next_image)] = (index, len(tokens))
        tokens += [IMAGE_TOKEN_ID] * K
        pixels = np.zeros((IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
        pixels[0, 0, :2] = self.next_image % 256, self.next_image // 256
        images.append(pixels)
        self.next_image += 1
    pixels = np.stack(images) if images else np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)
    self.documents.append(Document(np.asarray(tokens, np.int32), pixels))
    return self.documents[-1]

  def origin(self, tokens, images) -> tuple[int, int]:
    """(document, offset) of a packed segment."""
    if tokens[0] != IMAGE_TOKEN_ID:
      return self.place[int(tokens[0])]
    return self.place[('image', int(images[0, 0, 0, 0]) + 256 * int(images[0, 0, 0, 1]))]


def unique_mix(count, seed=0):
  """Captions, texts up to 2.5 rows long, image-dense documents and Skipped markers."""
  make, rng = UniqueDocuments(), np.random.default_rng(seed)
  stream = []
  for i in range(count):
    shape = i % 5
    if shape == 0:
      make([0, int(rng.integers(3, 12))])
    elif shape == 1:
      make([int(rng.integers(1, 160))])
    elif shape in (2, 3):  # often over the image budget of a row, sometimes over both
      make([int(rng.integers(0, 30)) for _ in range(rng.integers(2, 9))])
    if shape == 4:
      stream.append(Skipped(f'bad {i}'))
    else:
      stream.append(make.documents[-1])
  return make, stream


@pytest.mark.parametrize('long_documents', ['split', 'truncate'])
def test_fill_packing_keeps_every_token_once_in_run_safe_pieces(long_documents):
  make, stream = unique_mix(200)
  rows = list(pack(stream, mode='fill', window=4, long_documents=long_documents))
  covered = {i: np.zeros(len(d.tokens), int) for i, d in enumerate(make.documents)}
  for row in rows:
    check_row(row)  # budgets, segment ids, positions from 0, targets, loss mask, whole runs
    for tokens, images in segments_of(row):
      index, start = make.origin(tokens, images)
      document = make.documents[index]
      # A piece is a contiguous part of one document with exactly that part's images.
      np.testing.assert_array_equal(tokens, document.tokens[start:start + len(tokens)])
      first_image = int(np.sum(document.tokens[:start] == IMAGE_TOKEN_ID)) // K
      np.testing.assert_array_equal(images,
                                    document.images[first_image:first_image + len(images)])
      if start:  # a cut is never inside an image run
        assert not (document.tokens[start - 1] == IMAGE_TOKEN_ID == document.tokens[start]
                    and np.sum(document.tokens[:start] == IMAGE_TOKEN_ID) % K)
      covered[index][start:start + len(tokens)] += 1
  cut_pieces = sum(row['segment_ids'].max() for row in rows) - len(make.documents)
  assert cut_pieces > 0, 'nothing was cut: the test documents do not exercise fill packing'
  for index, document in enumerate(make.documents):
    kept = len(document.tokens)
    if long_documents == 'truncate':
      kept = len(packing.split_document(document, **BUDGETS)[0].tokens)
    np.testing.assert_array_equal(covered[index][:kept], 1)  # every token exactly once
    np.testing.assert_array_equal(covered[index][kept:], 0)
  assert sum(int(r['num_skipped']) for r in rows) == sum(isinstance(d, Skipped) for d in stream)


def test_fill_packing_leaves_less_than_two_min_pieces_of_text_rows_empty():
  # Text can be cut anywhere: a window is emitted only when the piece in hand fits no row
  # whole and no row can take a min_piece_tokens head of it (leaving such a tail).
  make, rng, min_piece = UniqueDocuments(), np.random.default_rng(5), 4
  documents = [make([int(rng.integers(1, 150))]) for _ in range(100)]
  for mode, window in (('whole', 32), ('fill', 4)):
    stream = grain.MapDataset.source(documents).repeat().to_iter_dataset()
    rows = packing.pack_documents(stream, mode=mode, window=window, min_piece_tokens=min_piece,
                                  **BUDGETS)
    iterator = iter(rows)
    padding = [int(np.sum(next(iterator)['segment_ids'] == 0)) for _ in range(60)]
    if mode == 'whole':
      assert max(padding) >= 2 * min_piece  # the bound below is fill packing's doing
    else:
      assert max(padding) < 2 * min_piece, padding


def test_fill_packing_cuts_before_a_run_that_does_not_fit():
  make = UniqueDocuments()
  first = make([SEQ_LEN - 8])  # leaves 8 tokens of room
  second = make([5, 20])  # 5 text tokens, a run of K, 20 text tokens
  rows = list(pack([first, second], mode='fill', window=1, min_piece_tokens=2))
  # 5 + K > 8: the room takes the 5 text tokens only, the run opens the next row.
  assert rows[0]['segment_ids'].max() == 2 and rows[0]['image_valid'].sum() == 0
  np.testing.assert_array_equal(rows[0]['tokens'][SEQ_LEN - 8:SEQ_LEN - 3], second.tokens[:5])
  assert rows[0]['loss_mask'][SEQ_LEN - 4] == 0  # the cut costs the target across it
  np.testing.assert_array_equal(rows[1]['tokens'][:K + 20], second.tokens[5:])
  assert rows[1]['positions'][0] == 0 and rows[1]['image_valid'].sum() == 1
  np.testing.assert_array_equal(rows[1]['images'][0], second.images[0])


@pytest.mark.parametrize('room_tokens, room_images, min_piece, expected', [
    (100, 5, 1, 30),  # the whole document fits
    (12, 5, 1, 12),  # text: cut at the room
    (7, 5, 1, 5),  # the run at 5..8 does not fit 7 tokens: cut before it
    (9, 5, 1, 9),  # a cut right after the run
    (20, 1, 1, 16),  # only one run allowed: cut before the second (at 16)
    (20, 0, 1, 5),  # no image allowed: the text before the first run
    (4, 0, 5, 0),  # a head shorter than min_piece: no cut
    (29, 5, 3, 27),  # the tail keeps min_piece tokens
    (29, 5, 12, 16),  # ... and a tail of 12 would start inside the run at 16: before it
])
def test_largest_cut(room_tokens, room_images, min_piece, expected):
  # 30 tokens: text 0..4, run 5..8, text 9..15, run 16..19, text 20..29.
  runs, length = [5, 16], 30
  cut = fill_packing.largest_cut(runs, length, room_tokens=room_tokens,
                                 room_images=room_images, num_image_tokens=K,
                                 min_head=min_piece, min_tail=min_piece if room_tokens < 30
                                 else 0)
  assert cut == expected


def test_fill_packing_rejects_a_whole_packing_state():
  stream = grain.MapDataset.source(mixed_documents(12)).repeat().to_iter_dataset()
  whole = iter(packing.pack_documents(stream, mode='whole', **BUDGETS))
  next(whole)
  fill = iter(packing.pack_documents(stream, mode='fill', **BUDGETS))
  with pytest.raises(ValueError, match="data.packing='whole'"):
    fill.set_state(whole.get_state())


# Image-heavy documents: every piece of every row carries loss tokens (cuts.py).

def image_heavy_documents():
  """200-image documents of several shapes, as interleaved sources deliver them."""
  make = DocumentMaker(seed=7)
  return [
      make([5] + [0] * 199 + [5]),  # one run of 200 consecutive images inside text
      make([2] * 201),  # image, two text tokens, image, ...
      make([0] * 201),  # only images: bos, 200 images, eos
      make([0] * 100 + [1] + [0] * 99 + [0]),  # two runs of 100 split by one text token
      make([40, 0, 0, 0, 0, 30]),  # a short run of 5 next to long texts
  ]


@pytest.mark.parametrize('mode', ['whole', 'fill'])
def test_image_heavy_documents_make_rows_that_all_carry_loss(mode):
  documents = image_heavy_documents()
  rows = list(pack(documents, window=4, mode=mode))
  for row in rows:
    check_row(row)
    assert row['loss_mask'].sum() > 0, 'a row without a single loss token'
    for tokens, _ in segments_of(row):
      assert tokens[-1] != IMAGE_TOKEN_ID, 'an image without text after it in its segment'
  images_in = sum(d.num_images for d in documents)
  images_out = sum(int(r['image_valid'].sum()) for r in rows)
  dropped = sum(r[skip_reasons.DROPPED_KEY] for r in rows)
  assert skip_reasons.as_dict(dropped) == {skip_reasons.ROW_FULL: images_in - images_out}
  assert images_out > 200  # only the surplus of long runs of consecutive images goes
  text_in = sum(int(np.sum(d.tokens != IMAGE_TOKEN_ID)) for d in documents)
  assert sum(int(np.sum((r['tokens'] != IMAGE_TOKEN_ID) & (r['segment_ids'] > 0)))
             for r in rows) == text_in  # all text is kept


def test_a_cut_keeps_each_image_with_the_text_after_it():
  make = DocumentMaker()
  # Whole packing: the row ends right after an image run; the image goes with its text.
  document = make([SEQ_LEN - 5, 10])  # bos, 59 text tokens, an image at 60..63, text, eos
  chunks = packing.split_document(document, **BUDGETS)
  assert len(chunks[0].tokens) == SEQ_LEN - 4 and chunks[0].num_images == 0
  assert chunks[1].tokens[:K].tolist() == [IMAGE_TOKEN_ID] * K
  # Fill packing: a row with room for one more image does not take an image without the
  # text after it (that head would be [text, image]: no loss token, an image for nothing).
  make = UniqueDocuments()
  first = make([20, 0, 10])  # two images: the row keeps room for one
  second = make([1, 0, 20])  # one text token, two images, text
  rows = list(pack([first, second], mode='fill', window=1, min_piece_tokens=1))
  for row in rows:
    for tokens, _ in segments_of(row):
      assert tokens[-1] != IMAGE_TOKEN_ID and cuts.has_target(np.asarray(tokens),
                                                              IMAGE_TOKEN_ID)


def test_fit_images_keeps_the_images_next_to_their_text():
  make = DocumentMaker()
  document = make([3] + [0] * 5 + [4])  # bos, 3 text, 6 consecutive images, 4 text, eos
  fitted, dropped = cuts.fit_images(document, **BUDGETS)
  assert dropped == 3 and fitted.num_images == MAX_IMAGES
  np.testing.assert_array_equal(fitted.images, document.images[3:])  # the last three
  expected = np.concatenate([document.tokens[:4], [IMAGE_TOKEN_ID] * 3 * K,
                             document.tokens[-5:]])
  np.testing.assert_array_equal(fitted.tokens, expected)
  # Images after the last text token keep only what the last row has room for.
  trailing = make([3, 0, 1, 0, 0, 0, 0], add_eos=False)  # text, 2 images, text, 4 images
  fitted, dropped = cuts.fit_images(trailing, **BUDGETS)
  assert (fitted.num_images, dropped) == (3, 3)
  np.testing.assert_array_equal(fitted.images, trailing.images[:3])
  assert cuts.fit_images(make([3, 2, 1]), **BUDGETS)[1] == 0  # nothing to drop


def count_stream(count, seed=0):
  """Documents, image-heavy documents, documents without targets and Skipped markers of
  every record reason, some documents carrying images dropped at decode time."""
  make, rng = DocumentMaker(seed), np.random.default_rng(seed)
  record_reasons = [r for r in skip_reasons.REASONS
                    if r not in (skip_reasons.ROW_FULL, skip_reasons.NO_LOSS_TOKENS)]
  stream = []
  for i in range(count):
    shape = i % 6
    if shape == 0:
      stream.append(Skipped(f'bad {i}', record_reasons[i // 6 % len(record_reasons)],
                            {skip_reasons.UNDECODABLE_IMAGE: 1} if i % 4 == 0 else {}))
    elif shape == 1:
      stream.append(Document(make([0] * 8).tokens, make([0] * 8).images,
                             {skip_reasons.EMPTY_IMAGE: 2}))  # 7 consecutive images
    elif shape == 2:
      stream.append(Document(np.asarray([BOS], np.int32),
                             np.zeros((0, IMAGE_SIZE, IMAGE_SIZE, 3), np.uint8)))  # no target
    else:
      stream.append(make([int(rng.integers(0, 30)) for _ in range(rng.integers(1, 6))]))
  return stream


def expected_counts(stream):
  skipped, dropped = skip_reasons.zeros(), skip_reasons.zeros()
  for element in stream:
    dropped += skip_reasons.vector(element.dropped_images)
    if isinstance(element, Skipped):
      skipped += skip_reasons.vector({element.slug: 1})
    else:
      dropped += skip_reasons.vector({skip_reasons.ROW_FULL: cuts.fit_images(
          element, **BUDGETS)[1]})
      if not cuts.has_target(element.tokens, IMAGE_TOKEN_ID):
        skipped += skip_reasons.vector({skip_reasons.NO_LOSS_TOKENS: 1})
  return skipped, dropped


@pytest.mark.parametrize('mode', ['whole', 'fill'])
def test_counts_by_reason_reach_the_rows_and_survive_a_restore(mode):
  stream = count_stream(60)
  rows = list(pack(stream, mode=mode, window=4))
  skipped, dropped = expected_counts(stream)
  assert np.all(skipped[:-1] > 0)  # every reason but ROW_FULL (an image reason) occurs
  np.testing.assert_array_equal(sum(r[skip_reasons.SKIPPED_KEY] for r in rows), skipped)
  np.testing.assert_array_equal(sum(r[skip_reasons.DROPPED_KEY] for r in rows), dropped)
  for row in rows:
    assert row['num_skipped'] == row[skip_reasons.SKIPPED_KEY].sum()
    assert row[skip_reasons.SKIPPED_KEY].dtype == np.int32
    assert row[skip_reasons.SKIPPED_KEY].shape == (skip_reasons.NUM_REASONS,)
  # Restored mid-stream (through JSON, as the checkpoint stores it): the same rows, the
  # same counts, none counted twice.
  repeated = packing.pack_documents(grain.MapDataset.source(stream).repeat().to_iter_dataset(),
                                    mode=mode, window=4, **BUDGETS)
  for taken in (1, 4, 9):
    iterator = iter(repeated)
    for _ in range(taken):
      next(iterator)
    state = json.loads(json.dumps(iterator.get_state()))
    expected = [next(iterator) for _ in range(8)]
    assert sum(int(r['num_skipped']) + int(r[skip_reasons.DROPPED_KEY].sum())
               for r in expected) > 0
    resumed = iter(repeated)
    resumed.set_state(state)
    for want in expected:
      got = next(resumed)
      for key in want:
        np.testing.assert_array_equal(want[key], got[key], err_msg=key)
