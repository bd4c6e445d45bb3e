"""The training input on grain: per-source shuffle, decode and pack, then mix and batch.

The input is split into `data.shards` logical shards (0: one per process); process p of P
owns shards [p * S/P, (p+1) * S/P). Per configured source with weight > 0 (`source_id` =
its index in `source_names`) and per owned shard s:

    open_source -> MapDataset.source -> seed(data.seed, name) -> shuffle -> repeat (each
    epoch reshuffled) -> [s::S] -> map(record -> Document: decode, resize, tokenize)
    -> to_iter_dataset [-> mp_prefetch: decode in worker processes] -> pack -> + source_id

`mixing.ExactMixIterDataset` then fills each global batch with per-source row counts as
close to the normalised weights as integers allow and keeps this process's rows
(`train.batch_size // P`), a thread prefetches, and batches come out per the contract of
DESIGN.md section 2, plus the counts of what was left out (`skip_reasons.py`):
`skipped_by_reason` int32 [B, R] (records skipped since the previous row of the same source
and shard, per reason), `dropped_images_by_reason` int32 [B, R] (images dropped from the
row's documents, per reason) and `skipped_records` int32 [B] (the row sums of the first).
Images are decoded under `data.max_image_pixels`. Every stage has grain's get_state/set_state, so the
iterator resumes exactly (the trainer checkpoints it with grain's Orbax support). For a
fixed data.shards the global stream does not depend on the process count.

`make_iterator` is the one entry point of both backends (config.data.backend).
"""

from __future__ import annotations

import collections
import os
import zlib

import grain
import numpy as np

from data_pipelines import images
from data_pipelines import mixing
from data_pipelines import packing
from data_pipelines.documents import RecordToDocument, Skipped
from data_pipelines.sources import open_source
from data_pipelines.tokenizer import Tokenizer

# Records tried at construction before a source is declared unusable.
_PROBE_LIMIT = 1000
# Decode threads and read-ahead per source (and per worker process when num_workers > 0).
# grain's defaults (16 threads, 500 records ahead per source) mostly fight over the GIL.
READ_OPTIONS = grain.ReadOptions(num_threads=2, prefetch_buffer_size=64)


def source_names(config) -> list[str]:
  """Configured sources with weight > 0, in config order; source_id = index here.

  (A ConfigDict iterates its keys sorted, so the order does not depend on how a config
  file happens to list them.)
  """
  return [name for name in config.data.sources if config.data.weights.get(name, 0) > 0]


def resolve_path(config, path: str) -> str:
  """A relative path is relative to config.data.root."""
  path = os.path.expanduser(os.fspath(path))
  if os.path.isabs(path):
    return path
  return os.path.join(os.path.expanduser(config.data.root), path)


def _ensure_synthetic(config) -> None:
  if config.data.get('synthetic', False):
    from data_pipelines import synthetic  # pylint: disable=g-import-not-at-top
    synthetic.ensure(os.path.expanduser(config.data.root))


def load_tokenizer(config) -> Tokenizer:
  """The tokenizer at config.data.tokenizer (generating the synthetic world if configured)."""
  _ensure_synthetic(config)
  return Tokenizer(resolve_path(config, config.data.tokenizer))


def source_seed(config, name: str) -> int:
  """The shuffle seed of one source, from config.data.seed and the source's name."""
  # zlib.crc32 is stable across processes and Python runs (unlike hash()).
  return (int(config.data.seed) * 1_000_003 + zlib.crc32(name.encode())) % (2**31)


def shuffled_records(records, *, seed: int, process_index: int = 0,
                     process_count: int = 1) -> grain.MapDataset:
  """The infinite record order of one process: shuffled, reshuffled each epoch, sliced."""
  return (grain.MapDataset.source(records)
          .seed(seed)
          .shuffle()
          .repeat()  # infinite; each epoch shuffled anew
          [process_index::process_count])


