"""Prepared training sources: TFDS datasets in array_record format, one builder per kind.

Every importer (synthetic, WebDataset, COCO, OBELICS-style, text) ends in `write_source`,
and the training input reads them back with `open_source`, which gives random access
without TensorFlow. Stored schemas (what `write_source` takes and `Source[i]` returns):

  captions:    {'id': str, 'image': bytes (encoded PNG/JPEG), 'caption': str}
  interleaved: {'id': str, 'texts': list[str], 'images': list[bytes]}
               aligned lists (OBELICS style): at each index exactly one of texts[i] and
               images[i] is non-empty, the other is '' / b''.
  text:        {'id': str, 'text': str}

On disk: OUT_DIR/mm1_<kind>/1.0.0/. TFDS writes into OUT_DIR/mm1_<kind>/incomplete.*
and renames it when done, so a killed write leaves only an `incomplete.*` directory,
which `open_source` never treats as a dataset.
"""

import contextlib
import io
import os
import re
import shutil
import tempfile
from typing import Iterable

import numpy as np
import tensorflow_datasets as tfds
from tensorflow_datasets.core.utils import tqdm_utils

KINDS = ('captions', 'interleaved', 'text')

_VERSION = '1.0.0'
_SPLIT = 'train'
_VERSION_DIR = re.compile(r'^\d+\.\d+\.\d+$')


def _bytes_feature():
  return tfds.features.Tensor(shape=(), dtype=np.object_)


def _features(kind: str) -> tfds.features.FeaturesDict:
  if kind == 'captions':
    spec = {'id': tfds.features.Text(), 'image': _bytes_feature(),
            'caption': tfds.features.Text()}
  elif kind == 'interleaved':
    spec = {'id': tfds.features.Text(),
            'texts': tfds.features.Sequence(tfds.features.Text()),
            'images': tfds.features.Sequence(_bytes_feature())}
  else:
    spec = {'id': tfds.features.Text(), 'text': tfds.features.Text()}
  return tfds.features.FeaturesDict(spec)


class _SourceBuilder(tfds.core.GeneratorBasedBuilder, skip_registration=True):
  """Writes the examples handed to it, in the order given (no shuffling at write time)."""

  VERSION = tfds.core.Version(_VERSION)
  KIND = ''

  def __init__(self, *, examples: Iterable[dict] = (), **kwargs):
    self._examples = examples
    super().__init__(**kwargs)

  # No code directory and so no download checksums: these builders download nothing.
  # (TFDS's default lookup also needs the `importlib_resources` backport on Python 3.11.)
  @tfds.core.utils.classproperty
  @classmethod
  def code_path(cls):
    return None

  def _info(self) -> tfds.core.DatasetInfo:
    return tfds.core.DatasetInfo(
        builder=self,
        description=f'mm1-jax {self.KIND} source (see data_pipelines/sources.py).',
        features=_features(self.KIND),
        disable_shuffling=True,  # keep the writer's order: record i is the i-th example
    )

  def _split_generators(self, dl_manager):
    del dl_manager  # nothing to download: the examples are handed in
    return {_SPLIT: self._generate_examples()}

  def _generate_examples(self):
    seen_ids = set()
    for index, example in enumerate(self._examples):
      _validate(self.KIND, example, index)
      if example['id'] in seen_ids:
        raise ValueError(f'{self.KIND} example id {example["id"]!r} occurs twice.')
      seen_ids.add(example['id'])
      yield index, example


class Mm1Captions(_SourceBuilder, skip_registration=True):
  KIND = 'captions'


class Mm1Interleaved(_SourceBuilder, skip_registration=True):
  KIND = 'interleaved'


class Mm1Text(_SourceBuilder, skip_registration=True):
  KIND = 'text'


_BUILDERS = {'captions': Mm1Captions, 'interleaved': Mm1Interleaved, 'text': Mm1Text}
_KIND_OF_BUILDER_NAME = {builder.name: kind for kind, builder in _BUILDERS.items()}


