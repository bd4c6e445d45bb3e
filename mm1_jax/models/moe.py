"""Mixture-of-Experts feed-forward layer: route, permute, expert compute, unpermute.

`MoE(d_model, d_ff, moe_config)` replaces a dense SwiGLU block: each token goes to its
`top_k` experts (softmax gating, top-k weights optionally renormalised to sum to one), each
expert is a SwiGLU of width d_ff, and the outputs are mixed by the gate weights.
`MoE.__call__(x [b, l, d])` returns (y [b, l, d], aux) where aux holds float32 scalars:
  load_balance_loss  E * sum_e f_e * P_e, times model.moe.load_balance_weight (f_e: share of
                     the token->expert assignments that chose e; P_e: mean router probability)
  router_z_loss      mean over tokens of logsumexp(router logits)^2, times z_loss_weight
  dropped_fraction   share of token->expert assignments dropped for lack of capacity
  expert_load_max/min  E * max_e f_e and E * min_e f_e (1.0 and 1.0 when perfectly balanced)

Dispatch (`model.moe.dispatch`):
  'capacity'  GShard-style: each group of tokens (a batch row, or its slice on an expert
              shard, cut into `model.moe.group_size` tokens when that is set) gives every
              expert capacity = ceil(group * top_k * capacity_factor / E) slots; one-hot
              dispatch / combine tensors [b, s, e, c] move tokens with einsums, at a cost
              per token proportional to the group size (2 s / 3 f of the expert matmuls).
              First choices claim slots before second choices; assignments beyond capacity
              are dropped (the token keeps its residual).
  'dropless'  assignments sorted by expert and run through jax.lax.ragged_dot; nothing drops.

Expert parallelism: when the active mesh has more than one device on the mesh axis that
the logical axis 'exp' maps to, the layer runs inside a jax.shard_map that is manual over
that axis only (the other mesh axes stay automatic). Each expert shard takes its own rows
when the sharding rules split the batch over that axis too (rows divisible; then capacity
groups are exactly those of one device), else a 1/G slice of every row's tokens, routes it, sends each token to the shard holding its expert with
all_to_all, runs its E/G local experts, and sends the results back. Dropless exchange uses
buffers sized for the worst case (every assignment to one shard), since XLA:CPU has no
ragged_all_to_all; the routing statistics are averaged over the shards so the auxiliary
values equal the single-device ones.

Einsum letters: b group (batch row), s token within a group, t token, d embed, f mlp
(expert hidden), e expert, c capacity slot, m an expert's rows (groups x slots), k routing
choice (top-k).
"""

from __future__ import annotations

import dataclasses
import math

import jax
import jax.numpy as jnp
from flax import nnx
from jax.sharding import PartitionSpec as P

from mm1_jax.models import layers
from mm1_jax.parallel import rules

DISPATCH_MODES = ('capacity', 'dropless')
# Per-expert [e, in, out] kernels: fan-in is `in` alone, not e * in.
_EXPERT_INIT = nnx.initializers.variance_scaling(1.0, 'fan_in', 'truncated_normal',
                                                 in_axis=-2, out_axis=-1, batch_axis=(0,))
ROUTER_INIT = nnx.initializers.variance_scaling(0.1, 'fan_in', 'truncated_normal')


@jax.tree_util.register_dataclass
@dataclasses.dataclass(frozen=True)
class Routing:
  """Router decisions for tokens [...]: all float32 except `experts`."""
  logits: jax.Array   # [..., e]
  probs: jax.Array    # [..., e]
  weights: jax.Array  # [..., k] gate weight of each choice
  experts: jax.Array  # int32 [..., k] expert of each choice


# ----------------------------------------------------------------------------- route


def route(x: jax.Array, router: jax.Array, top_k: int, renormalize: bool) -> Routing:
  """Top-k softmax gating of tokens x [..., d] with the router kernel [d, e]."""
  logits = jnp.einsum('...d,de->...e', x.astype(jnp.float32), router.astype(jnp.float32))
  probs = jax.nn.softmax(logits, axis=-1)
  weights, experts = jax.lax.top_k(probs, top_k)
  if renormalize:
    weights = weights / jnp.sum(weights, axis=-1, keepdims=True)
  return Routing(logits, probs, weights, experts.astype(jnp.int32))


