"""A pure-PyTorch reference implementation of MM1, loading what `to_pytorch` exports.

    from mm1_jax.export.torch_model import MM1ForCausalLM
    model = MM1ForCausalLM.from_pretrained('OUT')   # OUT/config.json + safetensors
    logits = model(**batch)                         # float32 [B, L, V]

Importable without JAX (torch, numpy and safetensors only). `batch` is the model contract
of DESIGN.md as torch tensors (numpy arrays are accepted too): tokens, segment_ids,
positions int [B, L], images uint8 [B, M, H, W, 3], image_valid bool [B, M]; targets,
loss_mask and source_id are accepted and ignored.

The forward pass mirrors mm1_jax/models operation by operation: the ViT on the CLIP-
normalised images (torch_vit.py), the connector (torch_connectors.py), the image tokens
scattered into the `<image>` placeholder runs in slot order, and the decoder
(torch_decoder.py). Parameters keep the JAX layout and names, so `state_dict()` keys are
the exported safetensors keys (mm1_jax/export/naming.py) and a state dict round trip is
exact. It is a reference, written for clarity rather than speed; MoE layers never drop.

Image scatter (as mm1.py): the images of a row give M*K embeddings in slot order; the
position of the r-th `<image>` id of a row takes embedding r. An invalid slot's
embeddings, and ranks beyond M*K, give zeros.

Einsum letters: none here (see the submodules).
"""

from __future__ import annotations

import json
import os
from collections.abc import Mapping
from typing import Any

import torch
from torch import nn

from mm1_jax.export.torch_connectors import make_connector
from mm1_jax.export.torch_decoder import Decoder
from mm1_jax.export.torch_vit import ViT

CONFIG_FILE = 'config.json'
WEIGHTS_FILE = 'model.safetensors'
INDEX_FILE = 'model.safetensors.index.json'
MODEL_KEYS = ('tokens', 'segment_ids', 'positions', 'images', 'image_valid')
IGNORED_KEYS = ('targets', 'loss_mask', 'source_id')


def _plain(config: Any) -> dict:
  """A ConfigDict or mapping -> plain nested dicts (what config.json holds)."""
  if hasattr(config, 'to_dict'):
    config = config.to_dict()
  return json.loads(json.dumps(config))


def read_config(path: str) -> dict:
  """The model section of OUT/config.json."""
  file = os.path.join(path, CONFIG_FILE)
  if not os.path.exists(file):
    raise FileNotFoundError(f'{file} not found: {path} is not an exported MM1 directory')
  with open(file, encoding='utf-8') as f:
    config = json.load(f)
  if 'model' not in config:
    raise ValueError(f'{file} has no "model" section (the model config of the export)')
  return config['model']


def read_tensors(path: str) -> dict[str, torch.Tensor]:
  """Every tensor of OUT/model.safetensors, or of the shards its index file lists."""
  from safetensors import SafetensorError
  from safetensors.torch import load_file
  index = os.path.join(path, INDEX_FILE)
  if os.path.exists(index):
    with open(index, encoding='utf-8') as f:
      weight_map = json.load(f)['weight_map']
    files = sorted(set(weight_map.values()))
  elif os.path.exists(os.path.join(path, WEIGHTS_FILE)):
    weight_map, files = None, [WEIGHTS_FILE]
  else:
    raise FileNotFoundError(f'neither {WEIGHTS_FILE} nor {INDEX_FILE} in {path}')
  tensors: dict[str, torch.Tensor] = {}
  for name in files:
    file = os.path.join(path, name)
    if not os.path.exists(file):
      raise FileNotFoundError(f'{file} (listed in {INDEX_FILE}) does not exist')
    try:
      shard = load_file(file)
    except (SafetensorError, OSError, ValueError) as e:
      raise ValueError(f'{file} is not a readable safetensors file (truncated?): {e}') from e
    if weight_map is not None:
      strays = sorted(k for k in shard if weight_map.get(k) != name)
      if strays:
        raise ValueError(f'{file} holds tensors that {INDEX_FILE} places elsewhere: '
                         f'{strays[:5]}')
    tensors.update(shard)
  if weight_map is not None:
    missing = sorted(set(weight_map) - set(tensors))
    if missing:
      raise ValueError(f'{INDEX_FILE} lists tensors its shards do not hold: {missing[:5]}')
  return tensors


