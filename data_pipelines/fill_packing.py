"""Fill packing: documents are cut wherever needed so that rows leave almost no padding.

Whole-document packing (grain's first-fit, `packing.py`) leaves the tail of a row empty
whenever the next document does not fit it. Here a document of a cuttable kind
(interleaved, text) that fits no open row whole is cut to fill the open row that takes
the largest piece, and its rest continues in another row:

* a cut follows the rule of `cuts.py`: it falls right after a text token, never inside an
  image run of K `<image>` ids nor between an image and the text after it, and leaves a
  training target on both sides, so that no piece (and no row) is only image runs; text
  may be cut anywhere else (documents arrive fitted by `cuts.fit_images`);
* a piece takes at most the row's remaining tokens and images (both budgets);
* both sides of a cut keep at least `min_piece_tokens` tokens (no tiny fragments), a rule
  relaxed only for an empty row, so that a document always progresses;
* each piece is its own segment, exactly like the chunks of whole-document packing: its
  positions restart at 0, a piece that starts mid-document carries no bos, and the last
  token of a piece has no target (the cut costs one next-token target).

Why not grain's packers: `FirstFitPackIterDataset` and `BestFitPackIterDataset` place
elements whole (the padding this packer removes), and `ConcatThenSplitIterDataset` cuts
each feature at its own index, so it would split image runs and part images from their
runs. None has two coupled budgets with run-safe cut points.

A window of up to `window` rows is filled at a time. A piece goes whole into the first
row (open, or new while the window has room) where it fits without leaving a tail
shorter than min_piece_tokens (such a tail could take no cut piece any more); otherwise
it is cut into the row that takes the largest head (the fewest cuts per document); only
when no cut is possible either does it go whole into a row where it leaves a short tail.
When a piece fits no row in any form, the window's rows are emitted in the order they
were opened and the next window starts with that piece. The iterator's state is
therefore the upstream state before the window's first document, the offset into that
document where the window starts (tokens and images) and the rows already emitted: a
restore replays the window, exactly as grain's packers do. Documents are not reordered
across windows, so the window size matters little here (unlike whole packing).
"""

from __future__ import annotations

import bisect
import dataclasses
from typing import Any

import grain
import numpy as np

from data_pipelines import cuts
from data_pipelines import packing
from data_pipelines import skip_reasons
from data_pipelines.cuts import largest_cut

DEFAULT_MIN_PIECE_TOKENS = 8


