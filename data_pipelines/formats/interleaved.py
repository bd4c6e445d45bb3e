"""OBELICS-style and MMC4-style documents -> an interleaved source.

OBELICS style (parquet or jsonl): aligned lists `texts` and `images`; at each index one
of them is set, the other null. An image is given as bytes, or as a path (relative paths
resolve against --images, else the input file's directory); a `{'bytes': ..., 'path': ...}`
struct as the datasets library writes it also works.

MMC4 style (jsonl): `text_list` (the sentences) and `image_info`, a list of
`{'image_name': ..., 'matched_text_index': i}`; each image goes just before sentence i.

A document keeps the images that can be read; a missing or empty image file is dropped
and counted ('missing image file'), a document left without any part is skipped and
counted. Image bytes are stored as they are and decoded later by the pipeline.
"""

from __future__ import annotations

import base64
import os

from data_pipelines.formats.common import UnitResult, iter_table, read_file_bytes


def _image_bytes(value, base_dir: str, result: UnitResult) -> bytes | None:
  if isinstance(value, dict):  # HF datasets Image struct
    value = value.get('bytes') or value.get('path')
  if isinstance(value, (bytes, bytearray)):
    return bytes(value) or None
  if isinstance(value, str) and value:
    if value.startswith('data:') and ';base64,' in value:
      return base64.b64decode(value.split(';base64,', 1)[1])
    data = read_file_bytes(os.path.join(base_dir, os.path.expanduser(value)))
    if data is None:
      result.skip('missing image file')
    return data
  return None


def _obelics_parts(record: dict, base_dir: str, result: UnitResult) -> list:
  texts, images = record.get('texts') or [], record.get('images') or []
  parts = []
  for i in range(max(len(texts), len(images))):
    image = images[i] if i < len(images) else None
    text = texts[i] if i < len(texts) else None
    if image is not None:
      data = _image_bytes(image, base_dir, result)
      if data is not None:
        parts.append(data)
    elif isinstance(text, str) and text.strip():
      parts.append(text)
  return parts


def _mmc4_parts(record: dict, base_dir: str, result: UnitResult) -> list:
  sentences = record.get('text_list') or []
  before = {}
  for info in record.get('image_info') or []:
    if isinstance(info, dict) and 'matched_text_index' in info:
      before.setdefault(int(info['matched_text_index']), []).append(info)
  parts = []
  for index, sentence in enumerate(sentences):
    for info in before.get(index, []):
      data = _image_bytes(info.get('image_bytes') or info.get('image_name'), base_dir, result)
      if data is not None:
        parts.append(data)
    if isinstance(sentence, str) and sentence.strip():
      parts.append(sentence)
  return parts


def to_aligned(parts: list) -> dict:
  """Parts (str or bytes) -> the stored schema's aligned texts/images lists."""
  return {'texts': [p if isinstance(p, str) else '' for p in parts],
          'images': [p if isinstance(p, bytes) else b'' for p in parts]}


def read_documents(unit: tuple[str, str | None]) -> UnitResult:
  """All documents of one parquet/jsonl file; unit = (path, images dir or None)."""
  path, images_dir = unit
  base_dir = images_dir or os.path.dirname(os.path.abspath(path))
  name = os.path.basename(path)
  result = UnitResult()
  for row, record in iter_table(path, result):
    if 'text_list' in record:
      parts = _mmc4_parts(record, base_dir, result)
    elif 'texts' in record or 'images' in record:
      parts = _obelics_parts(record, base_dir, result)
    else:
      result.skip('record with neither texts/images nor text_list')
      continue
    if not parts:
      result.skip('empty document')
      continue
    result.examples.append({'id': f'{name}/{row}', **to_aligned(parts)})
  return result
