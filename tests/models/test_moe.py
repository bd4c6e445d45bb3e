"""MoE layer: expert parallelism equals one device, dropless equals capacity, aux by hand."""

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from mm1_jax.models import moe
from mm1_jax.parallel import rules
from mm1_jax.parallel.mesh import make_mesh

D_MODEL, D_FF, EXPERTS = 16, 24, 8
BATCH, LENGTH = 4, 16


def _config(**overrides):
  config = ml_collections.ConfigDict(dict(
      num_experts=EXPERTS, top_k=2, every=1, dispatch='capacity', capacity_factor=8.0,
      load_balance_weight=0.01, z_loss_weight=0.001))
  config.update(overrides)
  return config


def _inputs(seed=1):
  return jax.random.normal(jax.random.key(seed), (BATCH, LENGTH, D_MODEL), jnp.float32)


def _loss_and_grads(graphdef):
  def loss(state, x):
    y, aux = nnx.merge(graphdef, state)(x)
    # A loss that touches every output and both auxiliary losses.
    total = jnp.mean(y * jnp.cos(jnp.arange(D_MODEL, dtype=y.dtype)))
    return total + aux['load_balance_loss'] + aux['router_z_loss'], (y, aux)

  return jax.jit(jax.value_and_grad(loss, argnums=(0, 1), has_aux=True))


