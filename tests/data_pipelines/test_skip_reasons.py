"""Skip and drop reasons: the table, the trainer's window metrics and `prepare inspect`."""

import json

import numpy as np
import pytest

from data_pipelines import grain_pipeline, images, prepare, skip_reasons

R = skip_reasons.NUM_REASONS


def test_one_stable_slug_per_reason():
  assert len(set(skip_reasons.REASONS)) == R
  for slug in skip_reasons.REASONS:
    assert slug.isidentifier() and slug == slug.lower()
  assert skip_reasons.image_slug(images.ImageError(images.TOO_LARGE)) == (
      'image_over_max_image_pixels')
  assert {skip_reasons.image_slug(images.ImageError(r)) for r in images.REASONS} <= set(
      skip_reasons.REASONS)
  counts = skip_reasons.vector({'empty_text': 2, 'row_full': 1})
  assert counts.dtype == np.int32 and counts.shape == (R,)
  assert skip_reasons.as_dict(counts) == {'empty_text': 2, 'row_full': 1}
  with pytest.raises(ValueError, match='no_such_reason'):
    skip_reasons.vector({'no_such_reason': 1})


def batch_of(sources, skipped, dropped, loss_tokens):
  """A host batch with the given per-row counts ({slug: n}) and loss-token counts."""
  length = 8
  loss_mask = np.zeros((len(sources), length), np.float32)
  for row, count in enumerate(loss_tokens):
    loss_mask[row, :count] = 1
  skipped = np.stack([skip_reasons.vector(s) for s in skipped])
  return {'source_id': np.asarray(sources, np.int32), 'loss_mask': loss_mask,
          'tokens': np.zeros((len(sources), length), np.int32),
          'skipped_records': skipped.sum(-1).astype(np.int32),
          'skipped_by_reason': skipped,
          'dropped_images_by_reason': np.stack([skip_reasons.vector(d) for d in dropped])}


def test_window_metrics_count_per_reason_and_rows_without_loss():
  counts = skip_reasons.WindowCounts(['captions', 'albums'])
  first = batch_of([0, 1, 1], [{'undecodable_image': 2}, {}, {'empty_text': 1}],
                   [{}, {'row_full': 3}, {'image_over_max_image_pixels': 1}], [4, 0, 2])
  counts.add(first)
  assert set(first) == {'source_id', 'loss_mask', 'tokens'}  # counts never reach the device
  counts.add(batch_of([1, 0, 0], [{'undecodable_image': 1}, {}, {}], [{}, {}, {}], [0, 5, 1]))
  metrics = counts.metrics()
  assert metrics == {
      'data/skipped_records': 4.0,
      'data/skipped/undecodable_image': 3.0,
      'data/skipped/empty_text': 1.0,
      'data/dropped_images/row_full': 3.0,
      'data/dropped_images/image_over_max_image_pixels': 1.0,
      'data/rows_without_loss': 2.0,
      'data/captions_rows_without_loss': 0.0,
      'data/albums_rows_without_loss': 2.0,
  }
  # The next window starts from zero; the run's totals keep everything.
  counts.add(batch_of([0], [{}], [{}], [3]))
  assert counts.metrics() == {'data/skipped_records': 0.0, 'data/rows_without_loss': 0.0,
                              'data/captions_rows_without_loss': 0.0,
                              'data/albums_rows_without_loss': 0.0}
  assert skip_reasons.as_dict(counts.total_skipped) == {'undecodable_image': 3, 'empty_text': 1}
  assert skip_reasons.as_dict(counts.total_dropped) == {'row_full': 3,
                                                        'image_over_max_image_pixels': 1}


def test_pipeline_batches_give_metrics_per_reason(config):
  names = grain_pipeline.source_names(config)
  counts = skip_reasons.WindowCounts(names)
  iterator = grain_pipeline.make_iterator(config)
  for _ in range(3):
    counts.add(next(iterator))
  metrics = counts.metrics()
  assert metrics['data/skipped/undecodable_image'] > 0  # the conftest's corrupt captions
  assert metrics['data/skipped_records'] == sum(
      v for k, v in metrics.items() if k.startswith('data/skipped/'))
  assert metrics['data/rows_without_loss'] == 0
  assert {f'data/{name}_rows_without_loss' for name in names} <= set(metrics)


def test_prepare_inspect_shows_the_reasons(data_root, tmp_path, capsys):
  config_file = tmp_path / 'inspected.py'
  config_file.write_text(
      'from tests.data_pipelines.conftest import small_config\n'
      'def get_config(arg):\n'
      f'  return small_config({str(data_root)!r})\n')
  assert prepare.main(['inspect', '--config', str(config_file), '--rows', '24']) == 0
  table = capsys.readouterr().out
  assert 'no loss' in table
  line = next(line for line in table.splitlines()
              if line.startswith('skipped records by reason:'))
  assert 'captions: ' in line and 'undecodable_image' in line
  assert 'dropped images by reason:' in table
  assert prepare.main(['inspect', '--config', str(config_file), '--rows', '24', '--json']) == 0
  stats = json.loads(capsys.readouterr().out)
  assert stats['skipped_by_reason']['captions']['undecodable_image'] > 0
  assert sum(stats['skipped_by_reason']['captions'].values()) == stats['skipped']['captions']
  assert stats['rows_without_loss'] == {name: 0 for name in stats['fractions']}