def routing_stats(routing: Routing, num_experts: int) -> dict[str, jax.Array]:
  """Means over this shard's tokens: assignment share f [e], mean probability [e], z."""
  onehot = jax.nn.one_hot(routing.experts, num_experts, dtype=jnp.float32)  # [..., k, e]
  tokens_axes = tuple(range(onehot.ndim - 1))
  z = jax.nn.logsumexp(routing.logits, axis=-1)
  return {'assigned': jnp.mean(onehot, axis=tokens_axes),
          'probability': jnp.mean(routing.probs, axis=tuple(range(routing.probs.ndim - 1))),
          'z_squared': jnp.mean(z * z)}


def aux_values(stats: dict[str, jax.Array], dropped_fraction: jax.Array,
               load_balance_weight: float, z_loss_weight: float) -> dict[str, jax.Array]:
  """The returned auxiliary scalars from (globally averaged) routing statistics."""
  num_experts = stats['assigned'].shape[-1]
  balance = num_experts * jnp.sum(stats['assigned'] * stats['probability'])
  load = num_experts * stats['assigned']
  return {'load_balance_loss': load_balance_weight * balance,
          'router_z_loss': z_loss_weight * stats['z_squared'],
          'dropped_fraction': dropped_fraction.astype(jnp.float32),
          'expert_load_max': jnp.max(load),
          'expert_load_min': jnp.min(load)}


# ------------------------------------------------------------------ capacity dispatch


def capacity_of(group_size: int, num_experts: int, top_k: int, factor: float) -> int:
  """Slots per expert and group: factor x an even share, at most one per token."""
  return max(1, min(group_size, math.ceil(group_size * top_k * factor / num_experts)))


def capacity_dispatch(routing: Routing, num_experts: int, capacity: int):
  """One-hot dispatch (bool) and combine (gate-weighted) tensors [b, s, e, c], kept [b, s, k].

  Slot order within an expert: every token's first choice before any second choice, then
  token order, so under pressure second choices are dropped first.
  """
  onehot = jax.nn.one_hot(routing.experts, num_experts, dtype=jnp.int32)  # [b, s, k, e]
  batch, length, top_k, _ = onehot.shape
  choice_major = jnp.swapaxes(onehot, 1, 2).reshape(batch, top_k * length, num_experts)
  slot = jnp.cumsum(choice_major, axis=1) - 1
  slot = jnp.swapaxes(slot.reshape(batch, top_k, length, num_experts), 1, 2)
  slot = jnp.sum(slot * onehot, axis=-1)  # [b, s, k]: slot in the chosen expert
  kept = slot < capacity
  slot_onehot = jax.nn.one_hot(jnp.where(kept, slot, capacity), capacity, dtype=jnp.float32)
  dispatch = jnp.einsum('bske,bskc->bsec', onehot.astype(jnp.float32), slot_onehot)
  combine = jnp.einsum('bsk,bske,bskc->bsec', routing.weights, onehot.astype(jnp.float32),
                       slot_onehot)
  return dispatch.astype(jnp.bool_), combine, kept


def permute_capacity(x: jax.Array, dispatch: jax.Array) -> jax.Array:
  """Tokens x [b, s, d] -> expert slots [e, b, c, d] (empty slots are zero)."""
  return jnp.einsum('bsec,bsd->ebcd', dispatch.astype(x.dtype), x)


def unpermute_capacity(y: jax.Array, combine: jax.Array) -> jax.Array:
  """Expert outputs [e, b, c, d] -> gate-weighted sum per token [b, s, d]."""
  return jnp.einsum('ebcd,bsec->bsd', y, combine.astype(y.dtype))


def expert_swiglu(x: jax.Array, gate: jax.Array, up: jax.Array, down: jax.Array) -> jax.Array:
  """Each expert's SwiGLU on its slots: x [e, b, c, d], kernels [e, d, f] / [e, f, d]."""
  # Groups and slots merged into one row axis: XLA:CPU runs the batched matmul about
  # twice as fast with a single free dimension.
  experts, groups, capacity, dim = x.shape
  x = x.reshape(experts, groups * capacity, dim)
  hidden = (jax.nn.silu(jnp.einsum('emd,edf->emf', x, gate.astype(x.dtype)))
            * jnp.einsum('emd,edf->emf', x, up.astype(x.dtype)))
  y = jnp.einsum('emf,efd->emd', hidden, down.astype(x.dtype))
  return y.reshape(experts, groups, capacity, dim)


