"""MM1 assembly: image scatter, image influence, param_count, and the sharded forward."""

import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx
from jax.sharding import NamedSharding, PartitionSpec as P

from experiments import tiny
from mm1_jax.models import MM1, param_count
from mm1_jax.models.decoder import Decoder
from mm1_jax.parallel.mesh import make_mesh
from mm1_jax.parallel.rules import logical_to_spec, state_shardings

BATCH, LENGTH, SLOTS, K, IMAGE = 4, 24, 2, 4, 4  # IMAGE: the <image> token id
RUNS = (3, 12)  # where the two image runs of a full row start


def _config():
  config = tiny.get_config()
  config.model.decoder.num_layers = 2
  return config


def _batch(seed=0):
  rng = np.random.default_rng(seed)
  tokens = rng.integers(5, 512, (BATCH, LENGTH)).astype(np.int32)
  for start in RUNS:
    tokens[:, start:start + K] = IMAGE
  image_valid = np.ones((BATCH, SLOTS), bool)
  tokens[3, RUNS[1]:RUNS[1] + K] = 9  # row 3 has one image
  image_valid[3, 1] = False
  return dict(
      tokens=jnp.asarray(tokens),
      segment_ids=jnp.ones((BATCH, LENGTH), jnp.int32),
      positions=jnp.broadcast_to(jnp.arange(LENGTH, dtype=jnp.int32), (BATCH, LENGTH)),
      images=jnp.asarray(rng.integers(0, 256, (BATCH, SLOTS, 32, 32, 3)).astype(np.uint8)),
      image_valid=jnp.asarray(image_valid),
      source_id=jnp.zeros((BATCH,), jnp.int32))  # extra keys are ignored


def _forward_fn(graphdef):
  @jax.jit
  def forward(state, batch):
    return nnx.merge(graphdef, state)(batch)
  return forward


@pytest.fixture(scope='module')
def model():
  return MM1(_config(), rngs=nnx.Rngs(0))


@pytest.fixture(scope='module')
def forward(model):
  graphdef, state = nnx.split(model)
  return functools.partial(_forward_fn(graphdef), state)


def test_forward_shapes(forward):
  logits, aux = forward(_batch())
  assert logits.shape == (BATCH, LENGTH, 512) and logits.dtype == jnp.float32
  assert aux == {}
  assert bool(jnp.all(jnp.isfinite(logits)))


@pytest.fixture(scope='module')
def scatter(model):
  """(tokens, images, image_valid) -> (scattered, text embeddings, per-image tokens)."""

  @nnx.jit
  def run(model, tokens, images, image_valid):
    text = model.decoder.embed_tokens(tokens)
    scattered = model.scatter_images(text, tokens, images, image_valid)
    per_image = model.embed_images(images.reshape(-1, *images.shape[2:]))
    return scattered, text, per_image.reshape(*images.shape[:2], *per_image.shape[1:])

  return functools.partial(run, model)


def test_image_runs_receive_their_images_in_order(scatter):
  batch = _batch()
  scattered, text, images = scatter(batch['tokens'], batch['images'], batch['image_valid'])
  assert images.shape == (BATCH, SLOTS, K, 128)
  for row in range(BATCH):
    for slot, start in enumerate(RUNS):
      got = scattered[row, start:start + K]
      if row == 3 and slot == 1:  # no image run there: text embeddings stay
        np.testing.assert_allclose(got, text[row, start:start + K])
      else:
        np.testing.assert_allclose(got, images[row, slot], atol=1e-5)
  text_positions = np.asarray(batch['tokens']) != IMAGE
  np.testing.assert_array_equal(np.asarray(scattered)[text_positions],
                                np.asarray(text)[text_positions])


def test_invalid_slot_gives_zero_embedding(scatter):
  batch = _batch()
  valid = batch['image_valid'].at[0, 1].set(False)
  scattered, _, _ = scatter(batch['tokens'], batch['images'], valid)
  np.testing.assert_array_equal(scattered[0, RUNS[1]:RUNS[1] + K], 0.0)


