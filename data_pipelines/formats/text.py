"""jsonl or parquet rows with a `text` field -> a text source.

A row without a `text` field, whose `text` is not a string, is blank, or is not valid
UTF-8 is skipped and counted; so is a file that cannot be read. Record ids are
`<file name>/<row>` (row: 0-based line or parquet row).
"""

from __future__ import annotations

import os

from data_pipelines.formats import common
from data_pipelines.formats.common import UnitResult

NO_TEXT = 'record without a text field'
EMPTY_TEXT = 'empty text'


def read_texts(unit) -> UnitResult:
  """All texts of one file; unit: its path, or (path, the file's name in ids)."""
  path, name = (unit if isinstance(unit, tuple)
                else (unit, common.safe_name(os.path.basename(unit))))
  result = UnitResult()
  for row, record in common.iter_table(path, name, result):
    where = f'{name}/{row}'
    text = record.get('text')
    if text is None:
      result.skip(NO_TEXT, where)
    elif not isinstance(text, str):
      result.skip(common.wrong_type('text'), where)
    elif not common.is_valid_text(text):
      result.skip(common.INVALID_UTF8, where)
    elif not text.strip():
      result.skip(EMPTY_TEXT, where)
    else:
      result.examples.append({'id': where, 'text': text})
  return result
