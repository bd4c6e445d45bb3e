"""jsonl or parquet rows with a `text` field -> a text source.

A row whose `text` is missing, not a string or blank is skipped and counted.
"""

from __future__ import annotations

import os

from data_pipelines.formats.common import UnitResult, iter_table


def read_texts(path: str) -> UnitResult:
  name = os.path.basename(path)
  result = UnitResult()
  for row, record in iter_table(path, result):
    text = record.get('text')
    if not isinstance(text, str):
      result.skip('record without a text field')
    elif not text.strip():
      result.skip('empty text')
    else:
      result.examples.append({'id': f'{name}/{row}', 'text': text})
  return result
