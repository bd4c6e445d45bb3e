"""OBELICS-style and MMC4-style documents -> an interleaved source.

OBELICS style (parquet or jsonl): aligned lists `texts` and `images` of equal length; at
each index one of them is set, the other null. An image is given as bytes, as a
`data:...;base64,` URL, or as a path relative to the images root (--images, else the
input file's directory); a `{'bytes': ..., 'path': ...}` struct as the datasets library
writes it also works.

MMC4 style (jsonl): `text_list` (the sentences) and `image_info`, a list of
`{'image_name': ..., 'matched_text_index': i}` (or `image_bytes` in place of the name);
each image goes just before sentence i, 0 <= i < len(text_list).

Image paths are read only inside the images root (see image_files.py), and every image
must pass the decode check with the pixel bound; the stored bytes are the original ones.
A document keeps the images that pass and drops the others, each counted with its reason
(the ids named are the documents'); an MMC4 image whose `matched_text_index` is missing,
not an integer or out of range is dropped and counted the same way. A document is
skipped and counted when a field has the wrong type (e.g. `texts` a string rather than a
list: it is never read character by character), when `texts` and `images` differ in
length or set both at one index, when a text is not valid UTF-8, or when nothing is left
of it. Record ids are `<file name>/<row>` (row: 0-based line or parquet row).
"""

from __future__ import annotations

import base64
import binascii
import functools
import os
import re

from data_pipelines import images as images_lib
from data_pipelines.formats import common, image_files
from data_pipelines.formats.common import UnitResult

IMAGE_URL = 'image given as a URL (download the images first)'
MALFORMED_BASE64 = 'malformed base64 image'
BAD_TEXT_INDEX = 'matched_text_index missing or not an integer'
TEXT_INDEX_OUT_OF_RANGE = 'matched_text_index out of range'
LENGTHS_DIFFER = 'texts and images of different lengths'
BOTH_SET = 'text and image at the same index'
NEITHER_FORMAT = 'record with neither texts/images nor text_list'
EMPTY_DOCUMENT = 'empty document'

_URL = re.compile(r'^[a-zA-Z][a-zA-Z0-9+.-]*://')


class _SkipRecord(Exception):
  """The record is malformed; `reason` says how."""

  def __init__(self, reason: str):
    super().__init__(reason)
    self.reason = reason


def _list_field(record: dict, field: str) -> list:
  """record[field] as a list (absent or null: empty); any other type skips the record."""
  value = record.get(field)
  if value is None:
    return []
  if not isinstance(value, list):
    raise _SkipRecord(common.wrong_type(field))
  return value


def _text(value, field: str) -> str:
  """A text part (None: no text); a non-string or invalid UTF-8 skips the record."""
  if value is None:
    return ''
  if not isinstance(value, str):
    raise _SkipRecord(common.wrong_type(field))
  if not common.is_valid_text(value):
    raise _SkipRecord(common.INVALID_UTF8)
  return value if value.strip() else ''


def _image_value(value, field: str) -> bytes | str | None:
  """The image an image field gives (bytes, or a path/URL string), None when unset.

  Any other type skips the record.
  """
  if isinstance(value, dict):  # HF datasets Image struct
    if not {'bytes', 'path'} & set(value):
      raise _SkipRecord(common.wrong_type(field))
    value = value.get('bytes') or value.get('path')
  if value is None or value == '' or value == b'':
    return None
  if isinstance(value, bytearray):
    value = bytes(value)
  if not isinstance(value, (bytes, str)):
    raise _SkipRecord(common.wrong_type(field))
  return value


def _obelics_plan(record: dict) -> tuple[list, list]:
  """(parts as ('text', str) / ('image', value), drops as reasons) of an OBELICS record."""
  texts, values = _list_field(record, 'texts'), _list_field(record, 'images')
  if len(texts) != len(values):
    raise _SkipRecord(LENGTHS_DIFFER)
  plan = []
  for text, value in zip(texts, values):
    text, image = _text(text, 'texts'), _image_value(value, 'images')
    if image is not None and text:
      raise _SkipRecord(BOTH_SET)
    if image is not None:
      plan.append(('image', image))
    elif text:
      plan.append(('text', text))
  return plan, []