@dataclasses.dataclass
class _Piece:
  """Part of a document still to be placed: tokens[start:] and images[first_image:]."""
  tokens: np.ndarray
  images: np.ndarray
  run_starts: list[int]  # relative to `start`
  text_positions: list[int] | None  # relative to `start`; None: no target, runs rule only
  start: int = 0
  first_image: int = 0
  # Counts over skip_reasons.REASONS charged to the document's first piece.
  skipped: np.ndarray = dataclasses.field(default_factory=skip_reasons.zeros)
  dropped: np.ndarray = dataclasses.field(default_factory=skip_reasons.zeros)

  @property
  def length(self) -> int:
    return len(self.tokens) - self.start

  @property
  def num_images(self) -> int:
    return len(self.images) - self.first_image

  def head(self, cut: int) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Takes tokens [0, cut) of what is left; returns (tokens, images, skipped, dropped)."""
    count = bisect.bisect_left(self.run_starts, cut)
    head = (self.tokens[self.start:self.start + cut],
            self.images[self.first_image:self.first_image + count], self.skipped, self.dropped)
    self.start += cut
    self.first_image += count
    self.run_starts = [s - cut for s in self.run_starts[count:]]
    if self.text_positions is not None:
      self.text_positions = [t - cut for t in
                             self.text_positions[bisect.bisect_left(self.text_positions, cut):]]
    self.skipped, self.dropped = skip_reasons.zeros(), skip_reasons.zeros()
    return head


class _Row:
  """An open row: its pieces (tokens, images), the room left and the counts it reports."""

  def __init__(self, seq_len: int, max_images: int):
    self.pieces: list[tuple[np.ndarray, np.ndarray]] = []
    self.room_tokens = seq_len
    self.room_images = max_images
    self.skipped = skip_reasons.zeros()
    self.dropped = skip_reasons.zeros()

  def add(self, tokens: np.ndarray, images: np.ndarray, skipped: np.ndarray,
          dropped: np.ndarray) -> None:
    if len(tokens):  # an empty document only carries counts
      self.pieces.append((tokens, images))
    self.room_tokens -= len(tokens)
    self.room_images -= len(images)
    self.skipped = self.skipped + skipped
    self.dropped = self.dropped + dropped


class _FillPackIterator(grain.DatasetIterator):
  """Chunk dicts (tokens, images, count vectors) in; contract rows out (see module doc)."""

  def __init__(self, parent: grain.DatasetIterator, *, seq_len: int, max_images: int,
               num_image_tokens: int, image_token_id: int, pad_id: int, window: int,
               min_piece_tokens: int):
    super().__init__(parent)
    self._seq_len, self._max_images, self._window = seq_len, max_images, window
    self._num_image_tokens, self._image_token_id = num_image_tokens, image_token_id
    self._pad_id, self._min_piece = pad_id, min_piece_tokens
    self._image_shape = None
    self._rows: list[dict[str, np.ndarray]] = []  # the current window, finalised
    self._next_row = 0
    self._window_start = None  # state that replays the current window
    # Where the next window starts: the upstream state before its first document, the
    # offset into that document, and the piece left over (None: read the next document).
    self._carry_state = {'parent': self._parent.get_state(), 'tokens': 0, 'images': 0}
    self._carry: _Piece | None = None
    self._skip_rows = 0  # rows of the next window already emitted before a restore

  def _piece(self, element: dict[str, Any], tokens_offset: int, images_offset: int) -> _Piece:
    tokens, images = element['tokens'], element['images']
    self._image_shape = images.shape[1:]
    runs = packing.image_run_starts(tokens, num_image_tokens=self._num_image_tokens,
                                    image_token_id=self._image_token_id).tolist()
    if len(runs) != len(images):
      raise ValueError(f'document has {len(runs)} image runs but {len(images)} images')
    texts = (cuts.text_positions(tokens, self._image_token_id)
             if cuts.has_target(tokens, self._image_token_id) else None)
    piece = _Piece(tokens, images, runs, texts,
                   skipped=np.asarray(element[skip_reasons.SKIPPED_KEY], np.int32),
                   dropped=np.asarray(element[skip_reasons.DROPPED_KEY], np.int32))
    if tokens_offset or images_offset:
      piece.head(tokens_offset)  # already placed in an earlier window (with its skips)
      if piece.first_image != images_offset:
        raise ValueError('packing state does not match the document it points to')
    return piece

  def _cut(self, piece: _Piece, row: _Row) -> int:
    room = dict(room_tokens=row.room_tokens, room_images=row.room_images,
                num_image_tokens=self._num_image_tokens)
    cut = largest_cut(piece.run_starts, piece.length, min_head=self._min_piece,
                      min_tail=self._min_piece, text_positions=piece.text_positions, **room)
    if not cut and not row.pieces:  # an empty row takes whatever the budgets allow
      cut = largest_cut(piece.run_starts, piece.length, min_head=1, min_tail=0,
                        text_positions=piece.text_positions, **room)
      fits = piece.length <= row.room_tokens and piece.num_images <= row.room_images
      if not cut and not fits and piece.text_positions is not None:
        # Only a document that was not fitted (cuts.fit_images) gets here: run-safe cuts.
        cut = largest_cut(piece.run_starts, piece.length, min_head=1, min_tail=0, **room)
    return cut

  def _place(self, piece: _Piece, rows: list[_Row]) -> bool:
    """Places all of `piece` in `rows`, cutting it as needed; False when the window is full.

    A row opens only for a piece placed in it, so that no emitted row is empty.
    """
    if not piece.length:  # what is left of an empty document: its skip count
      if not rows:
        rows.append(_Row(self._seq_len, self._max_images))
      rows[-1].add(*piece.head(0))
      return True
    while piece.length:
      candidates = rows + ([_Row(self._seq_len, self._max_images)]
                           if len(rows) < self._window else [])
      fits = [row for row in candidates
              if piece.length <= row.room_tokens and piece.num_images <= row.room_images]
      # A row left with fewer than min_piece_tokens could take no cut piece any more:
      # the piece goes whole elsewhere, or is cut, before leaving such a dead tail.
      lasting = [row for row in fits if row.room_tokens - piece.length not in
                 range(1, self._min_piece)]
      cuts = [] if lasting else [self._cut(piece, row) for row in candidates]
      if lasting:
        row, cut = lasting[0], piece.length
      elif any(cuts):
        best = int(np.argmax(cuts))  # the largest piece: the fewest cuts
        row, cut = candidates[best], cuts[best]
      elif fits:
        row, cut = fits[0], piece.length
      else:
        return False
      if not any(row is open_row for open_row in rows):
        rows.append(row)
      row.add(*piece.head(cut))
    return True

  def _fill_window(self) -> None:
    """Packs the next window of rows, starting where _carry_state points."""
    self._window_start = start = dict(self._carry_state)
    rows: list[_Row] = []
    document_state = start['parent']
    piece = self._carry
    self._carry = None
    offset = (start['tokens'], start['images'])  # into the first document read (a restore)
    while True:
      if piece is None:
        document_state = self._parent.get_state()
        try:
          element = next(self._parent)
        except StopIteration:
          self._carry_state = {'parent': document_state, 'tokens': 0, 'images': 0}
          break
        piece = self._piece(element, *offset)
      offset = (0, 0)
      if not self._place(piece, rows):
        if not rows:
          raise ValueError(f'an image run of {self._num_image_tokens} tokens cannot fit a '
                           f'row of {self._seq_len} tokens and {self._max_images} images')
        # The window is full: the rest of `piece` opens the next one.
        self._carry = piece
        self._carry_state = {'parent': document_state, 'tokens': piece.start,
                             'images': piece.first_image}
        break
      piece = None
    self._rows = [self._finalize(row) for row in rows]
    self._next_row = 0

  def _finalize(self, row: _Row) -> dict[str, np.ndarray]:
    tokens = np.full(self._seq_len, self._pad_id, np.int32)
    segment_ids = np.zeros(self._seq_len, np.int32)
    positions = np.zeros(self._seq_len, np.int32)
    images = np.zeros((self._max_images, *self._image_shape), np.uint8)
    used, count = 0, 0
    for segment, (piece_tokens, piece_images) in enumerate(row.pieces, 1):
      end = used + len(piece_tokens)
      tokens[used:end] = piece_tokens
      segment_ids[used:end] = segment
      positions[used:end] = np.arange(len(piece_tokens))
      images[count:count + len(piece_images)] = piece_images
      used, count = end, count + len(piece_images)
    return packing.finalize_row(
        tokens=tokens, segment_ids=segment_ids, positions=positions, images=images,
        image_valid=np.arange(self._max_images) < count,
        image_token_id=self._image_token_id, pad_id=self._pad_id,
        skipped_by_reason=row.skipped, dropped_images_by_reason=row.dropped)

  def __next__(self) -> dict[str, np.ndarray]:
    while self._next_row >= len(self._rows):
      self._fill_window()
      if not self._rows:
        raise StopIteration
      self._next_row, self._skip_rows = min(self._skip_rows, len(self._rows)), 0
    row = self._rows[self._next_row]
    self._next_row += 1
    return row

  def get_state(self) -> dict[str, Any]:
    if self._next_row < len(self._rows):
      return {**self._window_start, 'emitted': self._next_row}
    return {**self._carry_state, 'emitted': self._skip_rows}

  def set_state(self, state: dict[str, Any]) -> None:
    if not {'parent', 'tokens', 'images', 'emitted'} <= set(state):
      raise ValueError("the iterator state was not saved by fill packing (saved with "
                       "config.data.packing='whole'? resume with that setting)")
    self._parent.set_state(state['parent'])
    self._carry_state = {'parent': state['parent'], 'tokens': int(state['tokens']),
                         'images': int(state['images'])}
    self._carry = None
    self._rows, self._next_row = [], 0
    self._skip_rows = int(state['emitted'])


class FillPackIterDataset(grain.IterDataset):
  """Chunk dicts (from packing.ChunkDocumentsIterDataset) -> contract rows, cut to fill."""

  def __init__(self, parent: grain.IterDataset, *, seq_len: int, max_images: int,
               num_image_tokens: int, image_token_id: int, pad_id: int = 0,
               window: int = packing.DEFAULT_PACKING_WINDOW,
               min_piece_tokens: int = DEFAULT_MIN_PIECE_TOKENS):
    super().__init__(parent)
    if window < 1:
      raise ValueError(f'packing window must be >= 1, got {window}')
    if min_piece_tokens < 1:
      raise ValueError(f'min_piece_tokens must be >= 1, got {min_piece_tokens}')
    if num_image_tokens > seq_len or max_images < 1:
      raise ValueError(f'an image run of {num_image_tokens} tokens cannot fit a row of '
                       f'{seq_len} tokens and {max_images} images')
    self._kwargs = dict(seq_len=seq_len, max_images=max_images,
                        num_image_tokens=num_image_tokens, image_token_id=image_token_id,
                        pad_id=pad_id, window=window, min_piece_tokens=min_piece_tokens)

  def __iter__(self) -> grain.DatasetIterator:
    return _FillPackIterator(self._parent.__iter__(), **self._kwargs)

  def __str__(self) -> str:
    return 'FillPackIterDataset'
