"""Batched greedy decoding of prompts of images and text, with and without a KV cache.

Both decoders produce the same tokens; the cached one is the fast path, the uncached one
the reference it is tested against (and measured against in benchmarks/decode.py).

  cached    prefill(prompt) once -> first token; then decode_step(token) per new token,
            each appending one position per row to the cache (MM1.init_cache / prefill /
            decode_step).
  uncached  every new token runs the whole model (ViT included) over the full buffer
            prompt + tokens so far, and reads the logits at the row's last position.

Each is compiled once per shape: prompts are padded right to one length, new tokens are
produced in jit-compiled chunks of `chunk_size` greedy steps (lax.scan), and between
chunks the host checks the stop conditions: a stop token id ends a row on device (its
later tokens become padding); a stop string ends it when the decoded text contains it, and
the text is cut before it. Decoding ends when every row has stopped or `max_new_tokens`
tokens exist. Under a mesh, prompt rows are split over the mesh's batch axes (the model's
parameters keep whatever sharding they have), so it runs wherever training runs.
"""

from __future__ import annotations

import contextlib
import dataclasses
import functools
from collections.abc import Sequence

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec

from mm1_jax.parallel import rules

MODEL_KEYS = ('tokens', 'segment_ids', 'positions', 'images', 'image_valid')
DEFAULT_CHUNK_SIZE = 16
MAX_STOP_IDS = 8


@dataclasses.dataclass(frozen=True)
class StopConditions:
  """When a row is finished: one of `token_ids` generated or one of `strings` in its text."""
  token_ids: tuple[int, ...]
  strings: tuple[str, ...] = ()


def _last_position_logits(logits: jax.Array, lengths: jax.Array) -> jax.Array:
  """logits [b, l, v], lengths [b] -> the logits at position lengths-1 of each row [b, v]."""
  index = jnp.maximum(lengths - 1, 0)[:, None, None]
  return jnp.take_along_axis(logits, index, axis=1)[:, 0]


def _host_readable(x: jax.Array) -> jax.Array:
  """Under a mesh, replicated: every process can read the (small) token arrays."""
  if jax.sharding.get_abstract_mesh().empty:
    return x
  return jax.lax.with_sharding_constraint(x, PartitionSpec())


def _greedy(logits: jax.Array, done: jax.Array, stop_ids: jax.Array, pad_id: int):
  """Next tokens (padding for finished rows) and the updated finished flags."""
  tokens = jnp.where(done, pad_id, jnp.argmax(logits, axis=-1).astype(jnp.int32))
  return tokens, done | jnp.isin(tokens, stop_ids)


# ------------------------------------------------------------------------ cached decoding


@functools.partial(jax.jit, static_argnames=('graphdef', 'max_length', 'pad_id'))
def _cached_start(graphdef, state, batch, stop_ids, *, max_length: int, pad_id: int):
  model = nnx.merge(graphdef, state)
  cache = model.init_cache(batch['tokens'].shape[0], max_length)
  logits, cache = model.prefill(batch, cache)
  done = jnp.zeros(batch['tokens'].shape[0], jnp.bool_)
  tokens, done = _greedy(_last_position_logits(logits, cache['lengths']), done, stop_ids,
                         pad_id)
  return _host_readable(tokens), cache, _host_readable(done)


def _cached_chunk_fn(graphdef, state, last_tokens, cache, done, stop_ids, *, num_steps: int,
                     pad_id: int):
  model = nnx.merge(graphdef, state)

  def step(carry, _):
    tokens, cache, done = carry
    logits, cache = model.decode_step(tokens, cache)
    tokens, done = _greedy(logits, done, stop_ids, pad_id)
    return (tokens, cache, done), tokens

  (last_tokens, cache, done), tokens = jax.lax.scan(
      step, (last_tokens, cache, done), None, length=num_steps)
  return (_host_readable(tokens.T), _host_readable(last_tokens), cache,
          _host_readable(done))


_CHUNK_STATIC = ('graphdef', 'num_steps', 'pad_id')
_cached_chunk = jax.jit(_cached_chunk_fn, static_argnames=_CHUNK_STATIC)
# The cache is updated in place where the backend can (CPU cannot, and would warn).
_cached_chunk_donating = jax.jit(_cached_chunk_fn, static_argnames=_CHUNK_STATIC,
                                 donate_argnames=('cache',))