def _mmc4_plan(record: dict) -> tuple[list, list]:
  """(parts as ('text', str) / ('image', value), drops as reasons) of an MMC4 record."""
  sentences = [_text(s, 'text_list') for s in _list_field(record, 'text_list')]
  infos = _list_field(record, 'image_info')
  if not all(isinstance(info, dict) for info in infos):
    raise _SkipRecord(common.wrong_type('image_info'))
  before, drops = {}, []
  for info in infos:
    image = _image_value(info.get('image_bytes') or info.get('image_name'), 'image_info')
    index = info.get('matched_text_index')
    if image is None:
      drops.append(image_files.MISSING_FILE)
    elif not isinstance(index, int) or isinstance(index, bool):
      drops.append(BAD_TEXT_INDEX)
    elif not 0 <= index < len(sentences):
      drops.append(TEXT_INDEX_OUT_OF_RANGE)
    else:
      before.setdefault(index, []).append(('image', image))
  plan = []
  for index, sentence in enumerate(sentences):
    plan += before.get(index, [])
    if sentence:
      plan.append(('text', sentence))
  return plan, drops


def _load_image(value: bytes | str, root: image_files.ImageRoot) -> tuple[bytes | None, str | None]:
  """(checked bytes, None) for a usable image, else (None, the reason)."""
  if isinstance(value, bytes):
    return value, image_files.check_bytes(value, root.max_pixels)
  if value.startswith('data:') and ';base64,' in value:
    try:
      data = base64.b64decode(value.split(';base64,', 1)[1], validate=True)
    except (binascii.Error, ValueError):
      return None, MALFORMED_BASE64
    return data, image_files.check_bytes(data, root.max_pixels)
  if _URL.match(value):
    return None, IMAGE_URL
  return root.load(value)


def to_aligned(parts: list) -> dict:
  """Parts (str or bytes) -> the stored schema's aligned texts/images lists."""
  return {'texts': [p if isinstance(p, str) else '' for p in parts],
          'images': [p if isinstance(p, bytes) else b'' for p in parts]}


def read_documents(unit: tuple, *,
                   max_pixels: int = images_lib.DEFAULT_MAX_IMAGE_PIXELS) -> UnitResult:
  """All documents of one parquet/jsonl file.

  unit: (path, images root or None (the file's directory)[, the file's name in ids]).
  """
  path, images_dir, *name = unit
  name = name[0] if name else common.safe_name(os.path.basename(path))
  root = image_files.ImageRoot(images_dir or os.path.dirname(os.path.abspath(path)),
                               max_pixels=max_pixels)
  result = UnitResult()
  for row, record in common.iter_table(path, name, result):
    where = f'{name}/{row}'
    try:
      if 'text_list' in record:
        plan, drops = _mmc4_plan(record)
      elif 'texts' in record or 'images' in record:
        plan, drops = _obelics_plan(record)
      else:
        raise _SkipRecord(NEITHER_FORMAT)
    except _SkipRecord as skip:
      result.skip(skip.reason, where)
      continue
    parts = []
    for kind, value in plan:
      if kind == 'text':
        parts.append(value)
        continue
      data, reason = _load_image(value, root)
      if reason:
        drops.append(reason)
      else:
        parts.append(data)
    for reason in drops:  # images of this document that were not stored
      result.skip(reason, where)
    if not parts:
      result.skip(EMPTY_DOCUMENT, where)
      continue
    result.examples.append({'id': where, **to_aligned(parts)})
  return result


def reader(max_pixels: int):
  """read_documents with a pixel bound, picklable for worker processes."""
  return functools.partial(read_documents, max_pixels=max_pixels)
