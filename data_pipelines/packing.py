"""Multimodal sequence packing: Documents -> fixed-shape rows under two budgets.

Every row holds at most `seq_len` tokens and `max_images` images. Two modes
(`config.data.packing`, applied by `pack_documents`):

* 'fill' (`fill_packing.py`): documents are cut wherever a row has room left, at points
  outside image runs; used for interleaved and text sources. Step 1 below passes the
  documents whole (or truncated) and the fill packer replaces steps 2 and 3.
* 'whole' (below, and always for captions): documents are cut only when longer than a
  row, and placed whole.

Whole packing runs in three steps, each exactly resumable:

1. `ChunkDocumentsIterDataset` cuts a document that does not fit one row into consecutive
   chunks, never inside an image run, and at image boundaries when the images exceed the
   row's image budget (a chunk that starts mid-document carries no bos). With
   long_documents='truncate' only the first chunk is kept. It also counts
   the `Skipped` markers and attaches the count to the next chunk it emits.
2. grain's `FirstFitPackIterDataset` places the chunks first-fit over a window of open
   rows (denser than next-fit) with both budgets as its length struct. Its state is the
   upstream state where the window began plus the rows already emitted, so a restore
   replays the window.
3. `finalize_row` (both modes) derives the batch contract's fields (DESIGN.md section 2,
   no batch dim): next-token targets within a segment, loss mask, segment ids, positions,
   image slots.

`rows_from_documents` builds rows without packing (one document per row, padded right),
for inference.
"""

from __future__ import annotations

import bisect
from collections.abc import Sequence
from typing import Any

import grain
import numpy as np
from grain.experimental import FirstFitPackIterDataset

from data_pipelines.documents import Document, Skipped

DEFAULT_PACKING_WINDOW = 32  # open rows searched first-fit; emitted together when full
MAX_CONSECUTIVE_SKIPS = 10_000  # a source this broken is a configuration error
LONG_DOCUMENT_POLICIES = ('split', 'truncate')
PACKING_MODES = ('fill', 'whole')


def image_run_starts(tokens: np.ndarray, *, num_image_tokens: int,
                     image_token_id: int) -> np.ndarray:
  """Start positions of the image placeholder runs (each exactly K ids long)."""
  positions = np.flatnonzero(tokens == image_token_id)
  starts = positions[::num_image_tokens]
  expected = starts[:, None] + np.arange(num_image_tokens)[None, :]
  if len(positions) % num_image_tokens or not np.array_equal(expected.ravel(), positions):
    raise ValueError(f'image placeholder ids do not form runs of exactly {num_image_tokens}')
  return starts


def split_document(document: Document, *, seq_len: int, max_images: int,
                   num_image_tokens: int, image_token_id: int) -> list[Document]:
  """Cuts a document into consecutive chunks that each fit one row.

  A chunk holds at most seq_len tokens and max_images images, and a cut never falls inside
  an image run: a run that would straddle the token budget starts the next chunk.
  """
  tokens, images = document.tokens, document.images
  if len(tokens) <= seq_len and len(images) <= max_images:
    return [document]
  if num_image_tokens > seq_len:
    raise ValueError(f'an image run of {num_image_tokens} tokens exceeds seq_len={seq_len}')
  runs = image_run_starts(tokens, num_image_tokens=num_image_tokens,
                          image_token_id=image_token_id).tolist()
  if len(runs) != len(images):
    raise ValueError(f'document has {len(runs)} image runs but {len(images)} images')
  chunks = []
  start, first_image = 0, 0
  while start < len(tokens):
    end = min(start + seq_len, len(tokens))
    last_image = bisect.bisect_left(runs, end)  # runs that start before `end`
    if last_image > first_image and runs[last_image - 1] + num_image_tokens > end:
      last_image -= 1  # that run straddles the cut: it opens the next chunk instead
      end = runs[last_image]
    if last_image - first_image > max_images:
      last_image = first_image + max_images
      end = runs[last_image]
    assert end > start, (start, end)
    chunks.append(Document(tokens=tokens[start:end], images=images[first_image:last_image]))
    start, first_image = end, last_image
  return chunks


