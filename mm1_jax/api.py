"""The inference API: `mm1_jax.load(workdir)` -> a trained MM1 ready to use.

    model = mm1_jax.load('/tmp/mm1_tiny')
    batch = model.prepare([['a picture:', image, 'it shows']])
    logits = model.forward(batch)              # numpy [B, L, V]
    feats = model.image_features([image])      # numpy [N, P, width], the connector's input
    text = model.generate(['a picture:', image, 'it shows'], max_new_tokens=16)

Parameters are restored from the latest (or the given) Orbax checkpoint onto one device.
`generate` is greedy decoding with a KV cache (the evaluation's decoder).
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
from data_pipelines import images as images_lib
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
        image_token_id=self.tokenizer.image_token_id, add_bos=True, add_eos=add_eos,
        max_pixels=self._max_pixels())

  def _max_pixels(self) -> int:
    """The training run's pixel bound for encoded images (config data.max_image_pixels)."""
    return int(self.config.data.get('max_image_pixels', images_lib.DEFAULT_MAX_IMAGE_PIXELS))

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
    pixels = np.stack([documents_lib.load_image(image, size, max_pixels=self._max_pixels())
                       for image in images])
    return np.asarray(self._image_features(self._model, jnp.asarray(pixels)))

  def generate(self, parts: Sequence[Any], max_new_tokens: int = 32) -> str:
    """Greedy continuation of one prompt (a list of str and images); returns the new text."""
    return self.tokenizer.decode(self.generate_ids(parts, max_new_tokens))

  def generate_ids(self, parts: Sequence[Any], max_new_tokens: int = 32) -> list[int]:
    """The token ids `generate` produces (without the final eos): greedy, with a KV cache."""
    from mm1_jax.eval import decoding  # the evaluation's decoder, shared
    result = decoding.greedy_generate(
        self._model, self.prepare([parts]), self.tokenizer, max_new_tokens=max_new_tokens,
        stop=decoding.StopConditions(token_ids=(self.tokenizer.eos_id,)), use_cache=True)
    return [int(i) for i in result.token_ids[0]]


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
