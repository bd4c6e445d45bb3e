"""The canonical flat naming (mm1_jax/export/naming.py): per-layer keys whatever the scan
(MoE decoders' scanned groups included), an exact inverse, streaming plans that agree with the arrays, and errors naming the key."""

import jax
import numpy as np
import pytest
from flax import nnx

from experiments import tiny
from mm1_jax.export import naming
from mm1_jax.models.mm1 import MM1


def config(scan: bool, moe_every: int = 0):
  config = tiny.get_config('smoke')
  config.model.vit.scan_layers = scan
  config.model.decoder.scan_layers = scan
  if moe_every:
    config.model.moe.update(num_experts=4, every=moe_every)
  return config


def random_params(config, seed=0) -> dict:
  """The model's params (nnx.to_pure_dict form) filled with distinct random numpy values."""
  abstract = nnx.to_pure_dict(nnx.state(nnx.eval_shape(lambda: MM1(config, rngs=nnx.Rngs(0))),
                                        nnx.Param))
  rng = np.random.default_rng(seed)
  return jax.tree.map(lambda x: rng.normal(size=x.shape).astype(np.float32), abstract)


@pytest.fixture(scope='module')
def models():
  return {scan: (config(scan), random_params(config(scan))) for scan in (False, True)}


def test_scanned_stacks_split_into_the_unrolled_keys(models):
  (plain_config, plain), (scan_config, scanned) = models[False], models[True]
  flat_plain = naming.flatten(plain, plain_config.model)
  flat_scanned = naming.flatten(scanned, scan_config.model)
  assert {k: v.shape for k, v in flat_plain.items()} == \
      {k: v.shape for k, v in flat_scanned.items()}
  layers = scanned['decoder']['layers']
  for i in range(scan_config.model.decoder.num_layers):
    np.testing.assert_array_equal(flat_scanned[f'decoder.layers.{i}.attention.query'],
                                  layers['attention']['query'][i])
  np.testing.assert_array_equal(flat_scanned['vit.blocks.1.mlp.up.kernel'],
                                scanned['vit']['blocks']['mlp']['up']['kernel'][1])
  assert 'decoder.embedding' in flat_scanned and 'vit.blocks.0.attention.key_bias' in flat_plain


@pytest.mark.parametrize('scan', [False, True])
def test_unflatten_inverts_flatten_exactly(models, scan):
  cfg, params = models[scan]
  back = naming.unflatten(naming.flatten(params, cfg.model), cfg.model)
  assert jax.tree.structure(back) == jax.tree.structure(params)
  for a, b in zip(jax.tree.leaves(back), jax.tree.leaves(params)):
    assert a.dtype == b.dtype and np.array_equal(a, b)


def test_plans_agree_with_the_arrays(models):
  cfg, params = models[True]
  entries = naming.param_plan(cfg.model, params)
  flat = naming.flatten(params, cfg.model)
  assert [e.key for e in entries] == list(flat)
  for e in entries:
    assert e.shape == flat[e.key].shape
  # The inverse plan lists every source once, its layers in order.
  sources = naming.source_plan(cfg.model, {k: v.shape for k, v in flat.items()})
  leaves = dict(naming.leaves(params))
  assert sorted(s.source for s in sources) == sorted(leaves)
  for s in sources:
    assert s.shape == leaves[s.source].shape
    if s.stacked:  # ('decoder', 'layers', ...) or ('vit', 'blocks', ...): layer after both
      assert s.keys == tuple(naming.join(s.source[:2] + (i,) + s.source[2:])
                             for i in range(s.shape[0]))


def test_inverse_errors_name_the_keys(models):
  cfg, params = models[True]
  flat = naming.flatten(params, cfg.model)
  missing = dict(flat)
  del missing['decoder.layers.2.mlp.gate.kernel']
  with pytest.raises(naming.NamingError, match=r'decoder\.layers\.2\.mlp\.gate\.kernel'):
    naming.unflatten(missing, cfg.model)
  reshaped = dict(flat)
  reshaped['decoder.layers.1.mlp_norm.scale'] = reshaped['decoder.layers.1.mlp_norm.scale'][:7]
  with pytest.raises(naming.NamingError, match=r'decoder\.layers\.1\.mlp_norm\.scale'):
    naming.unflatten(reshaped, cfg.model)
  unindexed = dict(flat)
  unindexed['decoder.layers.extra'] = np.zeros(3, np.float32)
  with pytest.raises(naming.NamingError, match=r"'decoder\.layers\.extra'"):
    naming.unflatten(unindexed, cfg.model)


@pytest.mark.parametrize('every', [1, 2, 4])
def test_scanned_moe_groups_split_into_the_unrolled_keys(every):
  """Group g's member j (dense.{j}, moe = the last) is layer g * every + j."""
  plain_config, scan_config = config(False, every), config(True, every)
  plain = naming.flatten(random_params(plain_config), plain_config.model)
  scanned_params = random_params(scan_config, seed=1)
  scanned = naming.flatten(scanned_params, scan_config.model)
  assert {k: v.shape for k, v in plain.items()} == {k: v.shape for k, v in scanned.items()}
  layers = scanned_params['decoder']['layers']
  num_layers = scan_config.model.decoder.num_layers
  assert sorted(k for k in scanned if k.endswith('mlp.router')) == sorted(
      f'decoder.layers.{i}.mlp.router' for i in range(every - 1, num_layers, every))
  for i in range(num_layers):
    group, member = divmod(i, every)
    source = layers['moe'] if member == every - 1 else layers['dense'][member]
    np.testing.assert_array_equal(scanned[f'decoder.layers.{i}.attention.out'],
                                  source['attention']['out'][group])
  np.testing.assert_array_equal(scanned[f'decoder.layers.{every - 1}.mlp.gate'],
                                layers['moe']['mlp']['gate'][0])
  back = naming.unflatten(scanned, scan_config.model)
  assert jax.tree.structure(back) == jax.tree.structure(scanned_params)
  assert all(np.array_equal(a, b) for a, b in zip(jax.tree.leaves(back),
                                                 jax.tree.leaves(scanned_params)))


def test_keys_split_and_join():
  assert naming.split('decoder.layers.12.mlp.up.kernel') == (
      'decoder', 'layers', 12, 'mlp', 'up', 'kernel')
  assert naming.join(('connector', 'readout', 'layers', 0, 'bias')) == \
      'connector.readout.layers.0.bias'
