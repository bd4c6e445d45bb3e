"""What a configured mixture actually delivers: `python -m data_pipelines.prepare inspect`.

`measure` reads N rows through the configured backend (one process) and reports, per
source: the fraction of rows, of non-padding tokens and of images; packing efficiency
(`fill`: non-padding tokens over all tokens of the source's rows; `of_best`: fill over the
best fill possible under the image budget, min(1, max_images x tokens-per-image / seq_len)
with tokens-per-image the source's own ratio, 1 for a source without images); skipped
records, in total and per reason (`skip_reasons.REASONS`); images dropped per reason; rows
without a single loss token; and rows per second (wall clock, start-up excluded).
"""

from __future__ import annotations

import importlib.util
import os
import time

import numpy as np

from data_pipelines import grain_pipeline
from data_pipelines import skip_reasons


def load_config(spec: str):
  """`path/to/experiment.py[:arg]` -> its get_config(arg)."""
  path, _, arg = spec.partition(':')
  if not os.path.isfile(path):
    raise FileNotFoundError(f'--config {path!r} does not exist')
  module_spec = importlib.util.spec_from_file_location('mm1_inspected_config', path)
  module = importlib.util.module_from_spec(module_spec)
  module_spec.loader.exec_module(module)
  return module.get_config(arg or None)


def _ratio(a: float, b: float) -> float:
  return float(a / b) if b else 0.0


def measure(config, rows: int) -> dict:
  """Reads at least `rows` rows of the mixture; returns the numbers (JSON-ready)."""
  names = grain_pipeline.source_names(config)
  seq_len, max_images = config.data.seq_len, config.data.max_images
  iterator = grain_pipeline.make_iterator(config)
  first = next(iterator)  # start-up (worker processes, first decodes) is not timed
  count = {key: np.zeros(len(names)) for key in ('rows', 'tokens', 'images', 'skipped',
                                                 'no_loss')}
  by_reason = {key: np.zeros((len(names), skip_reasons.NUM_REASONS), np.int64)
               for key in (skip_reasons.SKIPPED_KEY, skip_reasons.DROPPED_KEY)}

  def add(batch):
    source = batch['source_id']
    count['rows'] += np.bincount(source, minlength=len(names))
    count['tokens'] += np.bincount(source, weights=(batch['segment_ids'] > 0).sum(-1),
                                   minlength=len(names))
    count['images'] += np.bincount(source, weights=batch['image_valid'].sum(-1),
                                   minlength=len(names))
    count['skipped'] += np.bincount(source, weights=batch['skipped_records'],
                                    minlength=len(names))
    count['no_loss'] += np.bincount(source, weights=skip_reasons.rows_without_loss(
        batch['loss_mask']), minlength=len(names))
    for key, counts in by_reason.items():
      np.add.at(counts, source, batch[key])

  add(first)
  start, timed_rows = time.perf_counter(), 0
  while count['rows'].sum() < rows:
    batch = next(iterator)
    add(batch)
    timed_rows += len(batch['source_id'])
  seconds = time.perf_counter() - start
  if hasattr(iterator, 'close'):
    iterator.close()

  packing = {}
  for i, name in enumerate(names):
    fill = _ratio(count['tokens'][i], count['rows'][i] * seq_len)
    best = 1.0
    if count['images'][i]:
      best = min(1.0, max_images * count['tokens'][i] / count['images'][i] / seq_len)
    packing[name] = {'fill': fill, 'best': best, 'of_best': _ratio(fill, best)}
  total_fill = _ratio(count['tokens'].sum(), count['rows'].sum() * seq_len)
  # The mixture's best: each source's best, weighted by its share of rows.
  total_best = sum(packing[n]['best'] * count['rows'][i] for i, n in enumerate(names))
  total_best /= max(count['rows'].sum(), 1)
  packing['all'] = {'fill': total_fill, 'best': total_best,
                    'of_best': _ratio(total_fill, total_best)}
  weights = np.array([config.data.weights[n] for n in names], float)

  def per_source(values):
    return {name: float(v) for name, v in zip(names, values)}

  return {
      'backend': config.data.get('backend', 'grain'),
      'rows': int(count['rows'].sum()),
      'seq_len': seq_len,
      'max_images': max_images,
      'weights': per_source(weights / weights.sum()),
      'fractions': per_source(count['rows'] / count['rows'].sum()),
      'token_fractions': per_source(count['tokens'] / max(count['tokens'].sum(), 1)),
      'image_fractions': per_source(count['images'] / max(count['images'].sum(), 1)),
      'packing_efficiency': packing,
      'skipped': {name: int(v) for name, v in zip(names, count['skipped'])},
      'skipped_by_reason': {name: skip_reasons.as_dict(by_reason[skip_reasons.SKIPPED_KEY][i])
                            for i, name in enumerate(names)},
      'dropped_images_by_reason': {
          name: skip_reasons.as_dict(by_reason[skip_reasons.DROPPED_KEY][i])
          for i, name in enumerate(names)},
      'rows_without_loss': {name: int(v) for name, v in zip(names, count['no_loss'])},
      'rows_per_s': _ratio(timed_rows, seconds),
  }


def format_table(stats: dict) -> str:
  header = (f'{"source":<16}{"weight":>8}{"rows":>8}{"tokens":>8}{"images":>8}'
            f'{"fill":>8}{"of best":>9}{"skipped":>9}{"no loss":>9}')
  lines = [f'{stats["rows"]} rows of {stats["seq_len"]} tokens and up to '
           f'{stats["max_images"]} images ({stats["backend"]} backend); fractions:', header]
  for name in stats['fractions']:
    packing = stats['packing_efficiency'][name]
    lines.append(f'{name:<16}{stats["weights"][name]:>8.3f}{stats["fractions"][name]:>8.3f}'
                 f'{stats["token_fractions"][name]:>8.3f}{stats["image_fractions"][name]:>8.3f}'
                 f'{packing["fill"]:>8.3f}{packing["of_best"]:>9.3f}'
                 f'{stats["skipped"][name]:>9d}{stats["rows_without_loss"][name]:>9d}')
  packing = stats['packing_efficiency']['all']
  lines.append(f'{"all":<16}{1:>8.3f}{1:>8.3f}{1:>8.3f}{1:>8.3f}{packing["fill"]:>8.3f}'
               f'{packing["of_best"]:>9.3f}{sum(stats["skipped"].values()):>9d}'
               f'{sum(stats["rows_without_loss"].values()):>9d}')
  for key, title in (('skipped_by_reason', 'skipped records by reason'),
                     ('dropped_images_by_reason', 'dropped images by reason')):
    parts = [f'{name}: ' + ', '.join(f'{slug} {n}' for slug, n in reasons.items())
             for name, reasons in stats[key].items() if reasons]
    lines.append(f'{title}: ' + ('; '.join(parts) if parts else 'none'))
  lines.append(f'{stats["rows_per_s"]:.1f} rows/s')
  return '\n'.join(lines)
