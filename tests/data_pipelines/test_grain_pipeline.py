"""The grain training input: contract, mixture, skip accounting, resume, sharding, errors."""

import json

import numpy as np
import pytest

from data_pipelines import grain_pipeline, skip_reasons
from data_pipelines.sources import open_source, write_source
from tests.data_pipelines.conftest import (check_row, encode_png, index_of_caption,
                                           is_bad_caption, random_text)

BATCH_KEYS = {'tokens', 'targets', 'loss_mask', 'segment_ids', 'positions', 'images',
              'image_valid', 'source_id', 'skipped_records', 'skipped_by_reason',
              'dropped_images_by_reason'}


def take(iterator, count):
  return [next(iterator) for _ in range(count)]


def assert_batches_equal(expected, actual):
  assert len(expected) == len(actual)
  for want, got in zip(expected, actual):
    assert want.keys() == got.keys()
    for key in want:
      np.testing.assert_array_equal(want[key], got[key], err_msg=key)


def only(config, *names):
  for name in config.data.weights:
    config.data.weights[name] = 1.0 if name in names else 0.0
  return config


def caption_indices(batch, tokenizer):
  """{(row, segment): caption record index} for every caption that starts in the batch."""
  found = {}
  for row in range(batch['tokens'].shape[0]):
    for segment in range(1, batch['segment_ids'][row].max() + 1):
      tokens = batch['tokens'][row][batch['segment_ids'][row] == segment]
      if tokens[0] == tokenizer.bos_id:
        found[row, segment] = index_of_caption(tokenizer.decode(tokens))
  return found


def test_source_names_skip_weight_zero(config):
  config.data.weights.interleaved = 0.0
  assert grain_pipeline.source_names(config) == ['captions', 'text']


def test_batches_follow_the_contract(config, tokenizer):
  iterator = grain_pipeline.make_iterator(config)
  chunks = 0
  for batch in take(iterator, 6):
    assert set(batch) == BATCH_KEYS
    assert batch['source_id'].dtype == np.int32 and batch['source_id'].shape == (8,)
    assert batch['skipped_records'].dtype == np.int32
    assert batch['skipped_records'].shape == (8,)
    for key in ('skipped_by_reason', 'dropped_images_by_reason'):
      assert batch[key].dtype == np.int32
      assert batch[key].shape == (8, skip_reasons.NUM_REASONS)
    np.testing.assert_array_equal(batch['skipped_records'], batch['skipped_by_reason'].sum(-1))
    assert batch['images'].shape == (8, 3, 16, 16, 3)
    for row in range(8):
      check_row({key: batch[key][row] for key in batch})  # runs whole, budgets kept
      starts = np.flatnonzero(np.diff(batch['segment_ids'][row], prepend=0) > 0)
      chunks += int(np.sum(batch['tokens'][row][starts] != tokenizer.bos_id))
  assert chunks > 0  # long interleaved documents were cut into chunks


def test_mixture_fractions_follow_the_weights(config):
  config.train.batch_size = 100
  names = grain_pipeline.source_names(config)
  counts = np.zeros(len(names))
  for batch in take(grain_pipeline.make_iterator(config), 20):
    counts += np.bincount(batch['source_id'], minlength=len(names))
  fractions = counts / counts.sum()
  np.testing.assert_allclose(fractions, [0.5, 0.3, 0.2], atol=0.02)


def test_weight_zero_source_never_appears(config):
  config.data.weights.captions = 0.0
  config.data.sources.captions.path = 'does/not/exist'  # never opened
  assert grain_pipeline.source_names(config) == ['interleaved', 'text']
  for batch in take(grain_pipeline.make_iterator(config), 20):
    assert set(np.unique(batch['source_id'])) <= {0, 1}


def test_every_skipped_caption_is_counted(config, tokenizer, data_root):
  """Each row's skip count equals the unusable records read just before its captions."""
  only(config, 'captions')
  source = open_source(str(data_root / 'captions'), 'captions')
  order = grain_pipeline.shuffled_records(
      list(range(len(source))), seed=grain_pipeline.source_seed(config, 'captions'))
  first_epoch = [order[i] for i in range(len(source))]
  position_of = {record: position for position, record in enumerate(first_epoch)}

  def bad_run_before(position):
    run = 0
    while position - run > 0 and is_bad_caption(first_epoch[position - run - 1]):
      run += 1
    return run

  batch = next(grain_pipeline.make_iterator(config))  # well inside the first epoch
  starts = caption_indices(batch, tokenizer)
  assert len(starts) > 10
  for row in range(batch['tokens'].shape[0]):
    expected = sum(bad_run_before(position_of[record])
                   for (r, _), record in starts.items() if r == row)
    assert batch['skipped_records'][row] == expected
  assert batch['skipped_records'].sum() > 0