class _CachedRunner:

  def __init__(self, model):
    self.graphdef, self.state = nnx.split(model)

  def start(self, batch, stop_ids, *, max_new_tokens: int, pad_id: int):
    max_length = batch['tokens'].shape[1] + max_new_tokens
    tokens, cache, done = _cached_start(self.graphdef, self.state, batch, stop_ids,
                                        max_length=max_length, pad_id=pad_id)
    return tokens, cache, done

  def chunk(self, carry, last_tokens, done, stop_ids, *, num_steps: int, pad_id: int):
    chunk = _cached_chunk if jax.default_backend() == 'cpu' else _cached_chunk_donating
    tokens, last_tokens, cache, done = chunk(
        self.graphdef, self.state, last_tokens, carry, done, stop_ids, num_steps=num_steps,
        pad_id=pad_id)
    return tokens, last_tokens, cache, done


# ---------------------------------------------------------------------- uncached decoding


def _full_forward_next(model, buffer, lengths, done, stop_ids, pad_id):
  """Runs the model over the whole buffer; returns the greedy next tokens, appended."""
  width = buffer['tokens'].shape[1]
  inside = jnp.arange(width)[None, :] < lengths[:, None]
  batch = dict(buffer, segment_ids=inside.astype(jnp.int32))
  logits, _ = model(batch)
  tokens, done = _greedy(_last_position_logits(logits, lengths), done, stop_ids, pad_id)
  rows = jnp.arange(tokens.shape[0])
  buffer = dict(buffer, tokens=buffer['tokens'].at[rows, lengths].set(tokens, mode='drop'))
  return tokens, buffer, lengths + 1, done


@functools.partial(jax.jit, static_argnames=('graphdef', 'max_new_tokens', 'pad_id'))
def _uncached_start(graphdef, state, batch, stop_ids, *, max_new_tokens: int, pad_id: int):
  model = nnx.merge(graphdef, state)
  rows, width = batch['tokens'].shape
  total = width + max_new_tokens
  buffer = {
      'tokens': jnp.pad(batch['tokens'], ((0, 0), (0, max_new_tokens)),
                        constant_values=pad_id),
      'positions': jnp.broadcast_to(jnp.arange(total, dtype=jnp.int32), (rows, total)),
      'images': batch['images'], 'image_valid': batch['image_valid']}
  lengths = jnp.sum(batch['segment_ids'] != 0, axis=1, dtype=jnp.int32)
  done = jnp.zeros(rows, jnp.bool_)
  tokens, buffer, lengths, done = _full_forward_next(model, buffer, lengths, done, stop_ids,
                                                     pad_id)
  return _host_readable(tokens), (buffer, lengths), _host_readable(done)


@functools.partial(jax.jit, static_argnames=('graphdef', 'num_steps', 'pad_id'))
def _uncached_chunk(graphdef, state, carry, done, stop_ids, *, num_steps: int, pad_id: int):
  model = nnx.merge(graphdef, state)

  def step(carry, _):
    buffer, lengths, done = carry
    tokens, buffer, lengths, done = _full_forward_next(model, buffer, lengths, done,
                                                       stop_ids, pad_id)
    return (buffer, lengths, done), tokens

  buffer, lengths = carry
  (buffer, lengths, done), tokens = jax.lax.scan(step, (buffer, lengths, done), None,
                                                 length=num_steps)
  return _host_readable(tokens.T), (buffer, lengths), _host_readable(done)


class _UncachedRunner:

  def __init__(self, model):
    self.graphdef, self.state = nnx.split(model)

  def start(self, batch, stop_ids, *, max_new_tokens: int, pad_id: int):
    return _uncached_start(self.graphdef, self.state, batch, stop_ids,
                           max_new_tokens=max_new_tokens, pad_id=pad_id)

  def chunk(self, carry, last_tokens, done, stop_ids, *, num_steps: int, pad_id: int):
    del last_tokens  # the buffer already holds every token
    tokens, carry, done = _uncached_chunk(self.graphdef, self.state, carry, done, stop_ids,
                                          num_steps=num_steps, pad_id=pad_id)
    return tokens, tokens[:, -1], carry, done


# ------------------------------------------------------------------------------- driver


