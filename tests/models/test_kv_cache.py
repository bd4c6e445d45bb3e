"""KV-cache decoding: greedy tokens with the cache equal greedy tokens by full forwards.

A small random MM1 (GQA: 4 heads, 2 kv heads), prompts with an image and of different
lengths per row, scan_layers on and off; prefill and decode_step run under jax.jit with
the cache donated.
"""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import tiny
from mm1_jax.models import MM1

BATCH, PROMPT, NEW, K, IMAGE = 3, 12, 6, 4, 4
PROMPT_LENGTHS = (12, 9, 7)  # row 0 fills the prompt; rows 1-2 are right-padded


def _config(scan_layers):
  config = tiny.get_config()
  config.model.decoder.num_layers = 2
  config.model.decoder.scan_layers = scan_layers
  return config


def _prompts():
  rng = np.random.default_rng(0)
  tokens = np.zeros((BATCH, PROMPT), np.int32)
  segment_ids = np.zeros((BATCH, PROMPT), np.int32)
  for row, length in enumerate(PROMPT_LENGTHS):
    tokens[row, :length] = rng.integers(5, 512, length)
    tokens[row, 2:2 + K] = IMAGE  # one image run after two text tokens
    segment_ids[row, :length] = 1
  positions = np.broadcast_to(np.arange(PROMPT, dtype=np.int32), (BATCH, PROMPT))
  images = rng.integers(0, 256, (BATCH, 1, 32, 32, 3)).astype(np.uint8)
  return dict(tokens=tokens, segment_ids=segment_ids, positions=positions.copy(),
              images=images, image_valid=np.ones((BATCH, 1), bool))


def _greedy_by_full_forward(model, prompts):
  """Each step re-runs the whole (growing) sequence; the reference."""
  total = PROMPT + NEW
  forward = nnx.jit(lambda m, batch: m(batch)[0])
  rows = [list(prompts['tokens'][r, :n]) for r, n in enumerate(PROMPT_LENGTHS)]
  for _ in range(NEW):
    tokens = np.zeros((BATCH, total), np.int32)
    segment_ids = np.zeros((BATCH, total), np.int32)
    for r, row in enumerate(rows):
      tokens[r, :len(row)] = row
      segment_ids[r, :len(row)] = 1
    batch = dict(prompts, tokens=tokens, segment_ids=segment_ids,
                 positions=np.broadcast_to(np.arange(total, dtype=np.int32), (BATCH, total)))
    logits = np.asarray(forward(model, {k: jnp.asarray(v) for k, v in batch.items()}))
    for r, row in enumerate(rows):
      row.append(int(np.argmax(logits[r, len(row) - 1])))
  return [row[n:] for row, n in zip(rows, PROMPT_LENGTHS)], logits


def _greedy_with_cache(model, prompts):
  graphdef, state = nnx.split(model)

  @functools.partial(jax.jit, donate_argnums=(2,))
  def prefill(state, batch, cache):
    return nnx.merge(graphdef, state).prefill(batch, cache)

  @functools.partial(jax.jit, donate_argnums=(2,))
  def decode_step(state, tokens, cache):
    return nnx.merge(graphdef, state).decode_step(tokens, cache)

  cache = model.init_cache(BATCH, PROMPT + NEW)
  logits, cache = prefill(state, {k: jnp.asarray(v) for k, v in prompts.items()}, cache)
  assert logits.shape == (BATCH, PROMPT, 512) and logits.dtype == jnp.float32
  np.testing.assert_array_equal(cache['lengths'], PROMPT_LENGTHS)
  last = np.asarray(logits)[np.arange(BATCH), np.asarray(PROMPT_LENGTHS) - 1]
  tokens = jnp.asarray(np.argmax(last, axis=-1).astype(np.int32))
  generated, step_logits = [tokens], []
  for _ in range(NEW - 1):
    logits, cache = decode_step(state, tokens, cache)
    assert logits.shape == (BATCH, 512) and logits.dtype == jnp.float32
    step_logits.append(logits)
    tokens = jnp.argmax(logits, axis=-1).astype(jnp.int32)
    generated.append(tokens)
  np.testing.assert_array_equal(cache['lengths'], np.asarray(PROMPT_LENGTHS) + NEW - 1)
  return np.stack(generated, axis=1).tolist(), step_logits[-1]


@pytest.mark.parametrize('scan_layers', [False, True])
def test_cached_greedy_decoding_equals_full_forward(scan_layers):
  model = MM1(_config(scan_layers), rngs=nnx.Rngs(3))
  prompts = _prompts()
  expected, full_logits = _greedy_by_full_forward(model, prompts)
  got, last_logits = _greedy_with_cache(model, prompts)
  assert got == expected
  # The last decode step's logits equal the full forward's at the same positions.
  rows = np.arange(BATCH)
  np.testing.assert_allclose(last_logits, full_logits[rows, np.asarray(PROMPT_LENGTHS) + NEW - 2],
                             atol=1e-4)


def test_cache_shapes():
  model = nnx.eval_shape(lambda: MM1(_config(False), rngs=nnx.Rngs(0)))
  cache = model.init_cache(2, 32)
  assert cache['k'].shape == cache['v'].shape == (2, 2, 32, 2, 32)
  assert cache['lengths'].shape == (2,) and cache['lengths'].dtype == jnp.int32
