"""SentencePiece tokenizer with the special ids every part of mm1-jax relies on.

Fixed ids: pad 0, unk 1, bos 2, eos 3, and the image placeholder `<image>` at 4 (each image
in a sequence is a run of K such ids, see DESIGN.md section 2). A model whose ids differ is
refused at load time, so a foreign tokenizer can never silently shift the placeholders.

Training (BPE) uses identity normalisation and keeps whitespace as it is, so that
`decode(encode(text)) == text` for ordinary text; byte fallback makes every string
encodable, even with a vocabulary trained on a tiny corpus.
"""

import io
import os
import tempfile
from typing import Iterable

import sentencepiece as spm

IMAGE_TOKEN = '<image>'

PAD_ID = 0
UNK_ID = 1
BOS_ID = 2
EOS_ID = 3
IMAGE_TOKEN_ID = 4


class Tokenizer:
  """A loaded SentencePiece model; picklable (it carries the serialized model)."""

  def __init__(self, model_path: str):
    model_path = os.fspath(model_path)
    if not os.path.isfile(model_path):
      raise FileNotFoundError(
          f'Tokenizer model {model_path!r} does not exist; train one with '
          '`python -m data_pipelines.prepare tokenizer ...` or '
          '`data_pipelines.tokenizer.train_tokenizer`.')
    with open(model_path, 'rb') as f:
      self._model_proto = f.read()
    self.model_path = model_path
    self._processor = None
    processor = self._sentencepiece()
    self.vocab_size = int(processor.vocab_size())
    self.pad_id = PAD_ID
    self.unk_id = UNK_ID
    self.bos_id = BOS_ID
    self.eos_id = EOS_ID
    self.image_token_id = IMAGE_TOKEN_ID
    self._check_special_ids(processor)
    self._dropped_on_decode = frozenset({PAD_ID, BOS_ID, EOS_ID, IMAGE_TOKEN_ID})

  def _check_special_ids(self, processor):
    found = {
        'pad': processor.pad_id(),
        'unk': processor.unk_id(),
        'bos': processor.bos_id(),
        'eos': processor.eos_id(),
        IMAGE_TOKEN: processor.piece_to_id(IMAGE_TOKEN),
    }
    expected = {'pad': PAD_ID, 'unk': UNK_ID, 'bos': BOS_ID, 'eos': EOS_ID,
                IMAGE_TOKEN: IMAGE_TOKEN_ID}
    wrong = {name: found[name] for name in expected if found[name] != expected[name]}
    if wrong:
      raise ValueError(
          f'Tokenizer model {self.model_path!r} has the wrong special ids {wrong}; mm1-jax '
          f'needs {expected}. Train a compatible one with '
          '`data_pipelines.tokenizer.train_tokenizer`.')

  def _sentencepiece(self) -> spm.SentencePieceProcessor:
    # Created lazily: SentencePieceProcessor itself cannot be pickled.
    if self._processor is None:
      self._processor = spm.SentencePieceProcessor(model_proto=self._model_proto)
    return self._processor

  def encode(self, text: str) -> list[int]:
    """Token ids of `text`, without bos/eos. A literal `<image>` becomes id 4."""
    return list(self._sentencepiece().encode(text))

  def decode(self, ids) -> str:
    """Text of `ids`; pad, bos, eos and image placeholder ids are dropped."""
    kept = [int(i) for i in ids if int(i) not in self._dropped_on_decode]
    return self._sentencepiece().decode(kept)

  def id_to_piece(self, token_id: int) -> str:
    return self._sentencepiece().id_to_piece(int(token_id))

  def __getstate__(self):
    state = self.__dict__.copy()
    state['_processor'] = None
    return state

  def __repr__(self):
    return f'Tokenizer({self.model_path!r}, vocab_size={self.vocab_size})'


def _lines(texts: Iterable[str]):
  """Training sentences: one per non-empty line (SentencePiece trains on lines)."""
  for text in texts:
    for line in text.split('\n'):
      if line.strip():
        yield line


def _write_atomically(path: str, data: bytes) -> None:
  directory = os.path.dirname(os.path.abspath(path))
  os.makedirs(directory, exist_ok=True)
  fd, tmp_path = tempfile.mkstemp(dir=directory, prefix='.' + os.path.basename(path) + '.')
  try:
    with os.fdopen(fd, 'wb') as f:
      f.write(data)
    os.replace(tmp_path, path)
  except BaseException:
    if os.path.exists(tmp_path):
      os.remove(tmp_path)
    raise


def vocab_path_for(model_path: str) -> str:
  """`dir/spm.model` -> `dir/spm.vocab` (the listing SentencePiece's own CLI writes)."""
  root, _ = os.path.splitext(os.fspath(model_path))
  return root + '.vocab'


def train_tokenizer(texts: Iterable[str], model_path: str, vocab_size: int) -> Tokenizer:
  """Trains a BPE SentencePiece model on `texts` and writes it to `model_path`.

  The resulting vocabulary may be smaller than `vocab_size` on a small corpus (never
  larger). The `.vocab` listing is written beside the model. Both files appear atomically.
  """
  model_path = os.fspath(model_path)
  if vocab_size < IMAGE_TOKEN_ID + 1 + 256:
    raise ValueError(
        f'vocab_size {vocab_size} is too small: the 5 special ids and 256 byte-fallback '
        'pieces alone need 261.')
  model = io.BytesIO()
  spm.SentencePieceTrainer.train(
      sentence_iterator=_lines(texts),
      model_writer=model,
      model_type='bpe',  # on this small world BPE keeps whole words; unigram split them
      vocab_size=vocab_size,
      hard_vocab_limit=False,  # small corpora: accept fewer pieces than asked for
      pad_id=PAD_ID,
      unk_id=UNK_ID,
      bos_id=BOS_ID,
      eos_id=EOS_ID,
      user_defined_symbols=[IMAGE_TOKEN],
      byte_fallback=True,
      character_coverage=1.0,
      split_digits=True,
      normalization_rule_name='identity',
      remove_extra_whitespaces=False,
      minloglevel=2,
  )
  processor = spm.SentencePieceProcessor(model_proto=model.getvalue())
  vocab_lines = ''.join(
      f'{processor.id_to_piece(i)}\t{processor.get_score(i):g}\n'
      for i in range(processor.vocab_size()))
  _write_atomically(vocab_path_for(model_path), vocab_lines.encode('utf-8'))
  _write_atomically(model_path, model.getvalue())
  return Tokenizer(model_path)