def _check_kind(kind: str) -> None:
  if kind not in KINDS:
    raise ValueError(f'Unknown source kind {kind!r}; expected one of {KINDS}.')


def _validate(kind: str, example: dict, index: int) -> None:
  """Fails early, naming the example, instead of deep inside TFDS serialisation."""
  expected = {'captions': {'id': str, 'image': bytes, 'caption': str},
              'interleaved': {'id': str, 'texts': list, 'images': list},
              'text': {'id': str, 'text': str}}[kind]
  where = f'{kind} example {index} (id {example.get("id")!r})'
  if set(example) != set(expected):
    raise ValueError(f'{where} has keys {sorted(example)}; expected {sorted(expected)}.')
  for key, value_type in expected.items():
    if not isinstance(example[key], value_type):
      raise ValueError(f'{where}: {key!r} must be {value_type.__name__}, '
                       f'got {type(example[key]).__name__}.')
  if kind == 'captions' and not example['image']:
    raise ValueError(f'{where} has empty image bytes.')
  if kind == 'interleaved':
    texts, images = example['texts'], example['images']
    if len(texts) != len(images) or not texts:
      raise ValueError(f'{where}: texts and images must be non-empty lists of equal '
                       f'length, got {len(texts)} and {len(images)}.')
    for i, (text, image) in enumerate(zip(texts, images)):
      if not isinstance(text, str) or not isinstance(image, bytes):
        raise ValueError(f'{where}: item {i} must be (str, bytes), '
                         f'got ({type(text).__name__}, {type(image).__name__}).')
      if bool(text) == bool(image):
        raise ValueError(f'{where}: item {i} must have exactly one of text and image set.')


@contextlib.contextmanager
def _quiet_tfds():
  """Silences TFDS's banner and progress bars; callers show their own progress."""
  was_active = getattr(tqdm_utils, '_active', True)
  tfds.display_progress_bar(False)
  try:
    with contextlib.redirect_stdout(io.StringIO()):
      yield
  finally:
    tfds.display_progress_bar(was_active)


def write_source(kind: str, examples: Iterable[dict], out_dir: str, *,
                 num_shards: int | None = 1) -> str:
  """Writes `examples` (dicts in the schema of `kind`) as a TFDS dataset under `out_dir`.

  num_shards: array_record files to write; None lets TFDS choose from the data size.

  Raises FileExistsError if `out_dir` already holds a complete source of this kind, and
  ValueError (naming the example) for an example that does not fit the schema.
  Returns `out_dir`.
  """
  _check_kind(kind)
  if num_shards is not None and num_shards < 1:
    raise ValueError(f'num_shards must be >= 1, got {num_shards}.')
  out_dir = os.fspath(out_dir)
  builder_cls = _BUILDERS[kind]
  builder_dir = os.path.join(out_dir, builder_cls.name)
  if _complete_versions(builder_dir):
    raise FileExistsError(
        f'{out_dir!r} already holds a {kind} source; delete it or choose another directory.')
  # Leftovers of a killed write: the dataset they belonged to was never completed.
  if os.path.isdir(builder_dir):
    for entry in os.listdir(builder_dir):
      if entry.startswith('incomplete.'):
        shutil.rmtree(os.path.join(builder_dir, entry), ignore_errors=True)
  os.makedirs(out_dir, exist_ok=True)
  builder = builder_cls(examples=examples, data_dir=out_dir, file_format='array_record')
  with tempfile.TemporaryDirectory(prefix='mm1-tfds-downloads-') as download_dir, \
      _quiet_tfds():
    builder.download_and_prepare(
        download_dir=download_dir,
        download_config=tfds.download.DownloadConfig(num_shards=num_shards))
  return out_dir


def _complete_versions(builder_dir: str) -> list[str]:
  """Version directories below `builder_dir` that TFDS finished (renamed into place)."""
  if not os.path.isdir(builder_dir):
    return []
  return sorted(
      os.path.join(builder_dir, entry) for entry in os.listdir(builder_dir)
      if _VERSION_DIR.match(entry)
      and os.path.isfile(os.path.join(builder_dir, entry, 'dataset_info.json')))