class _ChunkDocumentsIterator(grain.DatasetIterator):
  """Documents and Skipped markers in; row-sized chunks with a `num_skipped` count out."""

  def __init__(self, parent: grain.DatasetIterator, *, split_kwargs: dict[str, int],
               source_name: str, truncate: bool = False, split: bool = True):
    super().__init__(parent)
    self._split_kwargs = split_kwargs
    self._truncate = truncate
    self._split = split
    self._source_name = source_name
    self._chunks: list[Document] = []
    self._next_chunk = 0
    self._image_shape = None  # (S, S, 3), learnt from the first document
    self._document_state = None  # parent state just before the current document
    self._skipped_before_document = 0  # Skipped markers read before the current document
    self._pending_skipped = 0  # Skipped markers read since the current document

  def _read_document(self) -> None:
    consecutive = 0
    while True:
      state = self._parent.get_state()
      try:
        element = next(self._parent)
      except StopIteration:
        if not self._pending_skipped or self._image_shape is None:
          raise
        # A finite stream that ends in skips: an empty chunk still carries their count.
        element = Document(tokens=np.zeros(0, np.int32),
                           images=np.zeros((0, *self._image_shape), np.uint8))
      if not isinstance(element, Skipped):
        break
      self._pending_skipped += 1
      consecutive += 1
      if consecutive > MAX_CONSECUTIVE_SKIPS:
        raise RuntimeError(f'data source {self._source_name!r}: {consecutive} unusable records '
                           f'in a row (the last: {element.reason})')
    self._document_state = state
    self._image_shape = element.images.shape[1:]
    if self._split or self._truncate:
      self._chunks = split_document(element, **self._split_kwargs)
    else:
      self._chunks = [element]
    if self._truncate:
      self._chunks = self._chunks[:1]
    self._next_chunk = 0
    self._skipped_before_document = self._pending_skipped
    self._pending_skipped = 0

  def __next__(self) -> dict[str, Any]:
    if self._next_chunk >= len(self._chunks):
      self._read_document()
    chunk = self._chunks[self._next_chunk]
    skipped = self._skipped_before_document if self._next_chunk == 0 else 0
    self._next_chunk += 1
    return {'tokens': chunk.tokens, 'images': chunk.images, 'num_skipped': np.int32(skipped)}

  def get_state(self) -> dict[str, Any]:
    if self._next_chunk < len(self._chunks):  # mid-document: re-read it on restore
      return {'parent': self._document_state, 'next_chunk': self._next_chunk, 'skipped': 0}
    return {'parent': self._parent.get_state(), 'next_chunk': 0,
            'skipped': self._pending_skipped}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state['parent'])
    self._chunks, self._next_chunk = [], 0
    self._pending_skipped = int(state['skipped'])
    if state['next_chunk'] > 0:
      self._read_document()
      self._next_chunk = int(state['next_chunk'])


class ChunkDocumentsIterDataset(grain.IterDataset):
  """Cuts Documents into row-sized chunks and counts Skipped markers (see module doc)."""

  def __init__(self, parent: grain.IterDataset, *, seq_len: int, max_images: int,
               num_image_tokens: int, image_token_id: int, source_name: str = '',
               long_documents: str = 'split', split: bool = True):
    """split=False passes documents whole (unless truncated) for a packer that cuts them."""
    super().__init__(parent)
    if long_documents not in LONG_DOCUMENT_POLICIES:
      raise ValueError(f'unknown long-document policy {long_documents!r} '
                       f'(one of {LONG_DOCUMENT_POLICIES})')
    self._split_kwargs = dict(seq_len=seq_len, max_images=max_images,
                              num_image_tokens=num_image_tokens, image_token_id=image_token_id)
    self._source_name = source_name
    self._truncate = long_documents == 'truncate'
    self._split = split

  def __iter__(self) -> grain.DatasetIterator:
    return _ChunkDocumentsIterator(self._parent.__iter__(), split_kwargs=self._split_kwargs,
                                   source_name=self._source_name, truncate=self._truncate,
                                   split=self._split)

  def __str__(self) -> str:
    return f'ChunkDocumentsIterDataset({self._source_name})'


def finalize_row(*, tokens: np.ndarray, segment_ids: np.ndarray, positions: np.ndarray,
                 images: np.ndarray, image_valid: np.ndarray, num_skipped: int,
                 image_token_id: int, pad_id: int = 0) -> dict[str, np.ndarray]:
  """Adds targets and loss mask to a packed row; returns the contract's row (no batch dim)."""
  tokens = tokens.astype(np.int32)
  segment_ids = segment_ids.astype(np.int32)
  next_tokens = np.append(tokens[1:], pad_id)
  next_segments = np.append(segment_ids[1:], 0)
  has_target = (segment_ids > 0) & (next_segments == segment_ids)
  targets = np.where(has_target, next_tokens, pad_id).astype(np.int32)
  loss_mask = (has_target & (targets != image_token_id)).astype(np.float32)
  return {
      'tokens': tokens,
      'targets': targets,
      'loss_mask': loss_mask,
      'segment_ids': segment_ids,
      'positions': np.where(segment_ids > 0, positions, 0).astype(np.int32),
      'images': images.astype(np.uint8),
      'image_valid': image_valid.astype(bool),
      'num_skipped': np.int32(num_skipped),
  }


