"""Hugging Face LlamaForCausalLM -> our decoder parameters.

Both use the 'rotate half' RoPE pairing, so the projections only change layout: torch
Linear [out, in] -> ours [in, heads, head_dim] (and [heads, head_dim, out] for o_proj).
With `scan_layers` the layers are written into the stacked arrays' rows. Untied
embeddings need `lm_head.weight`; a tied config requires a tied checkpoint.
"""

from __future__ import annotations

import numpy as np

from mm1_jax.export.hf_io import Assigner, HFImportError


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


def convert(dec, hf_config: dict, tensors: dict, target: dict) -> dict:
  """Fills `target` (the pure dict of our decoder's parameters) from Llama tensors."""
  a = Assigner(target, tensors, where='decoder')
  check_config(dec, hf_config, a)
  d, heads, kv = dec.d_model, dec.num_heads, dec.num_kv_heads
  head_dim = d // heads
  a.set(('embedding',), 'model.embed_tokens.weight')
  a.set(('final_norm', 'scale'), 'model.norm.weight')
  if not dec.tie_embeddings:
    a.set(('output',), 'lm_head.weight', np.transpose)
  scan = bool(dec.scan_layers)
  for i in range(dec.num_layers):
    hf = f'model.layers.{i}.'
    ours, index = (('layers',), i) if scan else (('layers', i), None)
    put = lambda path, name, fn=None: a.set(ours + path, hf + name, fn, stacked_index=index)
    put(('attention', 'query'), 'self_attn.q_proj.weight',
        lambda w: w.T.reshape(d, heads, head_dim))
    put(('attention', 'key'), 'self_attn.k_proj.weight', lambda w: w.T.reshape(d, kv, head_dim))
    put(('attention', 'value'), 'self_attn.v_proj.weight', lambda w: w.T.reshape(d, kv, head_dim))
    put(('attention', 'out'), 'self_attn.o_proj.weight',
        lambda w: w.T.reshape(heads, head_dim, d))
    put(('attention_norm', 'scale'), 'input_layernorm.weight')
    put(('mlp_norm', 'scale'), 'post_attention_layernorm.weight')
    for name in ('gate', 'up', 'down'):
      put(('mlp', name, 'kernel'), f'mlp.{name}_proj.weight', np.transpose)
  return target