class MM1ForCausalLM(nn.Module):
  """ViT -> connector -> image tokens scattered into the decoder's input embeddings."""

  def __init__(self, model_config: Mapping):
    super().__init__()
    config = _plain(model_config)
    self.config = config
    self.image_token_id = int(config['image_token_id'])
    self.num_image_tokens = int(config['connector']['num_tokens'])
    self.vit = ViT(config['vit'])
    self.connector = make_connector(config)
    self.decoder = Decoder(config)

  @classmethod
  def from_pretrained(cls, path: str, dtype: torch.dtype | None = None) -> 'MM1ForCausalLM':
    """Builds the model of OUT/config.json and loads its safetensors (sharded or not).

    Keys and shapes must match the config exactly; the error names the tensors that
    do not. `dtype` casts the parameters (default: as stored).
    """
    path = os.path.abspath(os.path.expanduser(path))
    config = read_config(path)
    with torch.device('meta'):  # no memory for parameters that loading replaces
      model = cls(config)
    tensors = read_tensors(path)
    expected = {k: tuple(v.shape) for k, v in model.state_dict().items()}
    missing = sorted(set(expected) - set(tensors))
    unexpected = sorted(set(tensors) - set(expected))
    wrong = sorted(k for k in set(expected) & set(tensors)
                   if tuple(tensors[k].shape) != expected[k])
    if missing or unexpected or wrong:
      raise ValueError(
          f'the tensors in {path} do not match its config.json: missing {missing[:5]}, '
          f'unexpected {unexpected[:5]}, wrong shape '
          f'{[(k, tuple(tensors[k].shape), expected[k]) for k in wrong[:5]]}')
    if dtype is not None:
      tensors = {k: v.to(dtype) for k, v in tensors.items()}
    model.load_state_dict(tensors, strict=True, assign=True)
    return model.eval()

  def embed_images(self, images: torch.Tensor) -> torch.Tensor:
    """uint8 [n, H, W, 3] -> image tokens [n, K, d_model]."""
    return self.connector(self.vit(images))

  def scatter_images(self, text_embeddings, tokens, images, image_valid) -> torch.Tensor:
    """The embeddings at `<image>` positions replaced by the row's image tokens, in order."""
    batch, slots = images.shape[:2]
    image_tokens = self.embed_images(images.reshape(batch * slots, *images.shape[2:]))
    image_tokens = image_tokens * image_valid.reshape(batch * slots, 1, 1).to(image_tokens.dtype)
    available = slots * self.num_image_tokens
    image_tokens = image_tokens.reshape(batch, available, -1).to(text_embeddings.dtype)
    is_image = tokens == self.image_token_id
    rank = torch.cumsum(is_image.to(torch.int32), dim=1) - 1
    gathered = torch.gather(image_tokens, 1, rank.clamp(0, available - 1).long()[..., None]
                            .expand(-1, -1, image_tokens.shape[-1]))
    use = is_image & (rank < available)
    return torch.where(use[..., None], gathered, text_embeddings)

  def embed(self, tokens, images=None, image_valid=None) -> torch.Tensor:
    """Token embeddings with the images scattered into their runs [b, l, d]."""
    x = self.decoder.embed_tokens(tokens)
    if images is not None and images.shape[1] > 0:
      if image_valid is None:
        image_valid = torch.ones(images.shape[:2], dtype=torch.bool)
      x = self.scatter_images(x, tokens, images, image_valid.bool())
    return x

  def forward(self, tokens, segment_ids, positions, images=None, image_valid=None,
              **ignored) -> torch.Tensor:
    """The contract batch -> float32 logits [B, L, V]."""
    unknown = sorted(set(ignored) - set(IGNORED_KEYS))
    if unknown:
      raise TypeError(f'unknown batch keys {unknown}; the model reads {MODEL_KEYS} and '
                      f'ignores {IGNORED_KEYS}')
    tokens, segment_ids, positions = (torch.as_tensor(t) for t in (tokens, segment_ids,
                                                                   positions))
    if images is not None:
      images = torch.as_tensor(images)
      if images.dtype != torch.uint8:
        raise ValueError(f'images must be uint8 [B, M, H, W, 3], got {images.dtype}')
    if image_valid is not None:
      image_valid = torch.as_tensor(image_valid)
    x = self.embed(tokens, images, image_valid)
    return self.decoder(x, segment_ids, positions)
