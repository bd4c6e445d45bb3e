"""Hugging Face CLIPVisionModel / CLIPModel (vision tower) -> our ViT parameters.

Layout conversions: torch Linear weights are [out, in] (ours [in, out]); attention
projections are split into heads ([width, heads, head_dim]); the patch convolution
[width, 3, p, p] becomes a dense kernel over row-major (row, column, channel) patch pixels,
matching `ViT.patchify`. Position embeddings trained at another grid are resized to the
config's (`interpolate_position_embedding`). Blocks beyond `feature_layer` are dropped (and
stacked into rows with `scan_layers`);
CLIP's `post_layernorm` becomes the final norm when `final_norm` is on.

`tensor_map` is the one table of the correspondence, used both ways: `convert` imports and
mm1_jax/export/to_pytorch.py exports our ViT as a CLIPVisionModel directory (with
`export_config`; without a final norm, post_layernorm is written as the identity, which
only CLIP's pooled output uses).
"""

from __future__ import annotations

import numpy as np

from mm1_jax.export.hf_io import Assigner, HFImportError, TensorMap
from mm1_jax.models.vit import interpolate_position_embedding, num_blocks

PATCH_KEY = 'embeddings.patch_embedding.weight'
# Our activation name -> CLIP's hidden_act.
HF_ACTIVATIONS = {'quick_gelu': 'quick_gelu', 'gelu_exact': 'gelu', 'gelu': 'gelu_pytorch_tanh'}


def vision_prefix(tensors: dict) -> str:
  """'' for a CLIPVisionModel saved by recent transformers, 'vision_model.' otherwise."""
  for name in tensors:
    if name.endswith(PATCH_KEY) and 'text' not in name:
      return name[:-len(PATCH_KEY)]
  raise HFImportError('vit: no CLIP vision tower in the checkpoint (no '
                     f'*{PATCH_KEY} tensor)')


def vision_config(hf_config: dict) -> dict:
  return hf_config.get('vision_config', hf_config)


def check_config(vit_config, hf_config: dict, assigner: Assigner) -> None:
  hf = vision_config(hf_config)
  for ours, theirs, default in [('width', 'hidden_size', 768), ('depth', 'num_hidden_layers', 12),
                                ('num_heads', 'num_attention_heads', 12),
                                ('mlp_dim', 'intermediate_size', 3072),
                                ('patch_size', 'patch_size', 32),
                                ('norm_eps', 'layer_norm_eps', 1e-5)]:
    assigner.check_config(f'model.vit.{ours}', vit_config[ours], hf.get(theirs, default), theirs)
  act = hf.get('hidden_act', 'quick_gelu')
  expected = {theirs: ours for ours, theirs in HF_ACTIVATIONS.items()}
  assigner.check_config('model.vit.activation', vit_config.activation, expected.get(act, act),
                        'hidden_act')
  if not vit_config.use_class_token:
    raise HFImportError('config.model.vit.use_class_token=False, but CLIP has a class token; '
                       'set it True (and drop_class_token=True to remove it from the output)')


