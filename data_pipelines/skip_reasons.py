"""Why data was left out: the one table of skip and drop reasons, and how they are counted.

A record that cannot be used is skipped and an image that cannot be used is dropped, never
silently: each is counted under a stable slug of `REASONS` (this module owns the table;
nothing else spells a slug). Records are skipped by `documents.RecordToDocument` (a caption
whose image is bad, empty text, ...) and by the packer (a document without a single
training target); images are dropped from interleaved documents when they do not decode
(the document's text stays) and by the packer when a row cannot hold them together with
the text they belong to (`row_full`).

The counts travel with the data as fixed-size int32 count vectors over REASONS, in table
order, so that rows stack, packers carry them as meta features, and a restored iterator
replays them exactly:

    row    skipped_by_reason          int32 [R]   records skipped since the previous row of
                                                  the same source and shard
           dropped_images_by_reason   int32 [R]   images dropped from this row's documents
    batch  the same keys, [B, R]; `skipped_records` int32 [B] is their row sum.

Iterator states hold pending counts by slug ({slug: count}), so a later, longer table
still restores an older state.

`WindowCounts` turns batches into the trainer's metrics (per logging window):
`data/skipped_records` (all skipped records), `data/skipped/<slug>` and
`data/dropped_images/<slug>` (non-zero counts only), `data/rows_without_loss` and
`data/<source>_rows_without_loss` for every source (rows in which no token is a target).
`loss/<source>` is absent from a window exactly when the source had no loss token in it:
`data/<source>_fraction` says whether it had rows and `data/<source>_rows_without_loss`
how many of them taught nothing.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence

import numpy as np

from data_pipelines import images as images_lib

# Images (the slugs of images.REASONS).
EMPTY_IMAGE = 'empty_image'
UNDECODABLE_IMAGE = 'undecodable_image'
IMAGE_OVER_MAX_PIXELS = 'image_over_max_image_pixels'
UNSUPPORTED_IMAGE_MODE = 'unsupported_image_mode'
# Records.
EMPTY_TEXT = 'empty_text'  # a caption or text record whose text is blank
NO_TEXT_TOKENS = 'no_text_tokens'  # text that the tokenizer turns into nothing
EMPTY_DOCUMENT = 'empty_document'  # an interleaved record with no text and no usable image
NO_LOSS_TOKENS = 'no_loss_tokens'  # a document in which no token is a next-token target
MALFORMED_RECORD = 'malformed_record'  # anything else that makes a record unreadable
# Images dropped by the packer: more consecutive images than a row holds with their text.
ROW_FULL = 'row_full'

# Append only: the position of a slug is its index in every count vector.
REASONS = (EMPTY_IMAGE, UNDECODABLE_IMAGE, IMAGE_OVER_MAX_PIXELS, UNSUPPORTED_IMAGE_MODE,
           EMPTY_TEXT, NO_TEXT_TOKENS, EMPTY_DOCUMENT, NO_LOSS_TOKENS, MALFORMED_RECORD,
           ROW_FULL)
NUM_REASONS = len(REASONS)

_IMAGE_SLUGS = {
    images_lib.EMPTY: EMPTY_IMAGE,
    images_lib.UNDECODABLE: UNDECODABLE_IMAGE,
    images_lib.TOO_LARGE: IMAGE_OVER_MAX_PIXELS,
    images_lib.UNSUPPORTED_MODE: UNSUPPORTED_IMAGE_MODE,
}
assert set(_IMAGE_SLUGS) == set(images_lib.REASONS)

SKIPPED_KEY = 'skipped_by_reason'
DROPPED_KEY = 'dropped_images_by_reason'
TOTAL_KEY = 'skipped_records'
BATCH_KEYS = (TOTAL_KEY, SKIPPED_KEY, DROPPED_KEY)


def image_slug(error: Exception) -> str:
  """The slug of an image that failed to load (an images.ImageError, or a bad array)."""
  return _IMAGE_SLUGS.get(getattr(error, 'reason', None), UNDECODABLE_IMAGE)


def zeros() -> np.ndarray:
  return np.zeros(NUM_REASONS, np.int32)


def vector(counts: Mapping[str, int]) -> np.ndarray:
  """{slug: count} -> int32 [R]; raises ValueError for a slug not in REASONS."""
  out = zeros()
  for slug, count in counts.items():
    if slug not in REASONS:
      raise ValueError(f'unknown skip reason {slug!r} (one of {REASONS})')
    out[REASONS.index(slug)] += int(count)
  return out


def as_dict(counts: np.ndarray) -> dict[str, int]:
  """int32 [R] (or [..., R], summed) -> {slug: count} of the non-zero counts."""
  totals = np.asarray(counts, np.int64).reshape(-1, NUM_REASONS).sum(axis=0)
  return {slug: int(n) for slug, n in zip(REASONS, totals) if n}


def rows_without_loss(loss_mask: np.ndarray) -> np.ndarray:
  """bool [B]: rows of a batch in which no token is a training target."""
  return ~np.any(np.asarray(loss_mask) > 0, axis=-1)


class WindowCounts:
  """Skip, drop and no-loss counts of the batches of one logging window, and of the run.

  `add` pops the count keys from a host batch (they never go to the device); `metrics`
  gives the window's metrics (see the module doc) and starts the next window.
  """

  def __init__(self, source_names: Sequence[str]):
    self._names = list(source_names)
    self.total_skipped = zeros().astype(np.int64)
    self.total_dropped = zeros().astype(np.int64)
    self._start_window()

  def _start_window(self) -> None:
    self._skipped = zeros().astype(np.int64)
    self._dropped = zeros().astype(np.int64)
    self._no_loss = np.zeros(len(self._names), np.int64)

  def add(self, batch: dict) -> None:
    batch.pop(TOTAL_KEY, None)  # the row sums of SKIPPED_KEY
    for key, window, total in ((SKIPPED_KEY, self._skipped, self.total_skipped),
                               (DROPPED_KEY, self._dropped, self.total_dropped)):
      counts = batch.pop(key, None)
      if counts is not None:
        counts = np.asarray(counts, np.int64).reshape(-1, NUM_REASONS).sum(axis=0)
        window += counts
        total += counts
    if 'loss_mask' in batch and 'source_id' in batch:
      empty = rows_without_loss(batch['loss_mask'])
      self._no_loss += np.bincount(np.asarray(batch['source_id'])[empty],
                                   minlength=len(self._names))[:len(self._names)]

  def metrics(self) -> dict[str, float]:
    """The window's metrics; the next `add` starts a new window."""
    out = {'data/skipped_records': float(self._skipped.sum())}
    for slug, count in as_dict(self._skipped).items():
      out[f'data/skipped/{slug}'] = float(count)
    for slug, count in as_dict(self._dropped).items():
      out[f'data/dropped_images/{slug}'] = float(count)
    out['data/rows_without_loss'] = float(self._no_loss.sum())
    for name, count in zip(self._names, self._no_loss):
      out[f'data/{name}_rows_without_loss'] = float(count)
    self._start_window()
    return out
