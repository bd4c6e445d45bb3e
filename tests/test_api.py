"""`mm1_jax.load(workdir)`: the inference API on a trained workdir."""

import numpy as np
import pytest
from PIL import Image

import mm1_jax
from mm1_jax.train import state as state_lib


@pytest.fixture(scope='module')
def model(smoke_run):
  _, workdir, _ = smoke_run
  return mm1_jax.load(workdir)


def _image(color):
  return Image.new('RGB', (64, 64), color)


def test_load_restores_the_latest_step_and_tokenizer(model, smoke_run):
  config, _, summary = smoke_run
  assert model.step == summary.steps
  assert model.config.model.decoder.d_model == config.model.decoder.d_model
  tok = model.tokenizer
  assert (tok.pad_id, tok.bos_id, tok.eos_id, tok.image_token_id) == (0, 2, 3, 4)
  assert tok.decode(tok.encode('a red circle')) == 'a red circle'


def test_load_of_an_earlier_step_gives_other_parameters(model, smoke_run):
  _, workdir, _ = smoke_run
  earlier = mm1_jax.load(workdir, step=3)
  assert earlier.step == 3
  batch = model.prepare([['a red circle']])
  assert not np.allclose(earlier.forward(batch), model.forward(batch))


def test_load_of_a_missing_step_names_it(smoke_run):
  _, workdir, _ = smoke_run
  with pytest.raises(FileNotFoundError, match='step 999'):
    mm1_jax.load(workdir, step=999)


def test_load_of_a_directory_that_is_not_a_workdir(tmp_path):
  with pytest.raises(FileNotFoundError, match='config.json'):
    mm1_jax.load(str(tmp_path))


def test_prepare_follows_the_batch_contract(model):
  k = model.config.model.connector.num_tokens
  batch = model.prepare([['one', _image('red'), 'red'], ['just text here']])
  assert batch['tokens'].dtype == np.int32 and batch['tokens'].shape[0] == 2
  assert (batch['tokens'][0] == model.tokenizer.image_token_id).sum() == k
  assert batch['image_valid'].tolist() == [[True], [False]]
  assert batch['images'].dtype == np.uint8
  size = model.config.model.vit.image_size
  assert batch['images'].shape == (2, 1, size, size, 3)
  assert batch['tokens'][0, 0] == model.tokenizer.bos_id


def test_forward_matches_the_model_on_the_same_batch(model, smoke_run):
  batch = model.prepare([['a', _image('blue'), 'blue square']])
  logits = model.forward(batch)
  assert logits.shape == batch['tokens'].shape + (model.config.model.decoder.vocab_size,)
  assert logits.dtype == np.float32 and np.isfinite(logits).all()
  # The image matters: another picture changes the logits after its run, not before it.
  other = model.forward(model.prepare([['a', _image('yellow'), 'blue square']]))
  first_image = int(np.argmax(batch['tokens'][0] == model.tokenizer.image_token_id))
  np.testing.assert_allclose(logits[0, :first_image], other[0, :first_image], atol=1e-5)
  assert not np.allclose(logits[0, -1], other[0, -1], atol=1e-5)


def test_image_features_have_the_vit_shape(model):
  vit = model.config.model.vit
  features = model.image_features([_image('red'), np.zeros((40, 50, 3), np.uint8)])
  patches = (vit.image_size // vit.patch_size) ** 2 + (1 if vit.use_class_token else 0)
  assert features.shape == (2, patches, vit.width)
  assert not np.allclose(features[0], features[1])


def test_generate_is_greedy_decoding_of_forward(model):
  prompt = ['a picture:', _image('green'), 'it shows']
  ids = model.generate_ids(prompt, max_new_tokens=3)
  assert model.generate(prompt, max_new_tokens=3) == model.tokenizer.decode(ids)
  # Each generated id is the argmax of forward() at the end of the prompt extended so far.
  batch = model.prepare([prompt])
  length = int((batch['segment_ids'][0] > 0).sum())
  extended = batch['tokens'][0, :length].tolist()
  for expected in ids:
    row = model.prepare([prompt], seq_len=length + 3)
    row['tokens'][0, :len(extended)] = extended
    row['segment_ids'][0, :len(extended)] = 1
    row['positions'][0, :len(extended)] = np.arange(len(extended))
    logits = model.forward(row)
    assert int(np.argmax(logits[0, len(extended) - 1])) == expected
    extended.append(expected)
