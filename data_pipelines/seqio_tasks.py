"""The same prepared sources as SeqIO Tasks and a Mixture: config.data.backend = 'seqio'.

One `seqio.Task` per configured source with weight > 0:

  source         seqio.FunctionDataSource over the prepared TFDS dataset. TFDS cannot
                 `as_dataset()` array_record files, so records are read by random access
                 (`sources.open_source`, tfds.data_source underneath) in the same seeded
                 shuffled order as the grain backend, as a tf.data stream of raw records.
  preprocessors  `decode_and_pack`: decode/resize/tokenize (documents.RecordToDocument,
                 under data.max_image_pixels) and pack (packing.pack_documents) with the
                 very code the grain backend uses, skip and drop counts per reason included
                 (skip_reasons.py): batches carry the same keys as grain's.
  features       OUTPUT_FEATURES, identical for every task (what a seqio Mixture asserts).

A `seqio.Mixture` samples rows of the tasks with the config's weights as rates
(tf.data sample_from_datasets: random draws, so fractions match the weights up to sampling
noise, unlike the grain backend's exact counts). Each process reads its
`seqio.ShardInfo` slice of the records. The iterator's state is the number of batches
read; a restore rebuilds the (deterministic, seeded) pipeline and skips that many.
"""

from __future__ import annotations

import hashlib
import json
from collections.abc import Iterator

import grain
import numpy as np
import seqio
import tensorflow as tf

from data_pipelines import grain_pipeline
from data_pipelines import skip_reasons
from data_pipelines.documents import Document

OUTPUT_DTYPES = {
    'tokens': tf.int32, 'targets': tf.int32, 'loss_mask': tf.float32,
    'segment_ids': tf.int32, 'positions': tf.int32, 'images': tf.uint8,
    'image_valid': tf.bool, 'source_id': tf.int32, 'num_skipped': tf.int32,
    skip_reasons.SKIPPED_KEY: tf.int32, skip_reasons.DROPPED_KEY: tf.int32,
}
_RANKS = {'images': 4, 'source_id': 0, 'num_skipped': 0}  # the rest: rank 1

_RECORD_SIGNATURES = {
    'captions': {'id': tf.TensorSpec((), tf.string), 'image': tf.TensorSpec((), tf.string),
                 'caption': tf.TensorSpec((), tf.string)},
    'interleaved': {'id': tf.TensorSpec((), tf.string),
                    'texts': tf.TensorSpec((None,), tf.string),
                    'images': tf.TensorSpec((None,), tf.string)},
    'text': {'id': tf.TensorSpec((), tf.string), 'text': tf.TensorSpec((), tf.string)},
}


def output_features(vocab_size: int) -> dict[str, seqio.Feature]:
  vocabulary = seqio.PassThroughVocabulary(size=vocab_size)
  return {key: seqio.Feature(vocabulary, add_eos=False, dtype=dtype,
                             rank=_RANKS.get(key, 1))
          for key, dtype in OUTPUT_DTYPES.items()}


class _PythonIterable(grain.IterDataset):
  """A grain IterDataset over a Python iterable (no state: SeqIO resumes by skipping)."""

  def __init__(self, iterable):
    super().__init__([])
    self._iterable = iterable

  def __iter__(self) -> grain.DatasetIterator:
    return _PythonIterator(iter(self._iterable))


class _PythonIterator(grain.DatasetIterator):
  """The packer records upstream states; this one's is only a count (never restored)."""

  def __init__(self, iterator):
    super().__init__([])
    self._iterator = iterator
    self._consumed = 0

  def __next__(self):
    element = next(self._iterator)
    self._consumed += 1
    return element

  def get_state(self):
    return {'consumed': self._consumed}

  def set_state(self, state):
    raise NotImplementedError('the seqio backend resumes by skipping batches')


def _text(value) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def _record_from_numpy(kind: str, record: dict) -> dict:
  example = {'id': _text(record['id'])}
  if kind == 'captions':
    example.update(image=bytes(record['image']), caption=_text(record['caption']))
  elif kind == 'interleaved':
    example.update(texts=[_text(t) for t in record['texts']],
                   images=[bytes(b) for b in record['images']])
  else:
    example['text'] = _text(record['text'])
  return example


