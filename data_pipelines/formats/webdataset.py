"""WebDataset tar shards (as img2dataset writes them) -> a captions source.

A sample is the run of consecutive tar members sharing a key: the member's path up to the
first dot of its file name (`00001/000010023.jpg` -> key `00001/000010023`, extension
`jpg`). An image (`jpg`, `jpeg`, `png` or `webp`) and a caption (`txt`, else the
`caption` or `text` field of `json`) make one record; a sample without either is skipped
and counted. Image bytes are stored as they are and decoded later by the pipeline.
"""

from __future__ import annotations

import json
import os
import tarfile

from data_pipelines.formats.common import UnitResult

IMAGE_EXTENSIONS = ('jpg', 'jpeg', 'png', 'webp')


def split_key(member_name: str) -> tuple[str, str]:
  directory, base = os.path.split(member_name)
  stem, _, extension = base.partition('.')
  return os.path.join(directory, stem), extension.lower()


def _caption(files: dict[str, bytes]) -> str | None:
  if 'txt' in files:
    return files['txt'].decode('utf-8', errors='replace').strip()
  if 'json' in files:
    try:
      meta = json.loads(files['json'])
    except (json.JSONDecodeError, UnicodeDecodeError):
      return None
    if isinstance(meta, dict):
      text = meta.get('caption') or meta.get('text')
      return text.strip() if isinstance(text, str) else None
  return None


def _to_example(shard: str, key: str, files: dict[str, bytes], result: UnitResult):
  image = next((files[e] for e in IMAGE_EXTENSIONS if files.get(e)), None)
  caption = _caption(files)
  if image is None:
    result.skip('sample without image')
  elif not caption:
    result.skip('sample without caption')
  else:
    result.examples.append({'id': f'{shard}/{key}', 'image': image, 'caption': caption})


def read_shard(path: str) -> UnitResult:
  """All samples of one tar shard; a truncated shard keeps the samples before the damage."""
  result = UnitResult()
  shard = os.path.basename(path)
  key, files = None, {}
  try:
    with tarfile.open(path, 'r:*') as tar:
      for member in tar:
        if not member.isfile():
          continue
        member_key, extension = split_key(member.name)
        if member_key != key:
          if key is not None:
            _to_example(shard, key, files, result)
          key, files = member_key, {}
        files[extension] = tar.extractfile(member).read()
  except (tarfile.TarError, EOFError, OSError):
    result.skip('unreadable tar data')
    return result  # the partial sample at the damage is dropped with it
  if key is not None:
    _to_example(shard, key, files, result)
  return result