def test_changing_an_image_changes_logits_only_from_its_run(forward):
  batch = _batch()
  logits, _ = forward(batch)
  other = dict(batch, images=batch['images'].at[0, 1].set(255 - batch['images'][0, 1]))
  changed, _ = forward(other)
  start = RUNS[1]
  np.testing.assert_allclose(changed[0, :start], logits[0, :start], atol=1e-5)
  assert not np.allclose(changed[0, start:], logits[0, start:], atol=1e-3)
  np.testing.assert_allclose(changed[1:], logits[1:], atol=1e-5)  # other rows untouched


def test_param_count_is_abstract_and_exact(model):
  expected = sum(math.prod(x.shape) for x in jax.tree.leaves(nnx.state(model, nnx.Param)))
  assert param_count(_config()) == expected


@pytest.mark.parametrize('layout', [dict(data=2, fsdp=2, tensor=2), dict(data=1, fsdp=4, tensor=2)])
def test_sharded_forward_equals_single_device(model, forward, layout):
  mesh = make_mesh(dict(layout, expert=1))
  graphdef, state = nnx.split(model)
  shardings = state_shardings(state, mesh)
  mlp_sharding = shardings['decoder']['layers'][0]['mlp']['gate']['kernel'].get_value()
  assert mlp_sharding.spec == P('fsdp', 'tensor')
  assert len(mlp_sharding.device_set) == 8
  sharded_state = jax.device_put(state, shardings)

  batch = _batch()
  names = dict(tokens=('batch', 'length'), segment_ids=('batch', 'length'),
               positions=('batch', 'length'), images=('batch', None, None, None, None),
               image_valid=('batch', None), source_id=('batch',))
  sharded_batch = {
      key: jax.device_put(value, NamedSharding(mesh, logical_to_spec(names[key], value.shape,
                                                                     mesh)))
      for key, value in batch.items()}
  assert sharded_batch['tokens'].sharding.spec == P(('data', 'fsdp', 'expert'), None)

  with jax.set_mesh(mesh):
    sharded_logits, _ = _forward_fn(graphdef)(sharded_state, sharded_batch)
  reference, _ = forward(batch)
  assert len(sharded_logits.sharding.device_set) == 8
  np.testing.assert_allclose(sharded_logits, reference, atol=1e-5)


def test_sharded_initialisation_under_jit():
  """The recipe for the train step: abstract model -> shardings -> create sharded.

  Shown on a one-layer decoder-only MM1 part to keep compile time small; MM1 is the same.
  """
  config = _config().model.decoder
  config.num_layers = 1
  build = lambda: Decoder(config, rngs=nnx.Rngs(0))
  mesh = make_mesh(dict(data=2, fsdp=2, tensor=2, expert=1))
  abstract = nnx.eval_shape(build)
  graphdef, abstract_state = nnx.split(abstract)
  shardings = state_shardings(abstract_state, mesh)

  @functools.partial(jax.jit, out_shardings=shardings)
  def create():
    return nnx.state(build())

  with jax.set_mesh(mesh):
    state = create()
  kernel = state['layers'][0]['mlp']['down']['kernel'].get_value()
  assert kernel.sharding.spec == P('tensor', 'fsdp')
  np.testing.assert_allclose(kernel, build().layers[0].mlp.down.kernel.get_value())
  assert nnx.merge(graphdef, state).embedding.shape == (512, 128)


@pytest.mark.parametrize('kind', ['avgpool', 'attnpool', 'c_abstractor'])
def test_every_parameter_carries_logical_names(kind):
  config = _config()
  config.model.connector.kind = kind
  config.model.vit.scan_layers = True
  config.model.decoder.scan_layers = True
  abstract = nnx.eval_shape(lambda: MM1(config, rngs=nnx.Rngs(0)))
  for path, variable in nnx.to_flat_state(nnx.state(abstract, nnx.Param)):
    names = variable.get_metadata().get('out_sharding')
    assert names is not None and len(names) == variable.get_value().ndim, path
    logical_to_spec(names)  # every name is in the rules table
