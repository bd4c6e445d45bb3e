"""What every importer shares: units of work read in parallel, skip accounting, the write.

An importer splits its input into units (a tar shard, a file, a slice of annotations),
and a module-level `read_unit(unit) -> UnitResult` turns one unit into source examples.
`run_import` reads the units with `--num-workers` spawned processes (in order, so the
output does not depend on the worker count), shows a progress bar over them, writes the
examples with `sources.write_source` (sharded array_record) and leaves a report of what
was written and what was skipped in OUT/import_report.json, written only after the
dataset itself is complete.

Nothing bad in the input aborts an import or is dropped uncounted: every malformed
record, unusable image and unreadable file is skipped with a reason (a short, stable
phrase), counted per reason, and the first FIRST_SKIPPED offenders of each reason (record
ids or file names) are named in the report and the printed summary. An example id that
occurs twice keeps its first record (DUPLICATE_ID). So only valid examples reach
`write_source`, whose schema check would otherwise stop the import. A skip is of what
the reason names (a record, a file, an image dropped from a kept document, a tar
member), so one record can count under two reasons (a tar image member over the size
bound, then its sample without an image): the total counts skips, not records.

An import never replaces an earlier one: an OUT that already holds an import report, or
a complete source of the same kind, is refused before anything is read.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import multiprocessing
import os
from collections.abc import Callable, Iterator, Sequence
from typing import Any

from tqdm import tqdm

REPORT_FILE = 'import_report.json'
FIRST_SKIPPED = 5

DUPLICATE_ID = 'duplicate record id'
UNREADABLE_FILE = 'unreadable file'
UNKNOWN_FILE_TYPE = 'file of unknown type'
MALFORMED_JSON = 'malformed json line'
NOT_AN_OBJECT = 'json line is not an object'
INVALID_UTF8 = 'text not valid UTF-8'


def wrong_type(field: str) -> str:
  """The skip reason of a record whose `field` has the wrong type."""
  return f'wrong-typed field {field!r}'


@dataclasses.dataclass
class UnitResult:
  """The examples read from one unit and what was skipped there, by reason.

  skipped: reason -> count; first_skipped: reason -> the first FIRST_SKIPPED offenders.
  """
  examples: list[dict] = dataclasses.field(default_factory=list)
  skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)
  first_skipped: dict[str, list[str]] = dataclasses.field(default_factory=dict)

  def skip(self, reason: str, where: str) -> None:
    """Counts one skip; `where` names the record (its id) or the file."""
    self.skipped[reason] += 1
    first = self.first_skipped.setdefault(reason, [])
    if len(first) < FIRST_SKIPPED:
      first.append(safe_name(where))

  def add_skips(self, other: 'UnitResult') -> None:
    """Adds the skips (not the examples) of `other`."""
    self.skipped.update(other.skipped)
    for reason, where in other.first_skipped.items():
      first = self.first_skipped.setdefault(reason, [])
      first.extend(where[:FIRST_SKIPPED - len(first)])


@dataclasses.dataclass
class ImportReport:
  """What an import wrote and skipped; stored as OUT/import_report.json."""
  kind: str
  out: str
  written: int
  skipped: dict[str, int]
  first_skipped: dict[str, list[str]]
  options: dict[str, Any] = dataclasses.field(default_factory=dict)

  def summary(self) -> str:
    total = sum(self.skipped.values())
    lines = [f'Wrote {self.written} {self.kind} records to {self.out}; skipped {total}'
             + (':' if total else '')]
    for reason, count in sorted(self.skipped.items()):
      first = ', '.join(self.first_skipped.get(reason, []))
      more = ', ...' if count > len(self.first_skipped.get(reason, [])) else ''
      lines.append(f'  {reason}: {count} (first: {first}{more})')
    return '\n'.join(lines)


def is_valid_text(text: str) -> bool:
  """Whether `text` can be stored as UTF-8 (a lone surrogate from a JSON escape cannot)."""
  try:
    text.encode('utf-8')
  except UnicodeEncodeError:
    return False
  return True


def safe_name(name: str) -> str:
  """`name` (a file, tar member or record name) as valid UTF-8, for ids and reports.

  A file name that is not UTF-8 reaches Python with lone surrogates; they are written
  as backslash escapes instead.
  """
  return name.encode('utf-8', 'backslashreplace').decode('utf-8')


def _results(read_unit: Callable[[Any], UnitResult], units: Sequence[Any],
             num_workers: int) -> Iterator[UnitResult]:
  if num_workers <= 1:
    yield from map(read_unit, units)
    return
  # spawn, not fork: the parent has imported TensorFlow (through TFDS), which is not
  # fork-safe.
  with multiprocessing.get_context('spawn').Pool(num_workers) as pool:
    yield from pool.imap(read_unit, units)


def check_out(out: str) -> None:
  """Refuses an output directory that already holds an import (of any kind)."""
  if os.path.exists(os.path.join(out, REPORT_FILE)):
    raise FileExistsError(f'--out {out!r} already holds an import ({REPORT_FILE}); '
                          'delete it or choose another directory.')


def run_import(kind: str, units: Sequence[Any], read_unit: Callable[[Any], UnitResult], *,
               out: str, num_workers: int = 1, num_shards: int | None = None,
               description: str = '', show_progress: bool = True,
               skipped_before: UnitResult | None = None,
               options: dict[str, Any] | None = None) -> ImportReport:
  """Reads every unit, writes the examples as a `kind` source at `out`, returns the report.

  skipped_before: what the importer already skipped while listing the units.
  options: the settings of the import (e.g. max_image_pixels), kept in the report.
  """
  if not units:
    raise ValueError(f'no input to import for {description or kind}')
  check_out(out)
  skips = UnitResult()
  if skipped_before is not None:
    skips.add_skips(skipped_before)
  seen_ids = set()
  written = 0

  def examples():
    nonlocal written
    with tqdm(total=len(units), desc=description or kind, unit='file',
              disable=not show_progress, dynamic_ncols=True) as progress:
      for result in _results(read_unit, units, num_workers):
        skips.add_skips(result)
        for example in result.examples:
          if example['id'] in seen_ids:
            skips.skip(DUPLICATE_ID, example['id'])
            continue
          if not is_valid_text(example['id']):  # a safety net: importers use safe_name
            skips.skip(INVALID_UTF8, example['id'])
            continue
          seen_ids.add(example['id'])
          written += 1
          yield example
        progress.update(1)
        progress.set_postfix(records=written, skipped=sum(skips.skipped.values()))
    if not written:
      raise ValueError(f'{description or kind}: no usable records in the input '
                       f'(skipped: {dict(skips.skipped)}; first: {skips.first_skipped})')

  # Imported here: worker processes read units without loading TFDS/TensorFlow.
  from data_pipelines import sources  # pylint: disable=import-outside-toplevel
  sources.write_source(kind, examples(), out, num_shards=num_shards)
  report = ImportReport(kind=kind, out=os.path.abspath(out), written=written,
                        skipped=dict(skips.skipped), first_skipped=skips.first_skipped,
                        options=dict(options or {}))
  path = os.path.join(out, REPORT_FILE)
  with open(path + '.tmp', 'w') as f:  # renamed into place: never half-written
    json.dump(dataclasses.asdict(report), f, indent=2)
  os.replace(path + '.tmp', path)
  return report


def iter_jsonl(path: str, name: str, result: UnitResult) -> Iterator[tuple[int, dict]]:
  """(line index, object) per line of a jsonl file; bad lines are skipped and counted.

  A line that is not valid UTF-8 is skipped (INVALID_UTF8), not decoded with a guess.
  """
  try:
    with open(path, 'rb') as f:
      for number, raw in enumerate(f):  # 0-based, like parquet rows
        where = f'{name}/{number}'
        try:
          line = raw.decode('utf-8')
        except UnicodeDecodeError:
          result.skip(INVALID_UTF8, where)
          continue
        if not line.strip():
          continue
        try:
          record = json.loads(line)
        except json.JSONDecodeError:
          result.skip(MALFORMED_JSON, where)
          continue
        if not isinstance(record, dict):
          result.skip(NOT_AN_OBJECT, where)
          continue
        yield number, record
  except OSError:
    result.skip(UNREADABLE_FILE, name)  # the lines before it are kept


def iter_parquet(path: str, name: str, result: UnitResult) -> Iterator[tuple[int, dict]]:
  """(row number, row dict) per row of a parquet file, read in record batches.

  A file that is not parquet, or is damaged, is skipped (UNREADABLE_FILE) from the point
  of damage on; a row whose strings are not valid UTF-8 is skipped (INVALID_UTF8).
  """
  import pyarrow as pa  # pylint: disable=import-outside-toplevel
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  row = 0
  try:
    for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
      try:
        records = batch.to_pylist()
      except UnicodeDecodeError:  # find the rows: Arrow does not check UTF-8 on read
        records = []
        for i in range(batch.num_rows):
          try:
            records.append(batch.slice(i, 1).to_pylist()[0])
          except UnicodeDecodeError:
            records.append(None)
      for record in records:
        if record is None:
          result.skip(INVALID_UTF8, f'{name}/{row}')
        else:
          yield row, record
        row += 1
  except (pa.ArrowException, OSError):
    result.skip(UNREADABLE_FILE, name)


def iter_table(path: str, name: str, result: UnitResult) -> Iterator[tuple[int, dict]]:
  """Rows of a .jsonl/.json/.ndjson (one object a line) or .parquet file.

  name: how record ids name the file; a file of another type is skipped and counted.
  """
  lowered = path.lower()
  if lowered.endswith('.parquet'):
    return iter_parquet(path, name, result)
  if lowered.endswith(('.jsonl', '.json', '.ndjson')):
    return iter_jsonl(path, name, result)
  result.skip(UNKNOWN_FILE_TYPE, name)
  return iter(())


def expand_inputs(patterns: Sequence[str]) -> list[str]:
  """Files named by glob patterns, sorted within each pattern; a pattern matching none fails.

  Directories matched by a pattern are left out (they hold no records themselves).
  """
  import glob  # pylint: disable=import-outside-toplevel
  files = []
  for pattern in patterns:
    matched = sorted(glob.glob(os.path.expanduser(pattern)))
    if not matched:
      raise FileNotFoundError(f'--input {pattern!r} matches no file')
    files += [f for f in matched if f not in files and not os.path.isdir(f)]
  if not files:
    raise FileNotFoundError(f'--input {" ".join(patterns)!r} matches only directories')
  return files


def input_names(paths: Sequence[str]) -> list[str]:
  """How record ids name each input file: its base name, or, where two inputs share one,
  its path relative to the directory all inputs share (so ids never collide)."""
  bases = [os.path.basename(p) for p in paths]
  if len(set(bases)) != len(bases):
    absolute = [os.path.abspath(p) for p in paths]
    shared = os.path.commonpath([os.path.dirname(p) for p in absolute])
    bases = [os.path.relpath(p, shared) for p in absolute]
  return [safe_name(b) for b in bases]