def shard_rows(batch: dict[str, np.ndarray], mesh: jax.sharding.Mesh | None) -> dict:
  """Device arrays of the model inputs; under `mesh`, rows split over its batch axes."""
  inputs = {key: batch[key] for key in MODEL_KEYS}
  if mesh is None:
    return {key: jnp.asarray(value) for key, value in inputs.items()}
  out = {}
  for key, value in inputs.items():
    names = ('batch',) + (None,) * (value.ndim - 1)
    sharding = NamedSharding(mesh, rules.logical_to_spec(names, value.shape, mesh))
    # Every process holds the whole batch (prompts are deterministic): each one places
    # the rows of its own devices, which also works across hosts.
    out[key] = jax.make_array_from_callback(value.shape, sharding,
                                            lambda index, value=value: value[index])
  return out


def _cut_at_stop(ids: Sequence[int], stop: StopConditions) -> list[int]:
  out = []
  for token in ids:
    if token in stop.token_ids:
      break
    out.append(int(token))
  return out


def _cut_text(text: str, strings: Sequence[str]) -> tuple[str, bool]:
  cut = min((text.find(s) for s in strings if s and s in text), default=-1)
  return (text[:cut], True) if cut >= 0 else (text, False)


@dataclasses.dataclass(frozen=True)
class Generation:
  """What greedy decoding produced for each row of a batch."""
  token_ids: list[list[int]]  # new tokens up to (not including) a stop token
  texts: list[str]            # their text, cut before the first stop string


def greedy_generate(model, batch: dict[str, np.ndarray], tokenizer, *, max_new_tokens: int,
                    stop: StopConditions, use_cache: bool = True,
                    chunk_size: int = DEFAULT_CHUNK_SIZE,
                    mesh: jax.sharding.Mesh | None = None) -> Generation:
  """Greedy continuations of the prompt rows of `batch` (DESIGN.md contract, one segment
  per row, right padding). `model` is an MM1 nnx module."""
  if max_new_tokens < 1:
    raise ValueError(f'max_new_tokens must be >= 1, got {max_new_tokens}')
  with jax.set_mesh(mesh) if mesh is not None else contextlib.nullcontext():
    return _greedy_generate(model, batch, tokenizer, max_new_tokens=max_new_tokens,
                            stop=stop, use_cache=use_cache, chunk_size=chunk_size, mesh=mesh)


def _greedy_generate(model, batch, tokenizer, *, max_new_tokens, stop, use_cache, chunk_size,
                     mesh):
  runner = _CachedRunner(model) if use_cache else _UncachedRunner(model)
  pad_id = int(tokenizer.pad_id)
  if len(stop.token_ids) > MAX_STOP_IDS:
    raise ValueError(f'at most {MAX_STOP_IDS} stop token ids, got {stop.token_ids}')
  # One fixed length (padded with -1, never a token): one compilation for any stop ids.
  stop_ids = jnp.asarray(list(stop.token_ids) + [-1] * (MAX_STOP_IDS - len(stop.token_ids)),
                         jnp.int32)
  num_chunks = -(-(max_new_tokens - 1) // chunk_size)
  capacity = 1 + num_chunks * chunk_size
  inputs = shard_rows(batch, mesh)
  rows = batch['tokens'].shape[0]

  last, carry, done = runner.start(inputs, stop_ids, max_new_tokens=capacity, pad_id=pad_id)
  pieces = [np.asarray(last)[:, None]]
  produced = 1
  # Tokens each row keeps: a row stopped by a stop string keeps what it had produced
  # (its later tokens are padding); stop ids are cut on the host below.
  kept = np.full(rows, max_new_tokens)
  string_done = np.zeros(rows, bool)
  while produced < max_new_tokens:
    host_done = np.asarray(done) | string_done
    if host_done.all():
      break
    if string_done.any():
      done = jnp.asarray(host_done)
    tokens, last, carry, done = runner.chunk(carry, last, done, stop_ids,
                                             num_steps=chunk_size, pad_id=pad_id)
    pieces.append(np.asarray(tokens))
    produced += chunk_size
    if stop.strings:
      so_far = np.concatenate(pieces, axis=1)
      for row in np.flatnonzero(~string_done):
        text = tokenizer.decode(_cut_at_stop(so_far[row], stop))
        if _cut_text(text, stop.strings)[1]:
          string_done[row] = True
          kept[row] = min(produced, max_new_tokens)

  generated = np.concatenate(pieces, axis=1)
  token_ids = [_cut_at_stop(row[:limit], stop) for row, limit in zip(generated, kept)]
  texts = [_cut_text(tokenizer.decode(ids), stop.strings)[0] for ids in token_ids]
  return Generation(token_ids=token_ids, texts=texts)