def _workers_per_stream(config, name: str, owned_shards: int) -> int:
  """Splits data.num_workers over the (source, shard) streams by weight (>= 1 each when > 0)."""
  if config.data.num_workers <= 0:
    return 0
  names = source_names(config)
  total = sum(config.data.weights[n] for n in names)
  share = config.data.num_workers * config.data.weights[name] / total / owned_shards
  return max(1, int(round(share)))


def shard_layout(config, process_index: int, process_count: int) -> tuple[int, int, int]:
  """(number of logical shards, first shard of this process, shards it owns)."""
  num_shards = config.data.get('shards', 0) or process_count
  if num_shards % process_count:
    raise ValueError(f'config.data.shards={num_shards} is not a multiple of the process count '
                     f'{process_count}')
  if config.train.batch_size % num_shards:
    raise ValueError(f'config.train.batch_size={config.train.batch_size} is not divisible by '
                     f'the {num_shards} input shards (config.data.shards, default the process '
                     'count)')
  owned = num_shards // process_count
  return num_shards, process_index * owned, owned


def _allow_grain_flags() -> None:
  # grain's worker processes read absl flags; outside an absl app (tests, notebooks,
  # mm1_jax.load) nothing parsed them, so accept their defaults.
  from absl import flags  # pylint: disable=g-import-not-at-top
  if not flags.FLAGS.is_parsed():
    flags.FLAGS.mark_as_parsed()


def _open_checked(config, name: str):
  """Opens a source, failing with the config key and path when it cannot serve data."""
  spec = config.data.sources[name]
  path = resolve_path(config, spec.path)
  where = f'config.data.sources.{name} (kind={spec.kind!r}, path={path!r})'
  if not os.path.isdir(path):
    raise FileNotFoundError(f'{where}: directory does not exist')
  try:
    source = open_source(path, spec.kind)
  except (FileNotFoundError, ValueError) as error:
    raise ValueError(f'{where}: cannot open the source: {error}') from error
  if len(source) == 0:
    raise ValueError(f'{where}: the source has no records')
  return source, where


def _check_usable(source, to_document, where: str) -> None:
  reasons = collections.Counter()
  for index in range(min(len(source), _PROBE_LIMIT)):
    result = to_document.map(source[index])
    if not isinstance(result, Skipped):
      return
    reasons[result.slug] += 1
  counted = ', '.join(f'{slug} {n}' for slug, n in reasons.most_common())
  raise ValueError(f'{where}: none of the first {min(len(source), _PROBE_LIMIT)} records is '
                   f'usable ({counted}; data.max_image_pixels='
                   f'{to_document.encoder.max_pixels})')


def record_to_document(config, name: str, tokenizer) -> RecordToDocument:
  """The decode-resize-tokenize transform of one configured source."""
  return RecordToDocument(
      config.data.sources[name].kind, tokenizer, image_size=config.model.vit.image_size,
      num_image_tokens=config.model.connector.num_tokens,
      image_token_id=config.model.image_token_id,
      resize=config.data.get('resize', 'crop'),
      max_pixels=config.data.get('max_image_pixels', images.DEFAULT_MAX_IMAGE_PIXELS))


def open_usable_source(config, name: str, tokenizer):
  """Opens a configured source and checks at start-up that it yields documents."""
  source, where = _open_checked(config, name)
  _check_usable(source, record_to_document(config, name, tokenizer), where)
  return source


# Kinds that data.packing='fill' may cut to fill a row (anywhere outside image runs). A
# caption cut from its image teaches nothing, so captions are always packed whole.
CUTTABLE_KINDS = ('interleaved', 'text')


def packing_mode(config, name: str) -> str:
  """'fill' or 'whole' for one source: config.data.packing, 'whole' for captions."""
  mode = config.data.get('packing', 'fill')
  return mode if config.data.sources[name].kind in CUTTABLE_KINDS else 'whole'


