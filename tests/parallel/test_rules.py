"""The logical -> mesh rules: mapping, non-dividing fallback, state shardings, constrain."""

import jax
import jax.numpy as jnp
import pytest
from flax import nnx
from jax.sharding import PartitionSpec as P

from mm1_jax.models import layers
from mm1_jax.parallel.mesh import make_mesh
from mm1_jax.parallel.rules import RULES, constrain, logical_to_spec, state_shardings


@pytest.fixture(scope='module')
def mesh():
  return make_mesh(dict(data=2, fsdp=2, tensor=2, expert=1))


def test_table_entries():
  assert RULES['batch'] == ('data', 'fsdp', 'expert')
  assert RULES['embed'] == 'fsdp'
  for name in ('mlp', 'heads', 'kv_heads', 'vocab'):
    assert RULES[name] == 'tensor'
  assert RULES['exp'] == 'expert'
  for name in ('length', 'head_dim', 'image_patches'):
    assert RULES[name] is None


def test_logical_to_spec_without_mesh():
  assert logical_to_spec(('batch', 'length', 'mlp')) == P(('data', 'fsdp', 'expert'), None,
                                                          'tensor')
  assert logical_to_spec(('embed', 'mlp')) == P('fsdp', 'tensor')
  assert logical_to_spec((None, 'vocab')) == P(None, 'tensor')


def test_unknown_name_is_a_clear_error():
  with pytest.raises(KeyError, match='no_such_axis'):
    logical_to_spec(('no_such_axis',))


def test_non_dividing_sizes_fall_back(mesh):
  assert logical_to_spec(('batch', 'mlp'), (8, 6), mesh) == P(('data', 'fsdp', 'expert'),
                                                               'tensor')
  # 2 rows: only 'data' divides; 3 rows: nothing divides -> replicated.
  assert logical_to_spec(('batch', 'mlp'), (2, 6), mesh) == P('data', 'tensor')
  assert logical_to_spec(('batch', 'mlp'), (3, 5), mesh) == P(None, None)


def test_mesh_axis_used_once_per_array(mesh):
  # 'batch' takes fsdp, so 'embed' (also fsdp) must replicate.
  assert logical_to_spec(('batch', 'embed'), (8, 8), mesh) == P(('data', 'fsdp', 'expert'),
                                                                 None)


class _Two(nnx.Module):

  def __init__(self, rngs):
    self.even = layers.Dense(4, 6, names=('embed', 'mlp'), use_bias=True, rngs=rngs)
    self.odd = layers.Dense(3, 5, names=('embed', 'mlp'), rngs=rngs)
    self.plain = nnx.Param(jnp.zeros((4,)))  # no names -> replicated


def test_state_shardings_from_abstract_and_real_state(mesh):
  abstract = nnx.state(nnx.eval_shape(lambda: _Two(nnx.Rngs(0))))
  real = nnx.state(_Two(nnx.Rngs(0)))
  for state in (abstract, real):
    shardings = state_shardings(state, mesh)
    assert shardings['even']['kernel'].get_value().spec == P('fsdp', 'tensor')
    assert shardings['even']['bias'].get_value().spec == P('tensor')
    assert shardings['odd']['kernel'].get_value().spec == P(None, None)
    assert shardings['plain'].get_value().spec == P()
  placed = jax.device_put(real, state_shardings(real, mesh))
  assert placed['even']['kernel'].get_value().sharding.spec == P('fsdp', 'tensor')
  assert jnp.array_equal(placed['even']['kernel'].get_value(), real['even']['kernel'].get_value())


def test_constrain_is_identity_without_mesh_and_shards_with_one(mesh):
  x = jnp.arange(64.0).reshape(8, 8)
  assert constrain(x, ('batch', 'mlp')) is x
  f = jax.jit(lambda x: constrain(x * 2, ('batch', 'mlp')))
  with jax.set_mesh(mesh):
    y = f(x)
  assert y.sharding.spec == P(('data', 'fsdp'), 'tensor')  # size-1 'expert' normalised away
  assert jnp.array_equal(y, x * 2)
