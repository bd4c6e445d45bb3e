"""Hugging Face LlamaForCausalLM -> our decoder parameters.

Both use the 'rotate half' RoPE pairing, so the projections only change layout: torch
Linear [out, in] -> ours [in, heads, head_dim] (and [heads, head_dim, out] for o_proj).
With `scan_layers` the layers are written into the stacked arrays' rows. Untied
embeddings need `lm_head.weight`; a tied config requires a tied checkpoint.

`tensor_map` is the one table of the correspondence, used both ways: `convert` imports
(HF -> ours) and mm1_jax/export/to_pytorch.py exports a dense decoder as a Llama directory
(ours -> HF, with `export_config`).
"""

from __future__ import annotations

import numpy as np

from mm1_jax.export.hf_io import Assigner, HFImportError, TensorMap


def _rope_theta(hf: dict) -> float:
  if 'rope_theta' in hf:
    return float(hf['rope_theta'])
  params = hf.get('rope_parameters') or {}
  if params.get('rope_type', 'default') != 'default':
    raise HFImportError(f"rope_parameters.rope_type={params['rope_type']!r}: only plain RoPE "
                       f"('default') is supported")
  return float(params.get('rope_theta', 10000.0))


def check_config(dec, hf: dict, a: Assigner) -> None:
  for ours, theirs in [('vocab_size', 'vocab_size'), ('d_model', 'hidden_size'),
                       ('num_layers', 'num_hidden_layers'), ('num_heads', 'num_attention_heads'),
                       ('d_ff', 'intermediate_size'), ('norm_eps', 'rms_norm_eps')]:
    a.check_config(f'model.decoder.{ours}', dec[ours], hf.get(theirs), theirs)
  a.check_config('model.decoder.num_kv_heads', dec.num_kv_heads,
                 hf.get('num_key_value_heads') or hf.get('num_attention_heads'),
                 'num_key_value_heads')
  a.check_config('model.decoder.rope_theta', float(dec.rope_theta), _rope_theta(hf),
                 'rope_theta')
  a.check_config('model.decoder.tie_embeddings', bool(dec.tie_embeddings),
                 bool(hf.get('tie_word_embeddings', False)), 'tie_word_embeddings')
  if hf.get('hidden_act', 'silu') != 'silu':
    raise HFImportError(f"hidden_act={hf['hidden_act']!r}: the decoder's SwiGLU uses silu")
  if hf.get('attention_bias') or hf.get('mlp_bias'):
    raise HFImportError('attention_bias/mlp_bias: the decoder has no biases')
  head_dim = hf.get('head_dim')
  if head_dim is not None and head_dim != dec.d_model // dec.num_heads:
    raise HFImportError(f'head_dim={head_dim} differs from d_model / num_heads')


def tensor_map(dec) -> list[TensorMap]:
  """Every Llama tensor and the decoder parameter (row) it corresponds to, both ways."""
  d, heads, kv = dec.d_model, dec.num_heads, dec.num_kv_heads
  head_dim = d // heads
  maps = [TensorMap('model.embed_tokens.weight', ('embedding',)),
          TensorMap('model.norm.weight', ('final_norm', 'scale'))]
  if not dec.tie_embeddings:
    maps.append(TensorMap('lm_head.weight', ('output',), None, np.transpose, np.transpose))
  projections = [  # (ours, hf, heads of the projection)
      (('attention', 'query'), 'self_attn.q_proj.weight', heads),
      (('attention', 'key'), 'self_attn.k_proj.weight', kv),
      (('attention', 'value'), 'self_attn.v_proj.weight', kv)]
  scan = bool(dec.scan_layers)
  for i in range(dec.num_layers):
    hf = f'model.layers.{i}.'
    ours, index = (('layers',), i) if scan else (('layers', i), None)
    for path, name, n in projections:
      maps.append(TensorMap(hf + name, ours + path, index,
                            lambda w, n=n: w.T.reshape(d, n, head_dim),
                            lambda w: w.reshape(d, -1).T))
    maps.append(TensorMap(hf + 'self_attn.o_proj.weight', ours + ('attention', 'out'), index,
                          lambda w: w.T.reshape(heads, head_dim, d),
                          lambda w: w.reshape(heads * head_dim, d).T))
    maps.append(TensorMap(hf + 'input_layernorm.weight', ours + ('attention_norm', 'scale'),
                          index))
    maps.append(TensorMap(hf + 'post_attention_layernorm.weight', ours + ('mlp_norm', 'scale'),
                          index))
    for name in ('gate', 'up', 'down'):
      maps.append(TensorMap(hf + f'mlp.{name}_proj.weight', ours + ('mlp', name, 'kernel'),
                            index, np.transpose, np.transpose))
  return maps


def convert(dec, hf_config: dict, tensors: dict, target: dict) -> dict:
  """Fills `target` (the pure dict of our decoder's parameters) from Llama tensors."""
  a = Assigner(target, tensors, where='decoder')
  check_config(dec, hf_config, a)
  for m in tensor_map(dec):
    a.set(m.ours, m.hf, m.to_ours, stacked_index=m.index)
  return target


def export_config(dec, *, max_position_embeddings: int, bos_token_id: int | None = None,
                  eos_token_id: int | None = None, dtype: str = 'float32') -> dict:
  """The LlamaForCausalLM config.json of our (dense) decoder: the inverse of check_config."""
  return {
      'architectures': ['LlamaForCausalLM'], 'model_type': 'llama',
      'vocab_size': dec.vocab_size, 'hidden_size': dec.d_model,
      'intermediate_size': dec.d_ff, 'num_hidden_layers': dec.num_layers,
      'num_attention_heads': dec.num_heads, 'num_key_value_heads': dec.num_kv_heads,
      'head_dim': dec.d_model // dec.num_heads, 'hidden_act': 'silu',
      'rms_norm_eps': dec.norm_eps, 'rope_theta': float(dec.rope_theta),
      'rope_parameters': {'rope_type': 'default', 'rope_theta': float(dec.rope_theta)},
      'tie_word_embeddings': bool(dec.tie_embeddings), 'attention_bias': False,
      'mlp_bias': False, 'max_position_embeddings': max_position_embeddings,
      'bos_token_id': bos_token_id, 'eos_token_id': eos_token_id, 'torch_dtype': dtype,
      'dtype': dtype, 'use_cache': True}
