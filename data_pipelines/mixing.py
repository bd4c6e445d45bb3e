"""Exact per-batch mixing of packed row streams, sharded by logical input shard.

Every global batch of B rows holds, per source, a whole number of rows as close to
B x weight as integers allow: the rounding error is carried to the next batch as a
per-source credit, so after any number of batches each source's total row count is within
one row of its exact share. The counts depend only on the weights and the credits, never on
random draws, so every process computes the same allocation without communicating.

Rows of a global batch are laid out in `num_shards` contiguous slot ranges of B / num_shards
rows; logical shard s fills its range from its own per-source streams (built from records
s::num_shards). A process owns a contiguous run of shards, so the union of all processes'
rows, in process order, is exactly the stream one process owning every shard produces.

The state (JSON) holds the batch count, the credits and each stream's state, keyed by source
name: a resume with changed weights keeps every stream's position and applies the new
weights from the next batch on; a source new to the mixture starts from its beginning.
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence
from typing import Any

import grain
import numpy as np


def batch_counts(weights: Sequence[float], batch_size: int,
                 credits: Sequence[float]) -> tuple[list[int], list[float]]:
  """Rows per source for one batch, and the credits (ideal minus given) carried on.

  `weights` must be normalised. Counts are never negative and always sum to batch_size.
  """
  ideal = [c + batch_size * w for c, w in zip(credits, weights)]
  counts = [max(0, math.floor(x)) for x in ideal]
  # Largest shortfall first gets the remaining rows; the smallest gives one back.
  while sum(counts) < batch_size:
    i = max(range(len(ideal)), key=lambda j: (ideal[j] - counts[j], -j))
    counts[i] += 1
  while sum(counts) > batch_size:
    i = min((j for j in range(len(ideal)) if counts[j] > 0),
            key=lambda j: (ideal[j] - counts[j], j))
    counts[i] -= 1
  return counts, [x - n for x, n in zip(ideal, counts)]


def spread_slots(counts: Sequence[int]) -> list[int]:
  """Source index for each slot of a batch, each source spread evenly over the slots."""
  total = sum(counts)
  keyed = [((k + 0.5) * total / n, i) for i, n in enumerate(counts) for k in range(n)]
  return [i for _, i in sorted(keyed)]


def stack_rows(rows: Sequence[Mapping[str, np.ndarray]]) -> dict[str, np.ndarray]:
  return {key: np.stack([row[key] for row in rows]) for key in rows[0]}


class _ExactMixIterator(grain.DatasetIterator):

  def __init__(self, streams: dict[str, list[grain.IterDataset]], weights: dict[str, float],
               *, batch_size: int, num_shards: int, first_shard: int):
    iterators = {name: [iter(s) for s in shard_streams]
                 for name, shard_streams in streams.items()}
    super().__init__([it for its in iterators.values() for it in its])
    self._iterators = iterators
    self._names = list(streams)
    total = sum(weights[name] for name in self._names)
    self._weights = [weights[name] / total for name in self._names]
    self._batch_size = batch_size
    self._num_shards = num_shards
    self._first_shard = first_shard
    self._owned = len(next(iter(streams.values())))
    self._credits = [0.0] * len(self._names)
    self._batches = 0

  def __next__(self) -> dict[str, np.ndarray]:
    counts, self._credits = batch_counts(self._weights, self._batch_size, self._credits)
    slots = spread_slots(counts)
    per_shard = self._batch_size // self._num_shards
    rows = []
    for local in range(self._owned):
      shard = self._first_shard + local
      for source in slots[shard * per_shard:(shard + 1) * per_shard]:
        rows.append(next(self._iterators[self._names[source]][local]))
    self._batches += 1
    return stack_rows(rows)

  def get_state(self) -> dict[str, Any]:
    return {
        'batches': self._batches,
        'num_shards': self._num_shards,
        'first_shard': self._first_shard,
        'credits': dict(zip(self._names, self._credits)),
        'streams': {name: [it.get_state() for it in its]
                    for name, its in self._iterators.items()},
    }

  def set_state(self, state: dict[str, Any]) -> None:
    for key, value in (('num_shards', self._num_shards), ('first_shard', self._first_shard)):
      if state[key] != value:
        raise ValueError(
            f'the saved data iterator has {key}={state[key]}, this run {value}: the input '
            'shards (config.data.shards, the process count) must not change on resume')
    self._batches = int(state['batches'])
    saved_credits = state['credits']
    self._credits = [float(saved_credits.get(name, 0.0)) for name in self._names]
    for name, its in self._iterators.items():
      for it, saved in zip(its, state['streams'].get(name, [None] * len(its))):
        if saved is not None:  # a source new to the mixture starts from its beginning
          it.set_state(saved)


class ExactMixIterDataset(grain.IterDataset):
  """Mixes per-source row streams into global-batch slices with exact per-batch counts.

  streams: {source name: [row stream of each shard this process owns]}, in source_id order.
  Yields this process's rows of each global batch (batch_size // num_shards per shard).
  """

  def __init__(self, streams: dict[str, list[grain.IterDataset]], weights: dict[str, float],
               *, batch_size: int, num_shards: int, first_shard: int = 0):
    super().__init__([s for shard_streams in streams.values() for s in shard_streams])
    if batch_size % num_shards:
      raise ValueError(f'batch size {batch_size} is not divisible by {num_shards} shards')
    owned = {len(s) for s in streams.values()}
    if len(owned) != 1 or first_shard + owned.pop() > num_shards:
      raise ValueError('every source needs one stream per owned shard')
    self._streams = streams
    self._weights = dict(weights)
    self._batch_size = batch_size
    self._num_shards = num_shards
    self._first_shard = first_shard

  def __iter__(self) -> grain.DatasetIterator:
    return _ExactMixIterator(self._streams, self._weights, batch_size=self._batch_size,
                             num_shards=self._num_shards, first_shard=self._first_shard)

  def __str__(self) -> str:
    return f'ExactMixIterDataset({sorted(self._weights)}, shards={self._num_shards})'
