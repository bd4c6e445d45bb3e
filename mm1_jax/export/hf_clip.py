"""Hugging Face CLIPVisionModel / CLIPModel (vision tower) -> our ViT parameters.

Layout conversions: torch Linear weights are [out, in] (ours [in, out]); attention
projections are split into heads ([width, heads, head_dim]); the patch convolution
[width, 3, p, p] becomes a dense kernel over row-major (row, column, channel) patch pixels,
matching `ViT.patchify`. Position embeddings trained at another grid are resized to the
config's (`interpolate_position_embedding`). Blocks beyond `feature_layer` are dropped (and
stacked into rows with `scan_layers`);
CLIP's `post_layernorm` becomes the final norm when `final_norm` is on.
"""

from __future__ import annotations

import numpy as np

from mm1_jax.export.hf_io import Assigner, HFImportError
from mm1_jax.models.vit import interpolate_position_embedding, num_blocks

PATCH_KEY = 'embeddings.patch_embedding.weight'


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
  expected = {'quick_gelu': 'quick_gelu', 'gelu': 'gelu_exact', 'gelu_pytorch_tanh': 'gelu'}
  assigner.check_config('model.vit.activation', vit_config.activation, expected.get(act, act),
                        'hidden_act')
  if not vit_config.use_class_token:
    raise HFImportError('config.model.vit.use_class_token=False, but CLIP has a class token; '
                       'set it True (and drop_class_token=True to remove it from the output)')


def convert(vit_config, hf_config: dict, tensors: dict, target: dict) -> dict:
  """Fills `target` (the pure dict of our ViT's parameters) from CLIP tensors."""
  a = Assigner(target, tensors, where='vit')
  check_config(vit_config, hf_config, a)
  pre = vision_prefix(tensors)
  width, heads = vit_config.width, vit_config.num_heads
  head_dim = width // heads
  p = vit_config.patch_size

  a.set(('patch_embedding', 'kernel'), pre + PATCH_KEY,
        lambda w: w.transpose(2, 3, 1, 0).reshape(p * p * 3, width))
  a.set(('class_token',), pre + 'embeddings.class_embedding')
  grid = vit_config.image_size // p
  a.set(('position_embedding',), pre + 'embeddings.position_embedding.weight',
        lambda t: np.asarray(interpolate_position_embedding(t, grid, True)))
  a.set(('pre_norm', 'scale'), pre + 'pre_layrnorm.weight')
  a.set(('pre_norm', 'bias'), pre + 'pre_layrnorm.bias')
  if vit_config.get('final_norm', True):
    a.set(('final_norm', 'scale'), pre + 'post_layernorm.weight')
    a.set(('final_norm', 'bias'), pre + 'post_layernorm.bias')

  split = lambda w: w.T.reshape(width, heads, head_dim)
  scan = bool(vit_config.get('scan_layers', False))
  for i in range(num_blocks(vit_config.depth, vit_config.feature_layer)):
    hf = f'{pre}encoder.layers.{i}.'
    ours, index = (('blocks',), i) if scan else (('blocks', i), None)
    set_ = lambda path, name, fn=None: a.set(path, name, fn, stacked_index=index)
    for name, proj in [('query', 'q_proj'), ('key', 'k_proj'), ('value', 'v_proj')]:
      set_(ours + ('attention', name), hf + f'self_attn.{proj}.weight', split)
      set_(ours + ('attention', f'{name}_bias'), hf + f'self_attn.{proj}.bias',
           lambda b: b.reshape(heads, head_dim))
    set_(ours + ('attention', 'out'), hf + 'self_attn.out_proj.weight',
         lambda w: w.T.reshape(heads, head_dim, width))
    set_(ours + ('attention', 'out_bias'), hf + 'self_attn.out_proj.bias')
    for norm, hf_norm in [('attention_norm', 'layer_norm1'), ('mlp_norm', 'layer_norm2')]:
      set_(ours + (norm, 'scale'), hf + f'{hf_norm}.weight')
      set_(ours + (norm, 'bias'), hf + f'{hf_norm}.bias')
    set_(ours + ('mlp', 'up', 'kernel'), hf + 'mlp.fc1.weight', np.transpose)
    set_(ours + ('mlp', 'up', 'bias'), hf + 'mlp.fc1.bias')
    set_(ours + ('mlp', 'down', 'kernel'), hf + 'mlp.fc2.weight', np.transpose)
    set_(ours + ('mlp', 'down', 'bias'), hf + 'mlp.fc2.bias')
  return target