def make_task(config, name: str, source_id: int, tokenizer) -> seqio.Task:
  """The seqio Task of one configured source."""
  kind = config.data.sources[name].kind
  source = grain_pipeline.open_usable_source(config, name, tokenizer)
  source_seed = grain_pipeline.source_seed(config, name)

  def records_fn(split: str, shuffle_files: bool, seed=None) -> tf.data.Dataset:
    del split, shuffle_files, seed  # one split; the order is the config's seeded one
    order = grain_pipeline.shuffled_records(source, seed=source_seed)
    def records():
      for index in range(len(order)):  # infinite: len() is sys.maxsize after repeat()
        yield order[index]
    return tf.data.Dataset.from_generator(records,
                                          output_signature=_RECORD_SIGNATURES[kind])

  def decode_and_pack(dataset: tf.data.Dataset) -> tf.data.Dataset:
    to_document = grain_pipeline.record_to_document(config, name, tokenizer)

    def rows():
      documents = (to_document.map(_record_from_numpy(kind, r))
                   for r in dataset.as_numpy_iterator())
      packed = grain_pipeline.pack_rows(config, name, _PythonIterable(documents), tokenizer)
      for row in packed:
        yield {**row, 'source_id': np.int32(source_id)}

    seq_len, max_images = config.data.seq_len, config.data.max_images
    size = config.model.vit.image_size
    shapes = {'images': (max_images, size, size, 3), 'image_valid': (max_images,),
              'source_id': (), 'num_skipped': (),
              skip_reasons.SKIPPED_KEY: (skip_reasons.NUM_REASONS,),
              skip_reasons.DROPPED_KEY: (skip_reasons.NUM_REASONS,)}
    signature = {key: tf.TensorSpec(shapes.get(key, (seq_len,)), dtype)
                 for key, dtype in OUTPUT_DTYPES.items()}
    return tf.data.Dataset.from_generator(rows, output_signature=signature)

  return seqio.Task(
      f'{_prefix(config)}_{name}',
      source=seqio.FunctionDataSource(records_fn, splits=('train',),
                                      num_input_examples={'train': len(source)}),
      output_features=output_features(tokenizer.vocab_size),
      preprocessors=[decode_and_pack],
      shuffle_buffer_size=None)


def _prefix(config) -> str:
  """Task names unique to this data config, so that several configs can coexist."""
  digest = hashlib.sha1(config.data.to_json(sort_keys=True).encode()).hexdigest()[:10]
  return f'mm1_{digest}'


def make_mixture(config, tokenizer=None) -> seqio.Mixture:
  """Registers (once) the Tasks and the Mixture of the config's sources and weights."""
  tokenizer = tokenizer or grain_pipeline.load_tokenizer(config)
  names = grain_pipeline.source_names(config)
  if not names:
    raise ValueError('config.data.weights: no source has a weight > 0')
  mixture_name = f'{_prefix(config)}_mixture'
  if mixture_name in seqio.MixtureRegistry.names():
    return seqio.get_mixture_or_task(mixture_name)
  tasks = []
  for source_id, name in enumerate(names):
    task = make_task(config, name, source_id, tokenizer)
    if task.name in seqio.TaskRegistry.names():
      seqio.TaskRegistry.remove(task.name)
    seqio.TaskRegistry.add_provider(task.name, task)
    tasks.append((task.name, float(config.data.weights[name])))
  return seqio.MixtureRegistry.add(mixture_name, tasks)


class SeqioIterator:
  """Batches of the seqio Mixture as numpy dicts; state = batches read (JSON bytes).

  Not a grain DatasetIterator, so grain's Orbax handler stores get_state() as given:
  UTF-8 JSON bytes.
  """

  def __init__(self, config, *, process_index: int = 0, process_count: int = 1):
    if config.train.batch_size % process_count:
      raise ValueError(f'config.train.batch_size={config.train.batch_size} is not divisible '
                       f'by the process count {process_count}')
    self._config = config
    self._shard = seqio.ShardInfo(index=process_index, num_shards=process_count)
    self._batch_size = config.train.batch_size // process_count
    self._mixture = make_mixture(config)
    self._batches = 0
    self._iterator = self._build()

  def _build(self) -> Iterator[dict]:
    dataset = self._mixture.get_dataset(
        None, split='train', shuffle=False, seed=int(self._config.data.seed),
        shard_info=self._shard, num_epochs=None, log_mixing_proportions=False)
    return dataset.batch(self._batch_size, drop_remainder=True).as_numpy_iterator()

  def __iter__(self):
    return self

  def __next__(self) -> dict[str, np.ndarray]:
    batch = dict(next(self._iterator))
    batch['skipped_records'] = batch.pop('num_skipped').astype(np.int32)
    self._batches += 1
    return batch

  def get_state(self) -> bytes:
    return json.dumps({'backend': 'seqio', 'batches': self._batches}).encode()

  def set_state(self, state: bytes | dict) -> None:
    if isinstance(state, (bytes, str)):
      state = json.loads(state)
    if state.get('backend') != 'seqio':
      raise ValueError('the saved data iterator state is not from the seqio backend '
                       '(config.data.backend changed on resume?)')
    self._iterator = self._build()
    self._batches = 0
    for _ in range(int(state['batches'])):
      next(self)

  def start_prefetch(self) -> None:
    """Called by grain's Orbax handler after a restore; tf.data prefetches by itself."""

  def close(self) -> None:
    self._iterator = iter(())


def make_iterator(config, *, process_index: int = 0, process_count: int = 1) -> SeqioIterator:
  return SeqioIterator(config, process_index=process_index, process_count=process_count)