def _find_datasets(path: str) -> dict[str, str]:
  """{kind: version dir} for the complete sources at `path`.

  `path` may be the out_dir given to `write_source`, its `mm1_<kind>` directory, or the
  version directory itself.
  """
  path = os.path.normpath(path)
  name = os.path.basename(path)
  if _VERSION_DIR.match(name):
    kind = _KIND_OF_BUILDER_NAME.get(os.path.basename(os.path.dirname(path)))
    if kind and os.path.isfile(os.path.join(path, 'dataset_info.json')):
      return {kind: path}
    return {}
  if name in _KIND_OF_BUILDER_NAME:
    versions = _complete_versions(path)
    return {_KIND_OF_BUILDER_NAME[name]: versions[-1]} if versions else {}
  found = {}
  for builder_name, kind in _KIND_OF_BUILDER_NAME.items():
    versions = _complete_versions(os.path.join(path, builder_name))
    if versions:
      found[kind] = versions[-1]
  return found


def open_source(path: str, kind: str | None = None) -> 'Source':
  """Opens the source written by `write_source` into `path` (lazily: nothing is read yet).

  With `kind=None` the directory must hold exactly one source kind.
  """
  if kind is not None:
    _check_kind(kind)
  path = os.fspath(path)
  found = _find_datasets(path)
  if not found:
    what = f'{kind} source' if kind else 'source'
    raise FileNotFoundError(
        f'No complete {what} at {path!r}. Create one with '
        f'`python -m data_pipelines.prepare synthetic --out DIR` (the embedded data; '
        f'sources in DIR/captions, DIR/interleaved, DIR/text) or another '
        f'`python -m data_pipelines.prepare` importer.')
  if kind is None:
    if len(found) > 1:
      raise ValueError(f'{path!r} holds several source kinds {sorted(found)}; pass kind=.')
    (kind, dataset_dir), = found.items()
  elif kind not in found:
    raise ValueError(
        f'{path!r} holds a source of kind {" and ".join(sorted(found))}, not the {kind} '
        'source asked for.')
  else:
    dataset_dir = found[kind]
  return Source(path, kind, dataset_dir)


def _to_str(value) -> str:
  return value.decode('utf-8') if isinstance(value, bytes) else str(value)


def _to_bytes(value) -> bytes:
  return value if isinstance(value, bytes) else bytes(value)


class Source:
  """Random access to one prepared source; records come back in the stored schema.

  Picklable: the array_record handle is opened on first use and dropped when pickled,
  so grain worker processes open their own.
  """

  def __init__(self, path: str, kind: str, dataset_dir: str):
    self.path = path
    self.kind = kind
    self.dataset_dir = dataset_dir
    self._records = None

  def _data_source(self):
    if self._records is None:
      builder = tfds.builder_from_directory(self.dataset_dir)
      self._records = builder.as_data_source(_SPLIT)
    return self._records

  def __len__(self) -> int:
    return len(self._data_source())

  def __getitem__(self, index: int) -> dict:
    length = len(self)
    if index < 0:
      index += length
    if not 0 <= index < length:
      raise IndexError(f'index {index} out of range for {self.kind} source of {length}.')
    return self._decode(self._data_source()[int(index)])

  def _decode(self, record: dict) -> dict:
    example = {'id': _to_str(record['id'])}
    if self.kind == 'captions':
      example['image'] = _to_bytes(record['image'])
      example['caption'] = _to_str(record['caption'])
    elif self.kind == 'interleaved':
      example['texts'] = [_to_str(t) for t in record['texts']]
      example['images'] = [_to_bytes(b) for b in record['images']]
    else:
      example['text'] = _to_str(record['text'])
    return example

  def __getstate__(self):
    state = self.__dict__.copy()
    state['_records'] = None
    return state

  def __repr__(self):
    return f'Source(kind={self.kind!r}, path={self.path!r})'
