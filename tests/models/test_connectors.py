"""Connectors: every kind's output shape and gradient flow, area pooling, the registry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import tiny
from mm1_jax.models.connectors import (CONNECTORS, AvgPoolConnector, area_pooling_matrix,
                                       depthwise_conv3x3, make_connector)


def test_area_pooling_matrix():
  np.testing.assert_allclose(area_pooling_matrix(4, 2), [[.5, .5, 0, 0], [0, 0, .5, .5]])
  # 5 -> 2: the middle cell is shared half/half.
  np.testing.assert_allclose(area_pooling_matrix(5, 2), [[.4, .4, .2, 0, 0], [0, 0, .2, .4, .4]],
                             atol=1e-6)
  for g, s in [(27, 12), (7, 3), (16, 16)]:
    np.testing.assert_allclose(area_pooling_matrix(g, s).sum(1), 1.0, rtol=1e-6)
    # every input cell is used with the same total weight
    np.testing.assert_allclose(area_pooling_matrix(g, s).sum(0), s / g, rtol=1e-5)


def _model_config(kind, use_class_token=False, num_tokens=4):
  config = tiny.get_config().model
  config.connector.update(kind=kind, num_tokens=num_tokens, depth=1, width=32, num_heads=4)
  config.vit.use_class_token = use_class_token
  return config


@pytest.mark.parametrize('kind, use_class_token, num_tokens', [
    ('avgpool', True, 4), ('attnpool', True, 9), ('c_abstractor', False, 4)])
def test_shape_and_gradients_reach_every_parameter(kind, use_class_token, num_tokens):
  model_config = _model_config(kind, use_class_token, num_tokens)
  features = jax.random.normal(jax.random.key(1), (3, 16 + int(use_class_token), 64))

  @jax.jit
  def build_and_differentiate(x):  # one compilation: construction, forward and gradient
    connector = make_connector(model_config, rngs=nnx.Rngs(0))
    grads = nnx.grad(lambda m: jnp.sum(m(x) ** 2))(connector)
    return connector(x), nnx.to_pure_dict(grads), isinstance(connector, CONNECTORS[kind])

  out, grads, right_class = build_and_differentiate(features)
  assert right_class
  assert out.shape == (3, num_tokens, 128)
  dead = [jax.tree_util.keystr(p) for p, g in jax.tree_util.tree_flatten_with_path(grads)[0]
          if not float(jnp.abs(g).max()) > 0]
  assert jax.tree.leaves(grads) and not dead


def test_pooling_averages_patch_groups():
  model_config = tiny.get_config().model  # 4x4 grid -> 2x2
  connector = make_connector(model_config, rngs=nnx.Rngs(0))
  assert isinstance(connector, AvgPoolConnector)
  features = jnp.zeros((1, 16, 64)).at[0, 0].set(4.0)  # only patch (0, 0) is nonzero
  same_cell = jnp.zeros((1, 16, 64)).at[0, 5].set(4.0)  # patch (1, 1): same 2x2 cell
  np.testing.assert_allclose(connector(features), connector(same_cell), atol=1e-6)


@pytest.mark.parametrize('kind', sorted(CONNECTORS))
def test_any_square_grid_is_accepted(kind):
  """A ViT run at another resolution gives more patches; every connector still gives K."""
  connector = nnx.eval_shape(lambda: make_connector(_model_config(kind), rngs=nnx.Rngs(0)))
  out = nnx.eval_shape(lambda m, x: m(x), connector, jax.ShapeDtypeStruct((2, 64, 64), 'float32'))
  assert out.shape == (2, 4, 128)


def test_unknown_kind_names_the_key():
  with pytest.raises(ValueError, match='model.connector.kind'):
    make_connector(_model_config('qformer'), rngs=nnx.Rngs(0))


def test_depthwise_conv_matches_lax_conv():
  x = jax.random.normal(jax.random.key(0), (2, 5, 5, 3))
  kernel = jax.random.normal(jax.random.key(1), (3, 3, 3))
  expected = jax.lax.conv_general_dilated(
      x, kernel[:, :, None, :], window_strides=(1, 1), padding='SAME',
      dimension_numbers=('NHWC', 'HWIO', 'NHWC'), feature_group_count=3)
  np.testing.assert_allclose(depthwise_conv3x3(x, kernel), expected, atol=1e-5)
