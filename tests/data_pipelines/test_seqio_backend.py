"""The seqio backend: same batch schema as grain, fractions that follow the same weights."""

import json

import numpy as np
import pytest

from data_pipelines import grain_pipeline, seqio_tasks, skip_reasons


@pytest.fixture(scope='module')
def seqio_batches(data_root):
  from tests.data_pipelines.conftest import small_config  # pylint: disable=g-import-not-at-top
  config = small_config(str(data_root))
  config.data.backend = 'seqio'
  config.train.batch_size = 100
  iterator = grain_pipeline.make_iterator(config)
  batches = [next(iterator) for _ in range(15)]
  return config, iterator, batches


def test_schema_matches_grain(config, seqio_batches):
  _, _, batches = seqio_batches
  config.train.batch_size = 100
  grain_batch = next(grain_pipeline.make_iterator(config))
  seqio_batch = batches[0]
  assert grain_batch.keys() == seqio_batch.keys()
  for key in grain_batch:
    assert grain_batch[key].dtype == seqio_batch[key].dtype, key
    assert grain_batch[key].shape == seqio_batch[key].shape, key


def test_fractions_agree_with_grain(config, seqio_batches):
  _, _, batches = seqio_batches
  counts = sum(np.bincount(b['source_id'], minlength=3) for b in batches)
  # 1500 sampled rows: the binomial noise is about 1.3%; grain's counts are exact.
  np.testing.assert_allclose(counts / counts.sum(), [0.5, 0.3, 0.2], atol=0.035)
  assert sum(int(b['skipped_records'].sum()) for b in batches) > 0


def test_counts_by_reason_as_grain(seqio_batches):
  _, _, batches = seqio_batches
  skipped = np.sum([b['skipped_by_reason'] for b in batches], axis=0)
  dropped = np.sum([b['dropped_images_by_reason'] for b in batches], axis=0)
  # The conftest's sources: bad caption images, blank captions and texts; interleaved
  # documents keep their text when one of their images is corrupt.
  assert skip_reasons.as_dict(skipped).keys() == {skip_reasons.UNDECODABLE_IMAGE,
                                                  skip_reasons.EMPTY_TEXT}
  assert skip_reasons.as_dict(dropped).keys() == {skip_reasons.UNDECODABLE_IMAGE}
  for batch in batches:
    np.testing.assert_array_equal(batch['skipped_records'], batch['skipped_by_reason'].sum(-1))


def test_max_image_pixels_reaches_the_seqio_tasks(config):
  config.data.backend = 'seqio'
  config.data.max_image_pixels = 100  # below every caption image of the conftest
  with pytest.raises(ValueError, match=r'config\.data\.sources\.captions.*'
                                       r'image_over_max_image_pixels'):
    seqio_tasks.make_mixture(config)


def test_resume(seqio_batches):
  config, _, _ = seqio_batches
  config.train.batch_size = 8
  iterator = grain_pipeline.make_iterator(config)
  next(iterator)
  state = iterator.get_state()
  json.loads(state)  # grain's Orbax handler stores these bytes as they are
  expected = next(iterator)
  resumed = grain_pipeline.make_iterator(config)
  resumed.set_state(state)
  actual = next(resumed)
  for key in expected:
    np.testing.assert_array_equal(expected[key], actual[key], err_msg=key)