def tensor_map(vit_config, pre: str = '') -> list[TensorMap]:
  """Every CLIP vision tensor (names under `pre`) and our ViT parameter (row) it
  corresponds to, both ways. Importing resizes the position embeddings to the config's
  grid; exporting writes them at it."""
  width, heads = vit_config.width, vit_config.num_heads
  head_dim = width // heads
  p = vit_config.patch_size
  grid = vit_config.image_size // p
  maps = [
      TensorMap(pre + PATCH_KEY, ('patch_embedding', 'kernel'), None,
                lambda w: w.transpose(2, 3, 1, 0).reshape(p * p * 3, width),
                lambda k: k.reshape(p, p, 3, width).transpose(3, 2, 0, 1)),
      TensorMap(pre + 'embeddings.class_embedding', ('class_token',)),
      TensorMap(pre + 'embeddings.position_embedding.weight', ('position_embedding',), None,
                lambda t: np.asarray(interpolate_position_embedding(t, grid, True))),
      TensorMap(pre + 'pre_layrnorm.weight', ('pre_norm', 'scale')),
      TensorMap(pre + 'pre_layrnorm.bias', ('pre_norm', 'bias'))]
  if vit_config.get('final_norm', True):
    maps += [TensorMap(pre + 'post_layernorm.weight', ('final_norm', 'scale')),
             TensorMap(pre + 'post_layernorm.bias', ('final_norm', 'bias'))]

  split = lambda w: w.T.reshape(width, heads, head_dim)
  merge = lambda w: w.reshape(width, width).T
  scan = bool(vit_config.get('scan_layers', False))
  for i in range(num_blocks(vit_config.depth, vit_config.feature_layer)):
    hf = f'{pre}encoder.layers.{i}.'
    ours, index = (('blocks',), i) if scan else (('blocks', i), None)
    add = lambda path, name, *fns: maps.append(TensorMap(hf + name, ours + path, index, *fns))
    for name, proj in [('query', 'q_proj'), ('key', 'k_proj'), ('value', 'v_proj')]:
      add(('attention', name), f'self_attn.{proj}.weight', split, merge)
      add(('attention', f'{name}_bias'), f'self_attn.{proj}.bias',
          lambda b: b.reshape(heads, head_dim), lambda b: b.reshape(width))
    add(('attention', 'out'), 'self_attn.out_proj.weight',
        lambda w: w.T.reshape(heads, head_dim, width), merge)
    add(('attention', 'out_bias'), 'self_attn.out_proj.bias')
    for norm, hf_norm in [('attention_norm', 'layer_norm1'), ('mlp_norm', 'layer_norm2')]:
      add((norm, 'scale'), f'{hf_norm}.weight')
      add((norm, 'bias'), f'{hf_norm}.bias')
    add(('mlp', 'up', 'kernel'), 'mlp.fc1.weight', np.transpose, np.transpose)
    add(('mlp', 'up', 'bias'), 'mlp.fc1.bias')
    add(('mlp', 'down', 'kernel'), 'mlp.fc2.weight', np.transpose, np.transpose)
    add(('mlp', 'down', 'bias'), 'mlp.fc2.bias')
  return maps


def convert(vit_config, hf_config: dict, tensors: dict, target: dict) -> dict:
  """Fills `target` (the pure dict of our ViT's parameters) from CLIP tensors."""
  a = Assigner(target, tensors, where='vit')
  check_config(vit_config, hf_config, a)
  for m in tensor_map(vit_config, vision_prefix(tensors)):
    a.set(m.ours, m.hf, m.to_ours, stacked_index=m.index)
  return target


def export_problem(vit_config) -> str | None:
  """Why our ViT is not exactly a CLIPVisionModel (None when it is)."""
  if not vit_config.use_class_token:
    return 'model.vit.use_class_token=False (CLIP always has a class token)'
  if vit_config.activation not in HF_ACTIVATIONS:
    return f'model.vit.activation={vit_config.activation!r} has no CLIP equivalent'
  return None


def export_config(vit_config, dtype: str = 'float32') -> dict:
  """The CLIPVisionModel config.json of our ViT: the blocks that run (up to feature_layer),
  so that CLIP's last hidden state is our feature layer before our final norm."""
  return {
      'architectures': ['CLIPVisionModel'], 'model_type': 'clip_vision_model',
      'hidden_size': vit_config.width, 'intermediate_size': vit_config.mlp_dim,
      'num_hidden_layers': num_blocks(vit_config.depth, vit_config.feature_layer),
      'num_attention_heads': vit_config.num_heads, 'num_channels': 3,
      'image_size': vit_config.image_size, 'patch_size': vit_config.patch_size,
      'hidden_act': HF_ACTIVATIONS[vit_config.activation],
      'layer_norm_eps': vit_config.norm_eps, 'projection_dim': vit_config.width,
      'torch_dtype': dtype, 'dtype': dtype}