def _run(config, mesh=None, x=None):
  """(output, aux, parameter grads as a pure dict, input grads), on `mesh` if given."""
  layer = moe.MoE(D_MODEL, D_FF, config, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(layer)
  x = _inputs() if x is None else x
  fn = _loss_and_grads(graphdef)
  if mesh is None:
    (_, (y, aux)), (g_state, g_x) = fn(state, x)
  else:
    with jax.set_mesh(mesh):
      state = jax.device_put(state, rules.state_shardings(state, mesh))
      x = jax.device_put(x, NamedSharding(mesh, rules.logical_to_spec(
          ('batch', None, None), x.shape, mesh)))
      (_, (y, aux)), (g_state, g_x) = fn(state, x)
  return y, jax.device_get(aux), nnx.to_pure_dict(g_state), g_x


@pytest.fixture(scope='module')
def single_device():
  return {mode: _run(_config(dispatch=mode)) for mode in moe.DISPATCH_MODES}


def _assert_close(a, b, atol=1e-6, rtol=1e-4):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    np.testing.assert_allclose(np.asarray(x), np.asarray(y), atol=atol, rtol=rtol)


@pytest.mark.parametrize('mode,mesh_sizes', [
    ('capacity', dict(data=2, expert=4)),
    ('dropless', dict(data=2, expert=4)),
    ('dropless', dict(data=1, expert=8)),  # one expert per shard (two with expert=4)
], ids=['capacity-data2_expert4', 'dropless-data2_expert4', 'dropless-expert8'])
def test_expert_parallel_equals_single_device(single_device, mode, mesh_sizes):
  mesh = make_mesh(dict(fsdp=1, tensor=1, **mesh_sizes))
  y, aux, g_params, g_x = _run(_config(dispatch=mode), mesh)
  y0, aux0, g_params0, g_x0 = single_device[mode]
  assert aux['dropped_fraction'] == 0.0
  _assert_close(y, y0)
  _assert_close(aux, aux0)
  _assert_close(g_x, g_x0)
  _assert_close(g_params, g_params0)


def test_experts_are_sharded_over_the_expert_axis():
  layer = nnx.eval_shape(lambda: moe.MoE(D_MODEL, D_FF, _config(), rngs=nnx.Rngs(0)))
  mesh = make_mesh(dict(data=1, fsdp=2, tensor=1, expert=4))
  shardings = nnx.to_pure_dict(rules.state_shardings(nnx.state(layer), mesh))
  assert shardings['gate'].spec == P('expert', 'fsdp', 'tensor')
  assert shardings['down'].spec == P('expert', 'tensor', 'fsdp')
  assert shardings['router'].spec == P('fsdp', None)


def test_dropless_equals_capacity_without_drops(single_device):
  y_cap, aux_cap, g_cap, gx_cap = single_device['capacity']
  y_free, aux_free, g_free, gx_free = single_device['dropless']
  assert aux_cap['dropped_fraction'] == 0.0
  _assert_close(y_free, y_cap)
  _assert_close(aux_free, aux_cap)
  _assert_close(g_free, g_cap)
  _assert_close(gx_free, gx_cap)


def _softmax(z):
  z = z - z.max(-1, keepdims=True)
  return np.exp(z) / np.exp(z).sum(-1, keepdims=True)


def test_aux_losses_by_hand():
  rng = np.random.default_rng(0)
  x = rng.normal(size=(1, 6, 4)).astype(np.float32)
  router = rng.normal(size=(4, 3)).astype(np.float32)
  kernels = (jnp.zeros((3, 4, 5)), jnp.zeros((3, 4, 5)), jnp.zeros((3, 5, 4)))
  forward = jax.jit(lambda x, router: moe.moe_forward(
      x, router, kernels, top_k=2, renormalize=True, dispatch='capacity', capacity_factor=2.0,
      load_balance_weight=0.5, z_loss_weight=0.25))
  _, aux = forward(jnp.asarray(x), jnp.asarray(router))
  logits = x[0] @ router  # [6 tokens, 3 experts]
  probs = _softmax(logits)
  top2 = np.argsort(-probs, axis=1)[:, :2]
  share = np.array([(top2 == e).sum() for e in range(3)]) / top2.size  # f_e
  balance = 3 * np.sum(share * probs.mean(0))
  z = np.log(np.exp(logits).sum(-1))
  np.testing.assert_allclose(aux['load_balance_loss'], 0.5 * balance, rtol=1e-5)
  np.testing.assert_allclose(aux['router_z_loss'], 0.25 * np.mean(z ** 2), rtol=1e-5)
  np.testing.assert_allclose(aux['expert_load_max'], 3 * share.max(), rtol=1e-6)
  np.testing.assert_allclose(aux['expert_load_min'], 3 * share.min(), rtol=1e-6)
  assert float(aux['dropped_fraction']) == 0.0  # capacity 6 of 6 tokens: nothing drops


def test_route_renormalises_the_top_k_weights():
  x = _inputs()[0]
  router = jax.random.normal(jax.random.key(2), (D_MODEL, EXPERTS))
  route = jax.jit(moe.route, static_argnums=(2, 3))
  plain = route(x, router, 2, False)
  normed = route(x, router, 2, True)
  np.testing.assert_allclose(normed.weights.sum(-1), 1.0, rtol=1e-6)
  np.testing.assert_allclose(plain.weights, jnp.take_along_axis(plain.probs, plain.experts, -1))
  np.testing.assert_array_equal(plain.experts, normed.experts)


def test_first_choices_claim_slots_before_second_choices():
  # Four tokens all choose expert 0 first and expert 1 second; capacity 2 per expert.
  experts = jnp.asarray([[[0, 1], [0, 1], [0, 1], [0, 1]]], jnp.int32)
  weights = jnp.full((1, 4, 2), 0.5)
  routing = moe.Routing(None, None, weights, experts)
  dispatch, combine, kept = jax.jit(moe.capacity_dispatch, static_argnums=(1, 2))(routing, 2, 2)
  np.testing.assert_array_equal(kept[0], [[True, True], [True, True], [False, False],
                                          [False, False]])
  assert dispatch.shape == (1, 4, 2, 2) and int(dispatch.sum()) == 4
  np.testing.assert_array_equal(dispatch[0, 1], [[False, True], [False, True]])
  np.testing.assert_allclose(combine.sum(), 2.0)


@pytest.mark.parametrize('expert_parallel,group_size', [(False, 0), (False, 4), (True, 0)],
                         ids=['row_groups', 'group_size4', 'expert4'])
def test_dropped_tokens_counted_when_capacity_is_small(expert_parallel, group_size):
  config = _config(capacity_factor=0.5, group_size=group_size)
  layer = moe.MoE(D_MODEL, D_FF, config, rngs=nnx.Rngs(0))
  x = _inputs()
  # Capacity groups: whole rows, or 4 slices of each row (group_size 4, or one slice per
  # expert shard). Hand count: an expert keeps at most `capacity` assignments per group.
  groups = 4 if expert_parallel or group_size else 1
  group = LENGTH // groups
  capacity = moe.capacity_of(group, EXPERTS, 2, 0.5)
  routing = jax.jit(moe.route, static_argnums=(2, 3))(x, layer.router[...], 2, True)
  counts = jax.nn.one_hot(routing.experts.reshape(BATCH, groups, group * 2), EXPERTS).sum(2)
  expected = float(jnp.maximum(counts - capacity, 0).sum()) / (BATCH * LENGTH * 2)
  assert expected > 0.1
  if expert_parallel:
    with jax.set_mesh(make_mesh(dict(data=2, fsdp=1, tensor=1, expert=4))):
      y, aux = jax.jit(lambda x: layer(x))(x)
  else:
    y, aux = jax.jit(lambda x: layer(x))(x)
  np.testing.assert_allclose(aux['dropped_fraction'], expected, rtol=1e-6)
  assert bool(jnp.all(jnp.isfinite(y)))


def test_unknown_dispatch_is_named():
  with pytest.raises(ValueError, match='model.moe.dispatch'):
    moe.MoE(D_MODEL, D_FF, _config(dispatch='sinkhorn'), rngs=nnx.Rngs(0))


def test_expert_parallel_pads_lengths_it_cannot_split():
  layer = moe.MoE(D_MODEL, D_FF, _config(), rngs=nnx.Rngs(0))
  x = _inputs()[:, :3]  # three tokens per row over four expert shards (as in decoding)
  forward = jax.jit(lambda x: layer(x)[0])
  expected = forward(x)
  with jax.set_mesh(make_mesh(dict(data=2, fsdp=1, tensor=1, expert=4))):
    _assert_close(forward(x), expected)
