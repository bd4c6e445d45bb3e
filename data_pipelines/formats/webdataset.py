"""WebDataset tar shards (as img2dataset writes them) -> a captions source.

A sample is the run of consecutive tar members sharing a key: the member's path up to the
first dot of its file name (`00001/000010023.jpg` -> key `00001/000010023`, extension
`jpg`). An image (`jpg`, `jpeg`, `png` or `webp`) and a caption (`txt`, else the
`caption` or `text` field of `json`) make one record, id `<shard name>/<key>`.

Only members of those extensions are read, and only up to a size: any other member (a
video, an `.npy`) is skipped by its header, its data never read (OTHER_MEMBER), and an
image member over `image_files.max_image_bytes(max_pixels)` or a caption member over
MAX_CAPTION_MEMBER_BYTES likewise (OVER_SIZE). Each skipped member is counted and named
(`<shard>/<member>`). A sample without an image or a caption, with a caption that is not
valid UTF-8, or whose image fails the decode check with the pixel bound is skipped and
counted with its reason. The stored image bytes are the member's original bytes.
"""

from __future__ import annotations

import functools
import json
import os
import tarfile

from data_pipelines import images as images_lib
from data_pipelines.formats import common, image_files
from data_pipelines.formats.common import UnitResult

IMAGE_EXTENSIONS = ('jpg', 'jpeg', 'png', 'webp')
CAPTION_EXTENSIONS = ('txt', 'json')
# A caption is a sentence or a paragraph; a caption member larger than this is not one.
MAX_CAPTION_MEMBER_BYTES = 2**20

OTHER_MEMBER = 'tar member of another type'
OVER_SIZE = 'tar member over the size bound'
NO_IMAGE = 'sample without image'
NO_CAPTION = 'sample without caption'
MALFORMED_JSON = 'malformed json caption'
DAMAGED_TAR = 'damaged tar data (the samples before it are kept)'


def split_key(member_name: str) -> tuple[str, str]:
  directory, base = os.path.split(member_name)
  stem, _, extension = base.partition('.')
  return os.path.join(directory, stem), extension.lower()


def _caption(files: dict[str, bytes]) -> tuple[str | None, str | None]:
  """(caption, None), or (None, the reason there is none)."""
  if 'txt' in files:
    try:
      text = files['txt'].decode('utf-8')
    except UnicodeDecodeError:
      return None, common.INVALID_UTF8
  elif 'json' in files:
    try:
      meta = json.loads(files['json'])  # bytes: UTF-8/16/32 detected, else an error
    except (json.JSONDecodeError, UnicodeDecodeError):
      return None, MALFORMED_JSON
    text = (meta.get('caption') or meta.get('text')) if isinstance(meta, dict) else None
    if not isinstance(text, str):
      return None, NO_CAPTION
  else:
    return None, NO_CAPTION
  if not common.is_valid_text(text):
    return None, common.INVALID_UTF8
  text = text.strip()
  return (text, None) if text else (None, NO_CAPTION)


def _to_example(where: str, files: dict[str, bytes], max_pixels: int, result: UnitResult):
  where = common.safe_name(where)  # tarfile gives non-UTF-8 member names as surrogates
  image = next((files[e] for e in IMAGE_EXTENSIONS if e in files), None)
  if image is None:
    result.skip(NO_IMAGE, where)
    return
  caption, reason = _caption(files)
  if reason is None:
    reason = image_files.check_bytes(image, max_pixels)
  if reason:
    result.skip(reason, where)
  else:
    result.examples.append({'id': where, 'image': image, 'caption': caption})


def _member_bound(extension: str, max_pixels: int) -> int | None:
  """The most bytes read of a member with this extension (0: no bound); None: not read."""
  if extension in IMAGE_EXTENSIONS:
    return image_files.max_image_bytes(max_pixels)
  if extension in CAPTION_EXTENSIONS:
    return MAX_CAPTION_MEMBER_BYTES
  return None


def read_shard(unit, *, max_pixels: int = images_lib.DEFAULT_MAX_IMAGE_PIXELS) -> UnitResult:
  """All samples of one tar shard; a damaged shard keeps the samples before the damage.

  unit: the shard's path, or (path, the shard's name in ids).
  """
  path, shard = (unit if isinstance(unit, tuple)
                 else (unit, common.safe_name(os.path.basename(unit))))
  result = UnitResult()
  key, files = None, {}
  try:
    tar = tarfile.open(path, 'r:*')
  except (tarfile.TarError, EOFError, OSError):
    result.skip(common.UNREADABLE_FILE, shard)
    return result
  try:
    with tar:
      # Iterating reads each header and seeks past the member's data; only the
      # members read below are read.
      for member in tar:
        if not member.isfile():
          continue
        member_key, extension = split_key(member.name)
        if member_key != key:
          if key is not None:
            _to_example(f'{shard}/{key}', files, max_pixels, result)
          key, files = member_key, {}
        bound = _member_bound(extension, max_pixels)
        if bound is None:
          result.skip(OTHER_MEMBER, f'{shard}/{member.name}')
        elif bound and member.size > bound:
          result.skip(OVER_SIZE, f'{shard}/{member.name}')
        else:
          files[extension] = tar.extractfile(member).read()
  except (tarfile.TarError, EOFError, OSError):
    result.skip(DAMAGED_TAR, shard)
    return result  # the partial sample at the damage is dropped with it
  if key is not None:
    _to_example(f'{shard}/{key}', files, max_pixels, result)
  return result


def reader(max_pixels: int):
  """read_shard with a pixel bound, picklable for worker processes."""
  return functools.partial(read_shard, max_pixels=max_pixels)
