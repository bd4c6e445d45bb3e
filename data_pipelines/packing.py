"""Multimodal sequence packing: Documents -> fixed-shape rows under two budgets.

Every row holds at most `seq_len` tokens and `max_images` images. Two modes
(`config.data.packing`, applied by `pack_documents`):

* 'fill' (`fill_packing.py`): documents are cut wherever a row has room left, at points
  outside image runs; used for interleaved and text sources. Step 1 below passes the
  documents whole (or truncated) and the fill packer replaces steps 2 and 3.
* 'whole' (below, and always for captions): documents are cut only when longer than a
  row, and placed whole.

Whole packing runs in three steps, each exactly resumable:

1. `ChunkDocumentsIterDataset` fits each document's images to a row (`cuts.fit_images`:
   surplus images of a long run of consecutive images are dropped and counted as
   'row_full') and cuts a document that does not fit one row into consecutive chunks
   by the rule of `cuts.py`: right after a text token, never inside an image run or
   between an image and its text, each chunk with a training target (a chunk that starts
   mid-document carries no bos). So no row is ever made only of image runs. With
   long_documents='truncate' only the first chunk is kept. It also counts, per reason
   of `skip_reasons.REASONS`, the `Skipped` markers (and documents without any target,
   skipped here) and the images dropped from each document, and attaches the counts to
   the next chunk it emits.
2. grain's `FirstFitPackIterDataset` places the chunks first-fit over a window of open
   rows (denser than next-fit) with both budgets as its length struct. Its state is the
   upstream state where the window began plus the rows already emitted, so a restore
   replays the window.
3. `finalize_row` (both modes) derives the batch contract's fields (DESIGN.md section 2,
   no batch dim): next-token targets within a segment, loss mask, segment ids, positions,
   image slots, and the count vectors `skipped_by_reason`, `dropped_images_by_reason`
   (int32 [R]) with their total `num_skipped`.

`rows_from_documents` builds rows without packing (one document per row, padded right),
for inference.
"""

from __future__ import annotations

import bisect
import collections
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np
from grain.experimental import FirstFitPackIterDataset

from data_pipelines import cuts
from data_pipelines import skip_reasons
from data_pipelines.cuts import image_run_starts
from data_pipelines.documents import Document, Skipped

DEFAULT_PACKING_WINDOW = 32  # open rows searched first-fit; emitted together when full
MAX_CONSECUTIVE_SKIPS = 10_000  # a source this broken is a configuration error
LONG_DOCUMENT_POLICIES = ('split', 'truncate')
PACKING_MODES = ('fill', 'whole')


