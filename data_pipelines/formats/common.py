"""What every importer shares: units of work read in parallel, skip accounting, the write.

An importer splits its input into units (a tar shard, a file, a slice of annotations),
and a module-level `read_unit(unit) -> UnitResult` turns one unit into source examples.
`run_import` reads the units with `--num-workers` spawned processes (in order, so the
output does not depend on the worker count), shows a progress bar over them, writes the
examples with `sources.write_source` (sharded array_record) and leaves a report of what
was written and what was skipped (per reason) in OUT/import_report.json, written only
after the dataset itself is complete.
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


@dataclasses.dataclass
class UnitResult:
  """The examples read from one unit and the records skipped there, by reason."""
  examples: list[dict] = dataclasses.field(default_factory=list)
  skipped: collections.Counter = dataclasses.field(default_factory=collections.Counter)

  def skip(self, reason: str) -> None:
    self.skipped[reason] += 1


@dataclasses.dataclass
class ImportReport:
  kind: str
  out: str
  written: int
  skipped: dict[str, int]

  def summary(self) -> str:
    skipped = sum(self.skipped.values())
    reasons = ', '.join(f'{reason}: {n}' for reason, n in sorted(self.skipped.items()))
    return (f'Wrote {self.written} {self.kind} records to {self.out}; skipped {skipped}'
            + (f' ({reasons})' if reasons else ''))


def _results(read_unit: Callable[[Any], UnitResult], units: Sequence[Any],
             num_workers: int) -> Iterator[UnitResult]:
  if num_workers <= 1:
    yield from map(read_unit, units)
    return
  # spawn, not fork: the parent has imported TensorFlow (through TFDS), which is not
  # fork-safe.
  with multiprocessing.get_context('spawn').Pool(num_workers) as pool:
    yield from pool.imap(read_unit, units)


def run_import(kind: str, units: Sequence[Any], read_unit: Callable[[Any], UnitResult], *,
               out: str, num_workers: int = 1, num_shards: int | None = None,
               description: str = '', show_progress: bool = True,
               skipped_before: collections.Counter | None = None) -> ImportReport:
  """Reads every unit, writes the examples as a `kind` source at `out`, returns the report.

  skipped_before: records the importer already skipped while listing the units.
  """
  if not units:
    raise ValueError(f'no input to import for {description or kind}')
  skipped: collections.Counter = collections.Counter(skipped_before or {})
  written = 0

  def examples():
    nonlocal written
    with tqdm(total=len(units), desc=description or kind, unit='file',
              disable=not show_progress, dynamic_ncols=True) as progress:
      for result in _results(read_unit, units, num_workers):
        skipped.update(result.skipped)
        for example in result.examples:
          written += 1
          yield example
        progress.update(1)
        progress.set_postfix(records=written, skipped=sum(skipped.values()))
    if not written:
      raise ValueError(f'{description or kind}: no usable records in the input '
                       f'(skipped: {dict(skipped)})')

  # Imported here: worker processes read units without loading TFDS/TensorFlow.
  from data_pipelines import sources  # pylint: disable=import-outside-toplevel
  sources.write_source(kind, examples(), out, num_shards=num_shards)
  report = ImportReport(kind=kind, out=os.path.abspath(out), written=written,
                        skipped=dict(skipped))
  with open(os.path.join(out, REPORT_FILE), 'w') as f:
    json.dump(dataclasses.asdict(report), f, indent=2)
  return report


def read_file_bytes(path: str) -> bytes | None:
  """The file's bytes, or None when it is missing, unreadable or empty."""
  try:
    with open(path, 'rb') as f:
      data = f.read()
  except OSError:
    return None
  return data or None


def iter_jsonl(path: str, result: UnitResult) -> Iterator[tuple[int, dict]]:
  """(line index, object) per line of a jsonl file; bad lines are skipped and counted."""
  with open(path, encoding='utf-8', errors='replace') as f:
    for number, line in enumerate(f):  # 0-based, like parquet rows
      if not line.strip():
        continue
      try:
        record = json.loads(line)
      except json.JSONDecodeError:
        result.skip('malformed json line')
        continue
      if not isinstance(record, dict):
        result.skip('json line is not an object')
        continue
      yield number, record


def iter_parquet(path: str) -> Iterator[tuple[int, dict]]:
  """(row number, row dict) per row of a parquet file, read in record batches."""
  import pyarrow.parquet as pq  # pylint: disable=import-outside-toplevel
  row = 0
  for batch in pq.ParquetFile(path).iter_batches(batch_size=256):
    for record in batch.to_pylist():
      yield row, record
      row += 1


def iter_table(path: str, result: UnitResult) -> Iterator[tuple[int, dict]]:
  """Rows of a .jsonl/.json (one object a line) or .parquet file."""
  lowered = path.lower()
  if lowered.endswith('.parquet'):
    return iter_parquet(path)
  if lowered.endswith(('.jsonl', '.json', '.ndjson')):
    return iter_jsonl(path, result)
  raise ValueError(f'{path!r}: unknown file type (expected .jsonl or .parquet)')


def expand_inputs(patterns: Sequence[str]) -> list[str]:
  """Files named by glob patterns, sorted within each pattern; a pattern matching none fails."""
  import glob  # pylint: disable=import-outside-toplevel
  files = []
  for pattern in patterns:
    matched = sorted(glob.glob(os.path.expanduser(pattern)))
    if not matched:
      raise FileNotFoundError(f'--input {pattern!r} matches no file')
    files += [f for f in matched if f not in files]
  return files