# ------------------------------------------------------------------ dropless dispatch


def sort_by_expert(experts: jax.Array, num_experts: int):
  """Assignments [t, k] -> (order [t*k] of flat assignments sorted by expert, sizes [e])."""
  flat = experts.reshape(-1)
  order = jnp.argsort(flat, stable=True)
  sizes = jnp.bincount(flat, length=num_experts).astype(jnp.int32)
  return order, sizes


def permute_sorted(x: jax.Array, order: jax.Array, top_k: int) -> jax.Array:
  """Tokens x [t, d] -> one row per assignment, grouped by expert [t*k, d]."""
  return jnp.take(x, order // top_k, axis=0)


def unpermute_sorted(y: jax.Array, order: jax.Array, weights: jax.Array) -> jax.Array:
  """Rows grouped by expert [t*k, d] -> gate-weighted sum per token [t, d]."""
  tokens, top_k = weights.shape
  unsorted = jnp.zeros_like(y).at[order].set(y, unique_indices=True)
  return jnp.einsum('tkd,tk->td', unsorted.reshape(tokens, top_k, -1),
                    weights.astype(y.dtype))


def grouped_swiglu(x: jax.Array, gate: jax.Array, up: jax.Array, down: jax.Array,
                   sizes: jax.Array) -> jax.Array:
  """SwiGLU over rows grouped by expert [m, d] (group j: sizes[j] rows); rows past the
  groups come out zero."""
  dtype = x.dtype
  hidden = (jax.nn.silu(jax.lax.ragged_dot(x, gate.astype(dtype), sizes))
            * jax.lax.ragged_dot(x, up.astype(dtype), sizes))
  return jax.lax.ragged_dot(hidden, down.astype(dtype), sizes)


# --------------------------------------------------------------------- the two modes


def _run_capacity(x, routing, kernels, *, num_experts, capacity_factor, axis):
  """x [b, s, d] -> (y [b, s, d], dropped assignments / all). `axis`: expert mesh axis."""
  capacity = capacity_of(x.shape[1], num_experts, routing.experts.shape[-1], capacity_factor)
  dispatch, combine, kept = capacity_dispatch(routing, num_experts, capacity)
  slots = permute_capacity(x, dispatch)  # [e, b, c, d]
  if axis is None:
    y = expert_swiglu(slots, *kernels)
  else:
    # [E, b, c, d] -> [E/G, G*b, c, d]: this shard's experts, every shard's groups.
    slots = jax.lax.all_to_all(slots, axis, 0, 1, tiled=True)
    y = expert_swiglu(slots, *kernels)
    y = jax.lax.all_to_all(y, axis, 1, 0, tiled=True)
  return unpermute_capacity(y, combine), jnp.mean(jnp.logical_not(kept).astype(jnp.float32))


def _exchange_dropless(rows, sizes, kernels, axis):
  """Grouped rows of this shard [m, d] (sizes [E]) -> their expert outputs, computed on the
  shards that hold the experts (sent with all_to_all in worst-case-sized buffers)."""
  m = rows.shape[0]
  shards = jax.lax.axis_size(axis)
  local_experts = sizes.shape[0] // shards
  # Rows are sorted by expert, so each destination shard's rows are one contiguous run.
  send = jnp.sum(sizes.reshape(shards, local_experts), axis=1)
  start = jnp.cumsum(send) - send
  row = jnp.arange(m, dtype=jnp.int32)
  # (comparison counts, not jnp.searchsorted, which fails on shard_map's varying types)
  dest = jnp.sum(row[:, None] >= jnp.cumsum(send)[None, :], axis=1, dtype=jnp.int32)
  slot = row - start[dest]
  buffer = jnp.zeros((shards, m) + rows.shape[1:], rows.dtype).at[dest, slot].set(rows)
  received = jax.lax.all_to_all(buffer, axis, 0, 0, tiled=True)  # [G source, m, d]
  counts = jax.lax.all_to_all(sizes.reshape(shards, local_experts), axis, 0, 0, tiled=True)
  # Each source's run is grouped by local expert; regroup all runs by expert (padding last).
  ends = jnp.cumsum(counts, axis=1)  # [G, E/G]
  local_expert = jnp.sum(row[None, :, None] >= ends[:, None, :], axis=2)  # [G, m]
  order = jnp.argsort(local_expert.reshape(-1), stable=True)
  flat = received.reshape((shards * m,) + rows.shape[1:])
  out = grouped_swiglu(jnp.take(flat, order, axis=0), *kernels,
                       jnp.sum(counts, axis=0).astype(jnp.int32))
  out = jnp.zeros_like(out).at[order].set(out, unique_indices=True).reshape(received.shape)
  back = jax.lax.all_to_all(out, axis, 0, 0, tiled=True)  # [G destination, m, d]
  return back[dest, slot]


def _run_dropless(x, routing, kernels, *, num_experts, axis):
  """x [b, s, d] -> (y [b, s, d], 0.0): every assignment is computed."""
  batch, length, dim = x.shape
  tokens = x.reshape(batch * length, dim)
  experts = routing.experts.reshape(batch * length, -1)
  order, sizes = sort_by_expert(experts, num_experts)
  rows = permute_sorted(tokens, order, experts.shape[-1])
  if axis is None:
    out = grouped_swiglu(rows, *kernels, sizes)
  else:
    out = _exchange_dropless(rows, sizes, kernels, axis)
  y = unpermute_sorted(out, order, routing.weights.reshape(batch * length, -1))
  return y.reshape(batch, length, dim), jnp.zeros((), jnp.float32)


def split_groups(x: jax.Array, group_size: int) -> jax.Array:
  """Rows x [b, s, d] -> groups [b * s / g, g, d] of g = min(group_size, s) tokens."""
  batch, length, dim = x.shape
  if not group_size or group_size >= length:
    return x
  if length % group_size:
    raise ValueError(f'model.moe.group_size={group_size} does not divide the {length} tokens '
                     'of a row (per expert shard)')
  return x.reshape(batch * length // group_size, group_size, dim)


def moe_forward(x, router, kernels, *, top_k, renormalize, dispatch, capacity_factor,
                load_balance_weight, z_loss_weight, group_size=0, axis=None):
  """The whole layer on the tokens x [b, s, d] at hand (one shard's, under shard_map)."""
  shape = x.shape
  x = split_groups(x, group_size)
  num_experts = router.shape[-1]
  routing = route(x, router, top_k, renormalize)
  stats = routing_stats(routing, num_experts)
  if dispatch == 'capacity':
    y, dropped = _run_capacity(x, routing, kernels, num_experts=num_experts,
                               capacity_factor=capacity_factor, axis=axis)
  elif dispatch == 'dropless':
    y, dropped = _run_dropless(x, routing, kernels, num_experts=num_experts, axis=axis)
  else:
    raise ValueError(f'model.moe.dispatch={dispatch!r} is unknown; known: {DISPATCH_MODES}')
  if axis is not None:  # every shard holds the same number of tokens: means of means
    stats, dropped = jax.lax.pmean((stats, dropped), axis)
  return y.reshape(shape), aux_values(stats, dropped, load_balance_weight, z_loss_weight)


# --------------------------------------------------------------------------- module


def expert_mesh_axis() -> tuple[str | None, int]:
  """(mesh axis of the logical axis 'exp', its size) under the active mesh; (None, 1)."""
  mesh = jax.sharding.get_abstract_mesh()
  if mesh.empty:
    return None, 1
  axes = rules.logical_to_spec(('exp',), mesh=mesh)[0]
  if axes is None:
    return None, 1
  if not isinstance(axes, str):
    raise ValueError(f"logical axis 'exp' maps to several mesh axes {axes}; the MoE layer "
                     'shards experts over one')
  return axes, int(mesh.shape[axes])


class MoE(nnx.Module):
  """Top-k routed SwiGLU experts: x [b, l, d] -> (y [b, l, d], aux scalars)."""

  def __init__(self, d_model: int, d_ff: int, moe_config, *, rngs: nnx.Rngs,
               dtype=jnp.float32):
    c = moe_config
    if c.dispatch not in DISPATCH_MODES:
      raise ValueError(f'model.moe.dispatch={c.dispatch!r} is unknown; known: {DISPATCH_MODES}')
    e = int(c.num_experts)
    # The router is small and every shard routes its own tokens: replicated. A small init
    # (logits ~0.3 std on unit-RMS inputs) keeps the first gate probabilities near uniform.
    self.router = layers.param(rngs, ROUTER_INIT, (d_model, e), ('embed', None))
    self.gate = layers.param(rngs, _EXPERT_INIT, (e, d_model, d_ff), ('exp', 'embed', 'mlp'))
    self.up = layers.param(rngs, _EXPERT_INIT, (e, d_model, d_ff), ('exp', 'embed', 'mlp'))
    self.down = layers.param(rngs, _EXPERT_INIT, (e, d_ff, d_model), ('exp', 'mlp', 'embed'))
    self.num_experts = e
    # A tuple, not a dict: the graph definition (static under jit) must be hashable.
    self.options = tuple(dict(
        top_k=int(c.top_k), renormalize=bool(c.get('renormalize', True)),
        dispatch=str(c.dispatch), capacity_factor=float(c.capacity_factor),
        load_balance_weight=float(c.load_balance_weight), z_loss_weight=float(c.z_loss_weight),
        group_size=int(c.get('group_size', 0))).items())
    self.dtype = dtype

  def __call__(self, x: jax.Array) -> tuple[jax.Array, dict[str, jax.Array]]:
    x = x.astype(self.dtype)
    kernels = (self.gate[...], self.up[...], self.down[...])
    axis, shards = expert_mesh_axis()
    if shards == 1:
      return moe_forward(x, self.router[...], kernels, **dict(self.options))
    return self._expert_parallel(x, kernels, axis, shards)

  def _expert_parallel(self, x, kernels, axis, shards):
    batch, length, dim = x.shape
    if self.num_experts % shards:
      raise ValueError(f'model.moe.num_experts={self.num_experts} is not divisible by the '
                       f'{shards} shards of mesh axis {axis!r}')
    mesh = jax.sharding.get_abstract_mesh()
    rows = rules.logical_to_spec(('batch',), (batch,), mesh)[0]
    rows = (rows,) if isinstance(rows, str) else tuple(rows or ())
    if rows and rows[-1] == axis:
      # The rules already split the rows over `axis` (innermost): each expert shard routes
      # its own rows, whole, so capacity groups are those of one device and no activation
      # moves before the exchange. [b, ...] -> [outer shards R, G, rows per device n, ...].
      outer = rows[:-1]
      r = math.prod(mesh.shape[a] for a in outer)
      grouped = x.reshape(r, shards, batch // (r * shards), length, dim)
      grouped = jax.lax.with_sharding_constraint(grouped, P(outer or None, axis))
      y, aux = self._shard_map(grouped, kernels, axis,
                               lambda x: x.reshape((-1,) + x.shape[3:]))
      return y.reshape(batch, length, dim), aux
    # Otherwise row b's tokens are split into G slices; slice g is handled by expert shard
    # g. A length that G does not divide (one decoded token) is padded; the padding is
    # routed too, so only then the auxiliary values see a few extra tokens.
    padded = -(-length // shards) * shards
    if padded != length:
      x = jnp.pad(x, ((0, 0), (0, padded - length), (0, 0)))
    grouped = x.reshape(batch, shards, padded // shards, dim)
    # Rows keep the batch's mesh axes, except `axis`: shard_map wants its input laid out
    # as in_specs say.
    rows = tuple(a for a in rows if a != axis)
    grouped = jax.lax.with_sharding_constraint(grouped, P(rows or None, axis))
    y, aux = self._shard_map(grouped, kernels, axis, lambda x: x[:, 0])
    return y.reshape(batch, padded, dim)[:, :length], aux

  def _shard_map(self, grouped, kernels, axis, to_rows):
    """The layer on `grouped` [., G, ...] split over `axis` on dim 1; `to_rows` turns a
    shard's block [., 1, ...] into the token rows [b', s, d] it routes."""

    def local(x, router, *kernels):
      y, aux = moe_forward(to_rows(x), router, kernels, axis=axis, **dict(self.options))
      return y.reshape(x.shape), aux

    run = jax.shard_map(local, in_specs=(P(None, axis), P()) + (P(axis),) * 3,
                        out_specs=(P(None, axis), P()), axis_names={axis})
    return run(grouped, self.router[...], *kernels)