class PackedToRow(grain.transforms.Map):
  """grain Map: the output of grain's packer -> the contract's row."""

  def __init__(self, *, image_token_id: int, pad_id: int = 0):
    self.image_token_id = image_token_id
    self.pad_id = pad_id

  def map(self, packed: dict[str, Any]) -> dict[str, np.ndarray]:
    return finalize_row(
        tokens=packed['tokens'], segment_ids=packed['tokens_segment_ids'],
        positions=packed['tokens_positions'], images=packed['images'],
        image_valid=packed['images_segment_ids'] > 0,
        num_skipped=int(sum(packed['num_skipped'])),
        image_token_id=self.image_token_id, pad_id=self.pad_id)


def pack_documents(documents: grain.IterDataset, *, seq_len: int, max_images: int,
                   num_image_tokens: int, image_token_id: int, pad_id: int = 0,
                   window: int = DEFAULT_PACKING_WINDOW, source_name: str = '',
                   long_documents: str = 'split', mode: str = 'whole',
                   min_piece_tokens: int | None = None) -> grain.IterDataset:
  """IterDataset of Document | Skipped -> IterDataset of contract rows (no batch dim).

  mode='whole': documents (or their row-sized chunks) are placed whole, first-fit.
  mode='fill': documents are cut to fill rows (fill_packing.py); for kinds whose parts
  may be separated (interleaved, text), never for captions.
  """
  if mode not in PACKING_MODES:
    raise ValueError(f'unknown packing mode {mode!r} (one of {PACKING_MODES})')
  chunks = ChunkDocumentsIterDataset(
      documents, seq_len=seq_len, max_images=max_images, num_image_tokens=num_image_tokens,
      image_token_id=image_token_id, source_name=source_name, long_documents=long_documents,
      split=mode == 'whole')
  if mode == 'fill':
    # Imported here: fill_packing builds on this module.
    from data_pipelines import fill_packing  # pylint: disable=g-import-not-at-top
    return fill_packing.FillPackIterDataset(
        chunks, seq_len=seq_len, max_images=max_images, num_image_tokens=num_image_tokens,
        image_token_id=image_token_id, pad_id=pad_id, window=window,
        min_piece_tokens=min_piece_tokens or fill_packing.DEFAULT_MIN_PIECE_TOKENS)
  packed = FirstFitPackIterDataset(
      chunks, length_struct={'tokens': seq_len, 'images': max_images},
      num_packing_bins=window, shuffle_bins=False, meta_features=('num_skipped',),
      padding_struct={'tokens': pad_id, 'images': 0})
  return packed.map(PackedToRow(image_token_id=image_token_id, pad_id=pad_id))


def rows_from_documents(documents: Sequence[Document], *, image_token_id: int,
                        seq_len: int | None = None, max_images: int | None = None,
                        pad_id: int = 0) -> dict[str, np.ndarray]:
  """One document per row, padded right: a batch dict per the contract (with batch dim).

  seq_len and max_images default to the longest document and the most images (at least
  one image slot). A document over either budget raises ValueError: at inference a cut
  would silently change the prompt.
  """
  if not documents:
    raise ValueError('rows_from_documents needs at least one document')
  seq_len = seq_len or max(len(d.tokens) for d in documents)
  max_images = max_images or max(1, max(d.num_images for d in documents))
  image_shape = documents[0].images.shape[1:]
  rows = []
  for index, document in enumerate(documents):
    length, count = len(document.tokens), document.num_images
    if length > seq_len or count > max_images:
      raise ValueError(f'document {index} has {length} tokens and {count} images; the row '
                       f'holds {seq_len} tokens and {max_images} images')
    tokens = np.full(seq_len, pad_id, np.int32)
    tokens[:length] = document.tokens
    segment_ids = (np.arange(seq_len) < length).astype(np.int32)
    images = np.zeros((max_images, *image_shape), np.uint8)
    images[:count] = document.images
    rows.append(finalize_row(
        tokens=tokens, segment_ids=segment_ids, positions=np.arange(seq_len),
        images=images, image_valid=np.arange(max_images) < count, num_skipped=0,
        image_token_id=image_token_id, pad_id=pad_id))
  batch = {key: np.stack([row[key] for row in rows]) for key in rows[0]}
  batch['source_id'] = np.zeros(len(rows), np.int32)
  batch['skipped_records'] = batch.pop('num_skipped')
  return batch