def test_exact_resume(config):
  iterator = grain_pipeline.make_iterator(config)
  take(iterator, 3)
  state = iterator.get_state()
  json.dumps(state)  # what grain's Orbax handler stores must be JSON
  expected = take(iterator, 4)
  resumed = grain_pipeline.make_iterator(config)
  resumed.set_state(state)
  assert_batches_equal(expected, take(resumed, 4))


def test_exact_resume_with_worker_processes(config):
  only(config, 'interleaved')  # one source: one worker process to start per iterator
  config.data.num_workers = 1
  iterator = grain_pipeline.make_iterator(config)
  take(iterator, 2)
  state = iterator.get_state()
  expected = take(iterator, 2)
  iterator.close()
  resumed = grain_pipeline.make_iterator(config)
  resumed.set_state(state)
  actual = take(resumed, 2)
  resumed.close()
  assert_batches_equal(expected, actual)
  config.data.num_workers = 0  # the same batches as decoding in this process
  assert_batches_equal(take(grain_pipeline.make_iterator(config), 4)[2:], expected)


def test_counts_by_reason_reach_the_batch_and_survive_a_restore(config, tmp_path):
  """Skipped captions and images dropped from interleaved documents, counted per reason,
  restored exactly from a saved iterator state."""
  rng = np.random.default_rng(5)
  records = []
  for i in range(12):
    images = [b'', encode_png(rng, 20, 24), b'', encode_png(rng, 16, 16), b'']
    if i % 2:  # one image that does not decode, one over data.max_image_pixels
      images[1], images[3] = b'not an image', encode_png(rng, 60, 60)
    records.append({'id': f'doc{i}', 'images': images,
                    'texts': [random_text(rng, 2, 9) if not image else '' for image in images]})
  write_source('interleaved', records, str(tmp_path / 'docs'))
  config.data.sources.interleaved.path = str(tmp_path / 'docs')
  config.data.max_image_pixels = 2000  # above every caption image (at most 40 x 40)
  only(config, 'captions', 'interleaved')
  iterator = grain_pipeline.make_iterator(config)
  before = take(iterator, 2)
  state = json.loads(json.dumps(iterator.get_state()))  # as the checkpoint stores it
  after = take(iterator, 4)
  skipped = skip_reasons.as_dict(np.sum([b['skipped_by_reason'] for b in before + after], 0))
  dropped = skip_reasons.as_dict(
      np.sum([b['dropped_images_by_reason'] for b in before + after], 0))
  # Captions with a corrupt or truncated image, or blank, are skipped; interleaved
  # documents lose their bad images only (so none of them is skipped).
  assert skipped.keys() == {skip_reasons.UNDECODABLE_IMAGE, skip_reasons.EMPTY_TEXT}
  assert dropped.keys() == {skip_reasons.UNDECODABLE_IMAGE, skip_reasons.IMAGE_OVER_MAX_PIXELS}
  interleaved = grain_pipeline.source_names(config).index('interleaved')
  for batch in before + after:
    assert np.all(batch['skipped_by_reason'][batch['source_id'] == interleaved] == 0)
    assert np.all(batch['dropped_images_by_reason'][batch['source_id'] != interleaved] == 0)
  assert all(b['skipped_by_reason'].sum() and b['dropped_images_by_reason'].sum()
             for b in after[:2])  # what the restore must reproduce is not nothing
  resumed = grain_pipeline.make_iterator(config)
  resumed.set_state(state)
  assert_batches_equal(after[:2], take(resumed, 2))


