"""MoE decoders: scanned groups equal the unrolled layers, expert parallelism of the whole
MM1 equals one device (forward and gradients), KV-cache decoding equals the full forward,
per-layer parameter layout round trip."""

import functools

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from flax import nnx
from jax.sharding import NamedSharding

from experiments import tiny
from mm1_jax.models import MM1
from mm1_jax.models.decoder import Decoder, layers_from_list, layers_to_list, moe_every
from mm1_jax.parallel import rules
from mm1_jax.parallel.mesh import make_mesh

BATCH, LENGTH = 8, 16
NAMES = dict(tokens=('batch', 'length'), segment_ids=('batch', 'length'),
             positions=('batch', 'length'))


def _config(num_layers=4, scan_layers=True, remat='none'):
  """tiny.py with 4 experts top-2 every 2nd layer; capacity = a whole row: nothing drops."""
  config = tiny.get_config()
  config.model.decoder.update(num_layers=num_layers, scan_layers=scan_layers, remat=remat)
  config.model.moe.update(num_experts=4, top_k=2, every=2, capacity_factor=2.0)
  return config


def _batch(batch=BATCH, length=LENGTH, seed=0):
  """Text rows: the ViT and connector are MM1's and untouched by MoE (test_mm1.py), so
  they are left out of these compilations."""
  rng = np.random.default_rng(seed)
  return dict(tokens=rng.integers(5, 512, (batch, length)).astype(np.int32),
              segment_ids=np.ones((batch, length), np.int32),
              positions=np.broadcast_to(np.arange(length, dtype=np.int32),
                                        (batch, length)).copy())


def _loss(model, batch):
  """Next-token loss plus the MoE losses, as the train step adds them."""
  logits, aux = model(batch)
  lm = optax.softmax_cross_entropy_with_integer_labels(logits[:, :-1],
                                                       batch['tokens'][:, 1:]).mean()
  return lm + aux['moe/load_balance_loss'] + aux['moe/router_z_loss'], (logits, aux)


@functools.cache
def _grad_fn(graphdef):
  grad = jax.value_and_grad(lambda params, batch: _loss(nnx.merge(graphdef, params), batch),
                            has_aux=True)
  return jax.jit(grad)


def _run(model, batch, mesh=None):
  """(logits, aux, grads as a pure dict) of the whole MM1, laid out on `mesh` if given."""
  graphdef, params = nnx.split(model, nnx.Param)
  batch = {k: jnp.asarray(v) for k, v in batch.items()}
  if mesh is None:
    (_, (logits, aux)), grads = _grad_fn(graphdef)(params, batch)
  else:
    with jax.set_mesh(mesh):
      params = jax.device_put(params, rules.state_shardings(params, mesh))
      batch = {k: jax.device_put(v, NamedSharding(mesh, rules.logical_to_spec(
          NAMES[k], v.shape, mesh))) for k, v in batch.items()}
      (_, (logits, aux)), grads = _grad_fn(graphdef)(params, batch)
  return np.asarray(logits), jax.device_get(aux), jax.device_get(nnx.to_pure_dict(grads))


def _close(a, b, atol=2e-5):
  jax.tree.map(lambda x, y: np.testing.assert_allclose(x, y, atol=atol, rtol=1e-4), a, b)


@pytest.fixture(scope='module')
def scanned():
  """The scanned MoE MM1 and its single-device (logits, aux, grads) on the shared batch."""
  model = MM1(_config(), rngs=nnx.Rngs(0))
  return model, _run(model, _batch())


@pytest.fixture(scope='module')
def unrolled(scanned):
  """The same model unrolled (remat 'full'), its parameters mapped through the per-layer
  list; and its (logits, aux, grads) with the gradients mapped back to the scanned layout."""
  model = MM1(_config(scan_layers=False, remat='full'), rngs=nnx.Rngs(1))
  params = nnx.to_pure_dict(nnx.state(scanned[0], nnx.Param))
  per_layer = layers_to_list(params['decoder']['layers'], num_layers=4, every=2,
                             scan_layers=True)
  params['decoder']['layers'] = layers_from_list(per_layer, every=2, scan_layers=False)
  nnx.update(model, params)
  logits, aux, grads = _run(model, _batch())
  grads['decoder']['layers'] = layers_from_list(
      layers_to_list(grads['decoder']['layers'], num_layers=4, every=2, scan_layers=False),
      every=2, scan_layers=True)
  return model, (logits, aux, grads)


