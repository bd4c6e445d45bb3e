"""Connectors: avgpool shape, area pooling, gradients, and the registry."""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from experiments import tiny
from mm1_jax.models.connectors import AvgPoolConnector, area_pooling_matrix, make_connector


def test_area_pooling_matrix():
  np.testing.assert_allclose(area_pooling_matrix(4, 2), [[.5, .5, 0, 0], [0, 0, .5, .5]])
  # 5 -> 2: the middle cell is shared half/half.
  np.testing.assert_allclose(area_pooling_matrix(5, 2), [[.4, .4, .2, 0, 0], [0, 0, .2, .4, .4]],
                             atol=1e-6)
  for g, s in [(27, 12), (7, 3), (16, 16)]:
    np.testing.assert_allclose(area_pooling_matrix(g, s).sum(1), 1.0, rtol=1e-6)
    # every input cell is used with the same total weight
    np.testing.assert_allclose(area_pooling_matrix(g, s).sum(0), s / g, rtol=1e-5)


@pytest.mark.parametrize('use_class_token', [False, True])
def test_avgpool_shape_and_gradients_reach_every_parameter(use_class_token):
  model_config = tiny.get_config().model
  model_config.vit.use_class_token = use_class_token
  connector = make_connector(model_config, rngs=nnx.Rngs(0))
  assert isinstance(connector, AvgPoolConnector)
  features = jax.random.normal(jax.random.key(1), (3, 16 + int(use_class_token), 64))
  out = connector(features)
  assert out.shape == (3, 4, 128)

  grads = nnx.grad(lambda m: jnp.sum(m(features) ** 2))(connector)
  leaves = jax.tree.leaves(grads)
  assert len(leaves) == 4  # two kernels, two biases
  assert all(float(jnp.abs(g).max()) > 0 for g in leaves)


def test_pooling_averages_patch_groups():
  model_config = tiny.get_config().model  # 4x4 grid -> 2x2
  connector = make_connector(model_config, rngs=nnx.Rngs(0))
  features = jnp.zeros((1, 16, 64)).at[0, 0].set(4.0)  # only patch (0, 0) is nonzero
  same_cell = jnp.zeros((1, 16, 64)).at[0, 5].set(4.0)  # patch (1, 1): same 2x2 cell
  np.testing.assert_allclose(connector(features), connector(same_cell), atol=1e-6)


@pytest.mark.parametrize('kind', ['attnpool', 'c_abstractor'])
def test_unimplemented_kinds_name_the_key(kind):
  model_config = tiny.get_config().model
  model_config.connector.kind = kind
  with pytest.raises(NotImplementedError, match='model.connector.kind'):
    make_connector(model_config, rngs=nnx.Rngs(0))