def pack_rows(config, name: str, documents: grain.IterDataset, tokenizer) -> grain.IterDataset:
  """Documents (or Skipped markers) of one source -> packed contract rows."""
  return packing.pack_documents(
      documents, seq_len=config.data.seq_len, max_images=config.data.max_images,
      num_image_tokens=config.model.connector.num_tokens,
      image_token_id=config.model.image_token_id, pad_id=tokenizer.pad_id, source_name=name,
      long_documents=config.data.get('long_documents', 'split'),
      mode=packing_mode(config, name), min_piece_tokens=config.data.get('min_piece_tokens'))


def _source_rows(config, name: str, source, source_id: int, tokenizer, *, shard_index: int,
                 num_shards: int, num_workers: int,
                 read_options: grain.ReadOptions = READ_OPTIONS) -> grain.IterDataset:
  records = shuffled_records(source, seed=source_seed(config, name),
                             process_index=shard_index, process_count=num_shards)
  documents = records.map(record_to_document(config, name, tokenizer))
  documents = documents.to_iter_dataset(read_options)
  if num_workers:
    _allow_grain_flags()
    documents = documents.mp_prefetch(grain.MultiprocessingOptions(num_workers=num_workers))
  return pack_rows(config, name, documents, tokenizer).map(_AddSourceId(source_id))


class _AddSourceId(grain.transforms.Map):

  def __init__(self, source_id: int):
    self.source_id = source_id

  def map(self, row: dict) -> dict:
    return {**row, 'source_id': np.int32(self.source_id)}


class _ToBatchContract(grain.transforms.Map):
  """Renames the per-row skip total to the batch key the trainer logs."""

  def map(self, batch: dict) -> dict:
    batch = dict(batch)
    batch['skipped_records'] = batch.pop('num_skipped').astype(np.int32)
    return batch


def make_dataset(config, *, process_index: int = 0, process_count: int = 1) -> grain.IterDataset:
  """The mixed, packed, batched training input for one process; yields numpy batch dicts."""
  if not 0 <= process_index < process_count:
    raise ValueError(f'process_index={process_index} is not in [0, {process_count})')
  if config.train.batch_size % process_count:
    raise ValueError(f'config.train.batch_size={config.train.batch_size} is not divisible by '
                     f'the process count {process_count}')
  num_shards, first_shard, owned = shard_layout(config, process_index, process_count)
  names = source_names(config)
  if not names:
    raise ValueError('config.data.weights: no source has a weight > 0')
  tokenizer = load_tokenizer(config)
  streams = {}
  for source_id, name in enumerate(names):
    source = open_usable_source(config, name, tokenizer)
    workers = _workers_per_stream(config, name, owned)
    streams[name] = [
        _source_rows(config, name, source, source_id, tokenizer, shard_index=shard,
                     num_shards=num_shards, num_workers=workers)
        for shard in range(first_shard, first_shard + owned)]
  mixed = mixing.ExactMixIterDataset(
      streams, {name: float(config.data.weights[name]) for name in names},
      batch_size=config.train.batch_size, num_shards=num_shards, first_shard=first_shard)
  # Batches are assembled in a thread while the trainer works on the previous one.
  prefetched = grain.experimental.ThreadPrefetchIterDataset(mixed, prefetch_buffer_size=2)
  return prefetched.map(_ToBatchContract())


def make_iterator(config, *, process_index: int = 0,
                  process_count: int = 1) -> grain.DatasetIterator:
  """The training input of config.data.backend, with get_state()/set_state().

  'grain' (default): a grain DatasetIterator over `make_dataset`. 'seqio': the same sources
  as seqio Tasks mixed by a seqio Mixture (data_pipelines/seqio_tasks.py).
  """
  backend = config.data.get('backend', 'grain')
  if backend == 'seqio':
    from data_pipelines import seqio_tasks  # pylint: disable=g-import-not-at-top
    return seqio_tasks.make_iterator(config, process_index=process_index,
                                     process_count=process_count)
  if backend != 'grain':
    raise ValueError(f"config.data.backend: unknown backend {backend!r} ('grain', 'seqio')")
  return iter(make_dataset(config, process_index=process_index, process_count=process_count))