def split_document(document: Document, *, seq_len: int, max_images: int,
                   num_image_tokens: int, image_token_id: int) -> list[Document]:
  """Cuts a document into consecutive chunks that each fit one row.

  A chunk holds at most seq_len tokens and max_images images. Cuts follow `cuts.py`: right
  after a text token and with a training target on both sides, for a document fitted by
  `cuts.fit_images` (a document that was not, or has no target, is cut wherever the
  budgets allow outside image runs).
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
  texts = (cuts.text_positions(tokens, image_token_id)
           if cuts.has_target(tokens, image_token_id) else None)
  chunks = []
  start, first_image = 0, 0
  while start < len(tokens):
    length = len(tokens) - start
    if length <= seq_len and len(images) - first_image <= max_images:
      cut = length
    else:
      budgets = dict(room_tokens=seq_len, room_images=max_images,
                     num_image_tokens=num_image_tokens, min_head=1, min_tail=0)
      local_runs = [r - start for r in runs[first_image:]]
      cut = 0
      if texts is not None:
        local_texts = [t - start for t in texts[bisect.bisect_left(texts, start):]]
        cut = cuts.largest_cut(local_runs, length, text_positions=local_texts, **budgets)
      cut = cut or cuts.largest_cut(local_runs, length, **budgets)
      if not cut:
        raise ValueError(f'no cut of the document fits a row of {seq_len} tokens and '
                         f'{max_images} images')
    last_image = bisect.bisect_left(runs, start + cut)
    chunks.append(Document(tokens=tokens[start:start + cut],
                           images=images[first_image:last_image]))
    start, first_image = start + cut, last_image
  return chunks


def _counter(saved: Any) -> collections.Counter:
  """Counts by slug from an iterator state (an int: a state saved before reasons existed)."""
  if isinstance(saved, Mapping):
    return collections.Counter({slug: int(n) for slug, n in saved.items() if int(n)})
  return collections.Counter({skip_reasons.MALFORMED_RECORD: int(saved)} if saved else {})


class _ChunkDocumentsIterator(grain.DatasetIterator):
  """Documents and Skipped markers in; row-sized chunks with their skip counts out."""

  def __init__(self, parent: grain.DatasetIterator, *, split_kwargs: dict[str, int],
               source_name: str, truncate: bool = False, split: bool = True):
    super().__init__(parent)
    self._split_kwargs = split_kwargs
    self._image_token_id = split_kwargs['image_token_id']
    self._truncate = truncate
    self._split = split
    self._source_name = source_name
    self._chunks: list[Document] = []
    self._next_chunk = 0
    self._image_shape = None  # (S, S, 3), learnt from the first document
    self._document_state = None  # parent state just before the current document
    # Counts charged to the current document's first chunk: records skipped before it
    # and images dropped (from it, or from the records skipped before it).
    self._document_counts = (skip_reasons.zeros(), skip_reasons.zeros())
    # Counts since the current document ({slug: count}).
    self._pending_skipped: collections.Counter = collections.Counter()
    self._pending_dropped: collections.Counter = collections.Counter()

  def _read_document(self) -> None:
    consecutive = 0
    while True:
      state = self._parent.get_state()
      try:
        element = next(self._parent)
      except StopIteration:
        if not (self._pending_skipped or self._pending_dropped) or self._image_shape is None:
          raise
        # A finite stream that ends in skips: an empty chunk still carries their count.
        document = Document(tokens=np.zeros(0, np.int32),
                            images=np.zeros((0, *self._image_shape), np.uint8))
        break
      self._pending_dropped.update(element.dropped_images)
      if isinstance(element, Skipped):
        self._pending_skipped[element.slug] += 1
        last_reason = element.reason
      else:
        self._image_shape = element.images.shape[1:]
        document, dropped = cuts.fit_images(element, **self._split_kwargs)
        if dropped:
          self._pending_dropped[skip_reasons.ROW_FULL] += dropped
        if cuts.has_target(document.tokens, self._image_token_id):
          break
        # Not one token of it is a training target (a lone token, only images).
        self._pending_skipped[skip_reasons.NO_LOSS_TOKENS] += 1
        last_reason = 'a document without a training target'
      consecutive += 1
      if consecutive > MAX_CONSECUTIVE_SKIPS:
        raise RuntimeError(f'data source {self._source_name!r}: {consecutive} unusable records '
                           f'in a row (the last: {last_reason})')
    self._document_state = state
    if self._split or self._truncate:
      self._chunks = split_document(document, **self._split_kwargs)
    else:
      self._chunks = [document]
    if self._truncate:
      self._chunks = self._chunks[:1]
    self._next_chunk = 0
    self._document_counts = (skip_reasons.vector(self._pending_skipped),
                             skip_reasons.vector(self._pending_dropped))
    self._pending_skipped, self._pending_dropped = collections.Counter(), collections.Counter()

  def __next__(self) -> dict[str, Any]:
    if self._next_chunk >= len(self._chunks):
      self._read_document()
    chunk = self._chunks[self._next_chunk]
    if self._next_chunk == 0:
      skipped, dropped = self._document_counts
    else:
      skipped, dropped = skip_reasons.zeros(), skip_reasons.zeros()
    self._next_chunk += 1
    return {'tokens': chunk.tokens, 'images': chunk.images,
            skip_reasons.SKIPPED_KEY: skipped, skip_reasons.DROPPED_KEY: dropped}

  def get_state(self) -> dict[str, Any]:
    if self._next_chunk < len(self._chunks):  # mid-document: re-read it on restore
      return {'parent': self._document_state, 'next_chunk': self._next_chunk,
              'skipped': {}, 'dropped': {}}
    return {'parent': self._parent.get_state(), 'next_chunk': 0,
            'skipped': dict(self._pending_skipped), 'dropped': dict(self._pending_dropped)}

  def set_state(self, state: dict[str, Any]) -> None:
    self._parent.set_state(state['parent'])
    self._chunks, self._next_chunk = [], 0
    self._pending_skipped = _counter(state['skipped'])
    self._pending_dropped = _counter(state.get('dropped', {}))
    if state['next_chunk'] > 0:
      self._read_document()  # its counts went out with its first chunk before the save
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
                 images: np.ndarray, image_valid: np.ndarray, image_token_id: int,
                 pad_id: int = 0, skipped_by_reason: np.ndarray | None = None,
                 dropped_images_by_reason: np.ndarray | None = None) -> dict[str, np.ndarray]:
  """Adds targets and loss mask to a packed row; returns the contract's row (no batch dim)
  with its count vectors over skip_reasons.REASONS (zeros when not given)."""
  tokens = tokens.astype(np.int32)
  segment_ids = segment_ids.astype(np.int32)
  next_tokens = np.append(tokens[1:], pad_id)
  next_segments = np.append(segment_ids[1:], 0)
  has_target = (segment_ids > 0) & (next_segments == segment_ids)
  targets = np.where(has_target, next_tokens, pad_id).astype(np.int32)
  loss_mask = (has_target & (targets != image_token_id)).astype(np.float32)
  skipped = (skip_reasons.zeros() if skipped_by_reason is None
             else np.asarray(skipped_by_reason, np.int32))
  dropped = (skip_reasons.zeros() if dropped_images_by_reason is None
             else np.asarray(dropped_images_by_reason, np.int32))
  return {
      'tokens': tokens,
      'targets': targets,
      'loss_mask': loss_mask,
      'segment_ids': segment_ids,
      'positions': np.where(segment_ids > 0, positions, 0).astype(np.int32),
      'images': images.astype(np.uint8),
      'image_valid': image_valid.astype(bool),
      'num_skipped': np.int32(skipped.sum()),
      skip_reasons.SKIPPED_KEY: skipped,
      skip_reasons.DROPPED_KEY: dropped,
  }


def _sum_counts(per_chunk: Sequence[np.ndarray]) -> np.ndarray:
  """The count vectors of a row's chunks (grain's packer hands meta features as a list)."""
  return np.sum([np.asarray(c, np.int32) for c in per_chunk], axis=0, dtype=np.int32)


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
        image_token_id=self.image_token_id, pad_id=self.pad_id,
        skipped_by_reason=_sum_counts(packed[skip_reasons.SKIPPED_KEY]),
        dropped_images_by_reason=_sum_counts(packed[skip_reasons.DROPPED_KEY]))


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
      num_packing_bins=window, shuffle_bins=False,
      meta_features=(skip_reasons.SKIPPED_KEY, skip_reasons.DROPPED_KEY),
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
        images=images, image_valid=np.arange(max_images) < count,
        image_token_id=image_token_id, pad_id=pad_id))
  batch = {key: np.stack([row[key] for row in rows]) for key in rows[0]
           if key not in (skip_reasons.SKIPPED_KEY, skip_reasons.DROPPED_KEY)}
  batch['source_id'] = np.zeros(len(rows), np.int32)
  batch['skipped_records'] = batch.pop('num_skipped')
  return batch
