"""The inference API: `mm1_jax.load(workdir)` -> a trained MM1 ready to use.

    model = mm1_jax.load('/tmp/mm1_tiny')
    batch = model.prepare([['a picture:', image, 'it shows']])
    logits = model.forward(batch)              # numpy [B, L, V]
    feats = model.image_features([image])      # numpy [N, P, width], the connector's input
    text = model.generate(['a picture:', image, 'it shows'], max_new_tokens=16)

Parameters are restored from the latest (or the given) Orbax checkpoint onto one device.
`generate` is greedy and recomputes the whole prefix each step (no KV cache yet); it pads
to one fixed length so it compiles once.
"""

from __future__ import annotations

import json
import os
from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
from flax import nnx

from data_pipelines import documents as documents_lib
from data_pipelines import packing
from data_pipelines.tokenizer import Tokenizer
from mm1_jax.parallel import mesh as mesh_lib
from mm1_jax.train import checkpoint as checkpoint_lib
from mm1_jax.train import optimizer as optimizer_lib
from mm1_jax.train import state as state_lib
from mm1_jax.train import trainer

MODEL_KEYS = ('tokens', 'segment_ids', 'positions', 'images', 'image_valid')


def load_config(workdir: str) -> ml_collections.ConfigDict:
  path = os.path.join(workdir, 'config.json')
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} not found: {workdir} is not a training workdir')
  with open(path, encoding='utf-8') as f:
    return ml_collections.ConfigDict(json.load(f))


class Model:
  """A trained MM1 with its tokenizer; inputs and outputs are numpy."""

  def __init__(self, config, tokenizer: Tokenizer, model, step: int):
    self.config = config
    self.tokenizer = tokenizer
    self.step = step
    self._model = model
    self._forward = nnx.jit(lambda m, batch: m(batch)[0])
    self._image_features = nnx.jit(lambda m, images: m.image_features(images))

  def _document(self, parts: Sequence[Any], *, add_eos: bool) -> documents_lib.Document:
    return documents_lib.encode_parts(
        parts, self.tokenizer, image_size=self.config.model.vit.image_size,
        num_image_tokens=self.config.model.connector.num_tokens,
        image_token_id=self.tokenizer.image_token_id, add_bos=True, add_eos=add_eos)

  def prepare(self, rows: Sequence[Sequence[Any]], *, seq_len: int | None = None,
              max_images: int | None = None, add_eos: bool = False) -> dict[str, np.ndarray]:
    """Rows (each a list of str and images: PIL, uint8 arrays or bytes) -> a contract batch."""
    docs = [self._document(row, add_eos=add_eos) for row in rows]
    return packing.rows_from_documents(
        docs, image_token_id=self.tokenizer.image_token_id, seq_len=seq_len,
        max_images=max_images, pad_id=self.tokenizer.pad_id)

  def forward(self, batch: dict[str, np.ndarray]) -> np.ndarray:
    """Logits float32 [B, L, V] for a contract batch."""
    inputs = {k: jnp.asarray(batch[k]) for k in MODEL_KEYS}
    return np.asarray(self._forward(self._model, inputs))

  def image_features(self, images: Sequence[Any]) -> np.ndarray:
    """The ViT output the connector consumes, for images (PIL, uint8 arrays or bytes)."""
    size = self.config.model.vit.image_size
    pixels = np.stack([documents_lib.load_image(image, size) for image in images])
    return np.asarray(self._image_features(self._model, jnp.asarray(pixels)))

  def generate(self, parts: Sequence[Any], max_new_tokens: int = 32) -> str:
    """Greedy continuation of one prompt (a list of str and images); returns the new text."""
    return self.tokenizer.decode(self.generate_ids(parts, max_new_tokens))

  def generate_ids(self, parts: Sequence[Any], max_new_tokens: int = 32) -> list[int]:
    """The token ids `generate` produces (without the final eos)."""
    document = self._document(parts, add_eos=False)
    prompt_len = len(document.tokens)
    total = prompt_len + max_new_tokens
    tokens = list(document.tokens)
    generated: list[int] = []
    for _ in range(max_new_tokens):
      doc = documents_lib.Document(tokens=np.asarray(tokens, np.int32), images=document.images)
      batch = packing.rows_from_documents(
          [doc], image_token_id=self.tokenizer.image_token_id, seq_len=total,
          max_images=max(1, document.num_images), pad_id=self.tokenizer.pad_id)
      logits = self.forward(batch)
      next_id = int(np.argmax(logits[0, len(tokens) - 1]))
      if next_id == self.tokenizer.eos_id:
        break
      generated.append(next_id)
      tokens.append(next_id)
    return generated


def load(workdir: str, step: int | None = None) -> Model:
  """Loads config, tokenizer and parameters of a training workdir (latest step by default)."""
  workdir = os.path.abspath(os.path.expanduser(workdir))
  config = load_config(workdir)
  tokenizer = Tokenizer(os.path.join(workdir, trainer.TOKENIZER_FILE))
  checkpointer = checkpoint_lib.Checkpointer(
      os.path.join(workdir, 'checkpoints'), keep=config.checkpoint.keep, use_async=False)
  try:
    step = checkpointer.latest_step() if step is None else step
    if step is None:
      raise FileNotFoundError(f'no checkpoint in {checkpointer.directory}')
    single = ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1, expert=1))
    mesh = mesh_lib.make_mesh(single, devices=jax.devices()[:1])
    settings = optimizer_lib.resolve_settings(config, state_lib.count_params(config))
    tx = optimizer_lib.make_optimizer(config, settings)
    layout = state_lib.make_layout(config, mesh, tx)
    state = checkpointer.restore(step, layout.abstract)
    model = state_lib.merge_model(layout.graphdef, state['params'])
  finally:
    checkpointer.close()
  return Model(config, tokenizer, model, int(step))
