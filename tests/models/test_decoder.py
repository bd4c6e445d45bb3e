"""Decoder: causality, segment isolation, GQA, RoPE relativity, bf16, scan/remat, kernels."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import tiny
from mm1_jax.models.decoder import Decoder

LENGTH = 16


def _config(**overrides):
  config = tiny.get_config().model.decoder
  config.num_layers = 2  # compile time dominates; two layers show every property
  config.update(overrides)
  return config


def _jit_forward(model):
  graphdef, state = nnx.split(model)

  @jax.jit
  def forward(state, tokens, segment_ids, positions):
    decoder = nnx.merge(graphdef, state)
    return decoder(decoder.embed_tokens(tokens), segment_ids, positions)

  return functools.partial(forward, state)


@pytest.fixture(scope='module')
def forward():
  return _jit_forward(Decoder(_config(), rngs=nnx.Rngs(0)))


def _tokens(seed, batch=2):
  return jnp.asarray(np.random.default_rng(seed).integers(5, 512, (batch, LENGTH), np.int32))


def _one_segment(batch=2):
  return (jnp.ones((batch, LENGTH), jnp.int32),
          jnp.broadcast_to(jnp.arange(LENGTH, dtype=jnp.int32), (batch, LENGTH)))


def test_causality(forward):
  tokens = _tokens(0)
  segments, positions = _one_segment()
  logits = forward(tokens, segments, positions)
  assert logits.shape == (2, LENGTH, 512) and logits.dtype == jnp.float32
  changed = forward(tokens.at[:, 10].set(7), segments, positions)
  np.testing.assert_allclose(changed[:, :10], logits[:, :10], atol=1e-5)
  assert not np.allclose(changed[:, 10:], logits[:, 10:], atol=1e-3)


def test_segments_are_isolated_and_positions_restart(forward):
  # Row: document 1 (6 tokens), document 2 (7 tokens), 3 padding.
  # Row 1 (the one checked): document 2 alone at the start, then padding.
  segments = jnp.asarray([[1] * 6 + [2] * 7 + [0] * 3, [1] * 7 + [0] * 9], jnp.int32)
  positions = jnp.asarray([list(range(6)) + list(range(7)) + [0] * 3,
                           list(range(7)) + [0] * 9], jnp.int32)
  tokens = _tokens(1)
  tokens = tokens.at[1, :7].set(tokens[0, 6:13])
  logits = forward(tokens, segments, positions)
  other_doc1 = tokens.at[0, :6].set(_tokens(2)[0, :6])
  np.testing.assert_allclose(forward(other_doc1, segments, positions)[0, 6:13],
                             logits[0, 6:13], atol=1e-5)
  # Positions restart: document 2 packed second equals document 2 alone at a row start.
  np.testing.assert_allclose(logits[1, :7], logits[0, 6:13], atol=1e-5)
  assert bool(jnp.all(jnp.isfinite(logits)))  # padding rows too


def test_rope_is_relative(forward):
  tokens = _tokens(3)
  segments, positions = _one_segment()
  np.testing.assert_allclose(forward(tokens, segments, positions + 37),
                             forward(tokens, segments, positions), atol=2e-4)


@pytest.mark.parametrize('num_kv_heads', [1, 4])
def test_gqa_and_mha_shapes(num_kv_heads):
  decoder = nnx.eval_shape(lambda: Decoder(_config(num_kv_heads=num_kv_heads),
                                           rngs=nnx.Rngs(0)))
  attention = decoder.layers[0].attention
  assert attention.query.shape == (128, 4, 32)
  assert attention.key.shape == attention.value.shape == (128, num_kv_heads, 32)
  spec = jax.ShapeDtypeStruct((2, LENGTH), jnp.int32)
  out = nnx.eval_shape(lambda m, t, s, p: m(m.embed_tokens(t), s, p), decoder, spec, spec, spec)
  assert out.shape == (2, LENGTH, 512) and out.dtype == jnp.float32


def test_bfloat16_compute_is_close_to_float32(forward):
  bf16 = _jit_forward(Decoder(_config(), rngs=nnx.Rngs(0), dtype=jnp.bfloat16))
  tokens = _tokens(4)
  segments, positions = _one_segment()
  reference = forward(tokens, segments, positions)
  low = bf16(tokens, segments, positions)
  assert low.dtype == jnp.float32
  scale = float(jnp.std(reference))
  assert float(jnp.max(jnp.abs(low - reference))) < 0.1 * scale


def test_untied_output_and_scan_with_remat_match_the_loop(forward):
  untied = nnx.eval_shape(lambda: Decoder(_config(tie_embeddings=False), rngs=nnx.Rngs(0)))
  assert untied.output.shape == (128, 512)
  loop = Decoder(_config(), rngs=nnx.Rngs(0))
  # The scanned model built abstractly, then given the loop's parameters, stacked.
  abstract = nnx.eval_shape(lambda: Decoder(_config(scan_layers=True, remat='dots_saveable'),
                                            rngs=nnx.Rngs(0)))
  graphdef, state = nnx.split(abstract)
  pure = nnx.to_pure_dict(nnx.state(loop))
  pure['layers'] = jax.tree.map(lambda *xs: jnp.stack(xs), *pure['layers'].values())
  nnx.replace_by_pure_dict(state, pure)
  scanned = nnx.merge(graphdef, state)
  assert scanned.layers.mlp.gate.kernel.get_metadata()['out_sharding'][0] == 'layers'
  tokens = _tokens(5)
  segments, positions = _one_segment()
  np.testing.assert_allclose(_jit_forward(scanned)(tokens, segments, positions),
                             forward(tokens, segments, positions), atol=1e-4)


def test_attention_kinds():
  tokens = _tokens(6)
  segments, positions = _one_segment()
  run = lambda m: nnx.eval_shape(lambda m: m(m.embed_tokens(tokens), segments, positions), m)
  build = lambda kind: nnx.eval_shape(lambda: Decoder(_config(attention=kind, num_layers=1),
                                                      rngs=nnx.Rngs(0)))
  if jax.default_backend() != 'tpu':
    with pytest.raises(ValueError, match='needs a TPU'):
      run(build('splash'))
  if jax.default_backend() != 'gpu':
    with pytest.raises(ValueError, match='needs a GPU'):
      run(build('cudnn'))


def test_unknown_remat_names_the_key():
  with pytest.raises(ValueError, match='model.decoder.remat'):
    Decoder(_config(remat='sometimes'), rngs=nnx.Rngs(0))


def test_splash_kernel_matches_xla_in_interpret_mode(monkeypatch):
  """The splash wrapper (layout, scaling, GQA, segment ids) checked on CPU by running the
  Pallas kernel in interpret mode; on a TPU the same code runs compiled."""
  from jax.experimental.pallas.ops.tpu.splash_attention import splash_attention_kernel
  from mm1_jax.models import attention
  monkeypatch.setattr(splash_attention_kernel, 'make_splash_mha',
                      functools.partial(splash_attention_kernel.make_splash_mha, interpret=True))
  rng = np.random.default_rng(0)
  length = 128  # the kernel's block size
  q = jnp.asarray(rng.normal(size=(1, length, 4, 32)), jnp.float32)
  k, v = (jnp.asarray(rng.normal(size=(1, length, 2, 32)), jnp.float32) for _ in range(2))
  segments = jnp.asarray([[1] * 50 + [2] * 60 + [0] * 18], jnp.int32)
  got = attention._splash_local(q, k, v, segments)
  want = attention.xla_attention(q, k, v, attention.packed_causal_mask(segments))
  np.testing.assert_allclose(got[:, :110], want[:, :110], atol=1e-4)