def test_param_layout_groups_and_round_trip(scanned):
  model, _ = scanned
  layers = nnx.to_pure_dict(nnx.state(model, nnx.Param))['decoder']['layers']
  assert sorted(layers) == ['dense', 'moe'] and sorted(layers['dense']) == [0]
  assert layers['moe']['mlp']['gate'].shape == (2, 4, 128, 384)  # [groups, experts, d, f]
  assert layers['moe']['mlp']['router'].shape == (2, 128, 4)
  assert layers['dense'][0]['mlp']['gate']['kernel'].shape == (2, 128, 384)
  per_layer = layers_to_list(layers, num_layers=4, every=2, scan_layers=True)
  assert ['router' in layer['mlp'] for layer in per_layer] == [False, True, False, True]
  np.testing.assert_array_equal(per_layer[3]['mlp']['up'], layers['moe']['mlp']['up'][1])
  np.testing.assert_array_equal(per_layer[2]['attention']['query'],
                                layers['dense'][0]['attention']['query'][1])
  back = layers_from_list(per_layer, every=2, scan_layers=True)
  jax.tree.map(np.testing.assert_array_equal, back, layers)


def test_scanned_groups_equal_unrolled_layers_with_remat(scanned, unrolled):
  logits, aux, grads = scanned[1]
  logits1, aux1, grads1 = unrolled[1]
  assert set(aux) == {'moe/load_balance_loss', 'moe/router_z_loss', 'moe/dropped_fraction',
                      'moe/expert_load_max', 'moe/expert_load_min'}
  assert aux['moe/dropped_fraction'] == 0.0 and aux['moe/load_balance_loss'] > 0
  np.testing.assert_allclose(logits1, logits, atol=2e-5)
  _close(aux1, aux)
  _close(grads1, grads)


def test_expert_parallel_whole_model_equals_single_device(scanned):
  """8 rows over data=2 x expert=4: each expert shard routes its own row (the layer tests
  cover rows that do not divide, split along the length)."""
  model, reference = scanned
  mesh = make_mesh(dict(data=2, fsdp=1, tensor=1, expert=4))
  logits, aux, grads = _run(model, _batch(), mesh)
  np.testing.assert_allclose(logits, reference[0], atol=2e-5)
  _close(aux, reference[1])
  _close(grads, reference[2])


@pytest.mark.parametrize('scan_layers', [True, False])
def test_kv_cache_decoding_equals_the_full_forward(scanned, unrolled, scan_layers):
  """Prefill 10 tokens, then decode the 6 next ones: the logits of the full forward."""
  model = (scanned if scan_layers else unrolled)[0]
  batch = _batch()
  full = (scanned if scan_layers else unrolled)[1][0]
  prompt = 10
  prompt_batch = {k: jnp.asarray(v[:, :prompt]) for k, v in batch.items()}
  logits, cache = nnx.jit(lambda m, b: m.prefill(b, m.init_cache(BATCH, LENGTH)))(
      model, prompt_batch)
  steps = [np.asarray(logits)]
  decode = nnx.jit(lambda m, tokens, cache: m.decode_step(tokens, cache))
  for i in range(prompt, LENGTH):
    step_logits, cache = decode(model, jnp.asarray(batch['tokens'][:, i]), cache)
    steps.append(np.asarray(step_logits)[:, None])
  np.testing.assert_allclose(np.concatenate(steps, axis=1), full, atol=2e-4)


def test_num_layers_must_be_a_multiple_of_every():
  config = _config(num_layers=3)
  assert moe_every(config.model.moe) == 2
  with pytest.raises(ValueError, match='model.moe.every'):
    nnx.eval_shape(lambda: Decoder(config.model.decoder, rngs=nnx.Rngs(0),
                                   moe_config=config.model.moe))
