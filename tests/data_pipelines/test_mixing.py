"""Exact per-batch mixing, resume (also with new weights), sharding over processes, inspect."""

import json

import numpy as np
import pytest

from data_pipelines import grain_pipeline, inspection, mixing


def take(iterator, count):
  return [next(iterator) for _ in range(count)]


@pytest.mark.parametrize('weights', [(0.5, 0.3, 0.2), (0.45, 0.45, 0.1), (0.05, 0.9, 0.05)])
def test_batch_counts_are_as_close_as_integers_allow(weights):
  credits = [0.0] * 3
  totals = np.zeros(3)
  for batch in range(1, 200):
    counts, credits = mixing.batch_counts(weights, 7, credits)
    assert sum(counts) == 7 and min(counts) >= 0
    totals += counts
    assert np.all(np.abs(totals - np.array(weights) * 7 * batch) < 1 + 1e-9)
  assert mixing.spread_slots([2, 1, 1]) == [0, 1, 2, 0] or sorted(
      mixing.spread_slots([2, 1, 1])) == [0, 0, 1, 2]


@pytest.mark.parametrize('weights', [(0.5, 0.3, 0.2), (0.45, 0.45, 0.1), (0.1, 0.1, 0.8)])
def test_fractions_over_5000_rows(config, weights):
  """Three text sources (cheap to decode; any number of sources per kind)."""
  config.train.batch_size = 100
  for name in ('captions', 'interleaved', 'text'):
    config.data.sources[name] = dict(kind='text', path='text')
  for name, weight in zip(('captions', 'interleaved', 'text'), weights):
    config.data.weights[name] = weight
  counts = np.zeros(3)
  for batch in take(grain_pipeline.make_iterator(config), 50):
    batch_counts = np.bincount(batch['source_id'], minlength=3)
    # Every batch: each count is the floor or ceiling of 100 x weight, give or take one.
    assert np.all(np.abs(batch_counts - 100 * np.array(weights)) < 2)
    counts += batch_counts
  assert np.all(np.abs(counts / counts.sum() - weights) < 0.01)
  assert np.all(np.abs(counts - 5000 * np.array(weights)) <= 1)


def test_resume_with_changed_weights(config):
  iterator = grain_pipeline.make_iterator(config)
  take(iterator, 2)
  state = iterator.get_state()
  json.dumps(state)
  config.data.weights.text = 0.0
  config.data.weights.captions = 0.7
  resumed = grain_pipeline.make_iterator(config)
  resumed.set_state(state)
  counts = np.zeros(3)
  for batch in take(resumed, 10):
    counts += np.bincount(batch['source_id'], minlength=2)[:2].tolist() + [0]
    assert set(np.unique(batch['source_id'])) <= {0, 1}  # text dropped, ids renumbered
  np.testing.assert_allclose(counts[:2] / counts.sum(), [0.7, 0.3], atol=0.02)
  # The caption stream continues where it was, not from its beginning.
  fresh = grain_pipeline.make_iterator(config)
  first_fresh = next(fresh)
  first_resumed = next(resumed)
  assert not np.array_equal(first_fresh['tokens'], first_resumed['tokens'])


def test_two_processes_split_the_one_process_stream(config):
  config.data.shards = 2
  whole = take(grain_pipeline.make_iterator(config), 3)
  parts = [take(grain_pipeline.make_iterator(config, process_index=p, process_count=2), 3)
           for p in range(2)]
  half = config.train.batch_size // 2
  for step, batch in enumerate(whole):
    for key in batch:
      for p in range(2):
        np.testing.assert_array_equal(parts[p][step][key],
                                      batch[key][p * half:(p + 1) * half], err_msg=key)
  # Disjoint: the two processes read different records (rows differ pairwise).
  rows = [parts[p][0]['tokens'][i].tobytes() for p in range(2) for i in range(half)]
  first, second = set(rows[:half]), set(rows[half:])
  assert not first & second


def test_shards_must_divide(config):
  config.data.shards = 3
  with pytest.raises(ValueError, match='shards'):
    grain_pipeline.make_dataset(config, process_index=0, process_count=2)


def test_inspect_numbers(config):
  stats = inspection.measure(config, rows=200)
  for key in ('fractions', 'token_fractions', 'packing_efficiency', 'skipped', 'rows_per_s'):
    assert key in stats
  json.dumps(stats)
  np.testing.assert_allclose(list(stats['fractions'].values()), [0.5, 0.3, 0.2], atol=0.01)
  assert abs(sum(stats['token_fractions'].values()) - 1) < 1e-6
  for name in ('captions', 'interleaved', 'text', 'all'):
    packing = stats['packing_efficiency'][name]
    assert 0 < packing['fill'] <= packing['best'] + 1e-9 <= 1 + 1e-9
  assert stats['skipped']['captions'] > 0 and stats['rows_per_s'] > 0
  assert 'rows/s' in inspection.format_table(stats)
