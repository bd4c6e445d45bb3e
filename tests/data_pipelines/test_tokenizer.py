"""Tokenizer: fixed special ids, round trip, pickling, refusal of foreign models."""

import io
import os
import pickle

import pytest
import sentencepiece as spm

from data_pipelines import tokenizer as tokenizer_lib

CORPUS = [
    'a red circle on the left.',
    'two blue squares at the top.',
    'Question: what colour is the circle? Answer: red',
    'A triangle has three corners.\nA square has four corners.',
] * 20


@pytest.fixture(scope='module')
def trained(tmp_path_factory):
  path = str(tmp_path_factory.mktemp('tok') / 'spm.model')
  return tokenizer_lib.train_tokenizer(CORPUS, path, vocab_size=320)


def test_special_ids(trained):
  assert (trained.pad_id, trained.unk_id, trained.bos_id, trained.eos_id,
          trained.image_token_id) == (0, 1, 2, 3, 4)
  assert trained.id_to_piece(4) == tokenizer_lib.IMAGE_TOKEN
  assert trained.encode(f'see {tokenizer_lib.IMAGE_TOKEN} here').count(4) == 1


def test_vocab_size_at_most_requested(trained):
  assert 261 < trained.vocab_size <= 320


def test_files_written(trained):
  assert os.path.isfile(trained.model_path)
  vocab_path = tokenizer_lib.vocab_path_for(trained.model_path)
  with open(vocab_path, encoding='utf-8') as f:
    assert len(f.read().splitlines()) == trained.vocab_size
  leftovers = [n for n in os.listdir(os.path.dirname(trained.model_path)) if n.startswith('.')]
  assert not leftovers


@pytest.mark.parametrize('text', [
    'two blue squares at the top.',
    'unseen words: zebra, 12345, émigré, 日本',  # byte fallback covers anything
    'line one\nline  two',
])
def test_round_trip(trained, text):
  ids = trained.encode(text)
  assert all(0 <= i < trained.vocab_size for i in ids)
  assert trained.decode(ids) == text


def test_no_bos_eos_and_decode_drops_specials(trained):
  ids = trained.encode('a red circle')
  assert 2 not in ids and 3 not in ids
  assert trained.decode([2, 4, 4] + ids + [3, 0, 0]) == 'a red circle'


def test_pickle(trained):
  clone = pickle.loads(pickle.dumps(trained))
  assert clone.encode('a red circle') == trained.encode('a red circle')
  assert clone.vocab_size == trained.vocab_size


def test_missing_model(tmp_path):
  missing = str(tmp_path / 'nope.model')
  with pytest.raises(FileNotFoundError, match='nope.model'):
    tokenizer_lib.Tokenizer(missing)


def test_foreign_model_refused(tmp_path):
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(  # SentencePiece defaults: unk 0, bos 1, eos 2, no pad
      sentence_iterator=iter(CORPUS), model_writer=model, vocab_size=60,
      hard_vocab_limit=False, minloglevel=2)
  path = tmp_path / 'foreign.model'
  path.write_bytes(model.getvalue())
  with pytest.raises(ValueError, match='foreign.model'):
    tokenizer_lib.Tokenizer(str(path))