def test_a_source_of_200_image_documents_makes_rows_that_all_teach(config, tmp_path):
  """Interleaved documents of 200 images: every row carries loss tokens, and the images a
  row cannot hold with their text are dropped and counted (data/dropped_images/row_full)."""
  rng = np.random.default_rng(3)
  pngs = [encode_png(rng, 20, 24) for _ in range(5)]
  records = []
  for i in range(6):
    texts, images = [random_text(rng, 3, 8)], [b'']
    for j in range(200):
      texts.append('')
      images.append(pngs[j % 5])
      if i % 2 and j % 3 == 2:  # odd documents: a short text after every third image
        texts.append(random_text(rng, 1, 4))
        images.append(b'')
    texts.append(random_text(rng, 2, 6))
    images.append(b'')
    records.append({'id': f'album{i}', 'texts': texts, 'images': images})
  write_source('interleaved', records, str(tmp_path / 'albums'))
  config.data.sources.interleaved.path = str(tmp_path / 'albums')
  only(config, 'interleaved')
  counts = skip_reasons.WindowCounts(['interleaved'])
  images = 0
  for batch in take(grain_pipeline.make_iterator(config), 6):
    assert np.all(batch['loss_mask'].sum(-1) > 0), 'a row without loss tokens'
    for row in range(batch['tokens'].shape[0]):
      check_row({key: batch[key][row] for key in batch})
    images += int(batch['image_valid'].sum())
    counts.add(batch)
  metrics = counts.metrics()
  assert metrics['data/rows_without_loss'] == 0
  assert metrics['data/interleaved_rows_without_loss'] == 0
  assert metrics['data/dropped_images/row_full'] > 0
  assert images > 48  # the odd documents keep most of their images, three to a row


def test_max_image_pixels_reaches_the_decoder(config):
  config.data.max_image_pixels = 12345
  to_document = grain_pipeline.record_to_document(config, 'captions', None)
  assert to_document.encoder.max_pixels == 12345
  config.data.max_image_pixels = 100  # below every caption image of the conftest
  with pytest.raises(ValueError, match=r'config\.data\.sources\.captions.*'
                                       r'image_over_max_image_pixels \d+.*max_image_pixels=100'):
    grain_pipeline.make_dataset(config)


def test_two_processes_see_disjoint_records(config, tokenizer):
  only(config, 'captions')
  seen = []
  for process_index in range(2):
    iterator = grain_pipeline.make_iterator(config, process_index=process_index,
                                            process_count=2)
    batch = next(iterator)
    assert batch['tokens'].shape[0] == config.train.batch_size // 2
    seen.append(set(caption_indices(batch, tokenizer).values()))
  assert seen[0] and seen[1] and not seen[0] & seen[1]


def test_missing_directory_names_the_source(config):
  config.data.sources.text.path = 'no/such/dir'
  with pytest.raises(FileNotFoundError, match=r'config\.data\.sources\.text.*no/such/dir'):
    grain_pipeline.make_dataset(config)


def test_source_without_usable_records_names_the_source(config):
  config.data.sources.captions.path = 'all_bad'
  with pytest.raises(ValueError, match=r'config\.data\.sources\.captions.*all_bad'):
    grain_pipeline.make_dataset(config)


def test_resolve_path(config):
  assert grain_pipeline.resolve_path(config, '/abs/x') == '/abs/x'
  assert grain_pipeline.resolve_path(config, 'rel') == f'{config.data.root}/rel'
  assert grain_pipeline.load_tokenizer(config).image_token_id == config.model.image_token_id


def test_tiny_experiment_on_a_small_synthetic_world(tmp_path):
  """The shipped tiny config's keys and shapes drive the pipeline end to end."""
  from data_pipelines import synthetic  # pylint: disable=g-import-not-at-top
  from experiments import tiny  # pylint: disable=g-import-not-at-top
  config = tiny.get_config('smoke')
  config.data.root = str(tmp_path / 'world')
  synthetic.generate(config.data.root, scale=0.01)
  config.data.synthetic = False  # generated above at a small scale
  names = grain_pipeline.source_names(config)
  size, k = config.model.vit.image_size, config.model.connector.num_tokens
  rows, seen_sources = config.train.batch_size, set()
  for batch in take(grain_pipeline.make_iterator(config), 8):
    assert batch['images'].shape == (rows, config.data.max_images, size, size, 3)
    seen_sources |= set(batch['source_id'].tolist())
    for row in range(rows):
      check_row({key: batch[key][row] for key in batch}, seq_len=config.data.seq_len,
                max_images=config.data.max_images, num_image_tokens=k, image_size=size)
  assert seen_sources == set(range(len(names)))
