"""The PyTorch reference (mm1_jax/export/torch_model.py) against the JAX model.

Tiny MM1s built directly with nnx (every parameter drawn at random, so no norm scale of one or
zero bias hides a mapping error) are exported in the canonical naming, loaded with
`MM1ForCausalLM.from_pretrained`, and run on packed rows (several documents per row,
images in some of them, an invalid image slot, padding): the logits equal JAX's with max
abs diff at most 1e-4 in float32, for each connector kind, scanned and unrolled stacks,
tied and untied outputs, and MoE decoders (scanned groups and unrolled). The module
imports without JAX, and its state dict is the exported tensors exactly.
"""

import json
import math
import os
import subprocess
import sys

from typing import NamedTuple

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip('torch')
safetensors_numpy = pytest.importorskip('safetensors.numpy')

from experiments import tiny  # noqa: E402
from mm1_jax.export import naming, torch_connectors, torch_vit  # noqa: E402
from mm1_jax.export.torch_decoder import MoE as TorchMoE  # noqa: E402
from mm1_jax.export.torch_model import MM1ForCausalLM  # noqa: E402
from mm1_jax.models import connectors, moe  # noqa: E402
from mm1_jax.models.mm1 import MM1  # noqa: E402
from mm1_jax.models.vit import interpolate_position_embedding  # noqa: E402

TOLERANCE = 1e-4
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def model_config(connector: str, **changes):
  """The tiny smoke model with a 5x5 patch grid (40px, 8px patches): area pooling to the
  2x2 token grid then has unequal cell overlaps."""
  config = tiny.get_config('smoke')
  config.model.vit.image_size = 40
  config.model.connector.kind = connector
  for key, value in changes.items():
    section, name = key.split('.')
    config.model[section][name] = value
  return config


CASES = {
    # avgpool; scanned ViT and decoder; the class token reaches the connector, which drops it.
    'avgpool_scanned': model_config('avgpool', **{
        'vit.use_class_token': True, 'vit.scan_layers': True, 'decoder.scan_layers': True}),
    # attnpool over class token + patches of the penultimate block; untied output.
    'attnpool_untied': model_config('attnpool', **{
        'vit.use_class_token': True, 'vit.depth': 3, 'vit.feature_layer': -2,
        'vit.final_norm': False, 'vit.activation': 'quick_gelu',
        'connector.num_heads': 4, 'decoder.tie_embeddings': False}),
    # C-Abstractor with a width change in the first block (shortcut) and a 3-layer readout.
    'c_abstractor': model_config('c_abstractor', **{
        'vit.use_class_token': True, 'vit.drop_class_token': True,
        'vit.activation': 'gelu_exact', 'connector.depth': 2, 'connector.width': 48,
        'connector.mlp_depth': 3}),
    # MoE in every 2nd layer, scanned in groups, dropless; experts narrower than d_ff.
    'moe_scanned': model_config('avgpool', **{
        'moe.num_experts': 4, 'moe.top_k': 2, 'moe.every': 2, 'moe.dispatch': 'dropless',
        'moe.d_ff': 96, 'decoder.scan_layers': True}),
    # MoE in every layer, unrolled, capacity dispatch with room for every assignment
    # (capacity_factor = experts / top_k), gate weights not renormalised.
    'moe_capacity': model_config('avgpool', **{
        'moe.num_experts': 4, 'moe.top_k': 2, 'moe.every': 1, 'moe.dispatch': 'capacity',
        'moe.capacity_factor': 2.0, 'moe.renormalize': False}),
}


def random_model(build, seed: int):
  """The module `build` makes, every parameter drawn at random (no norm scale of one or
  zero bias hides a mapping error): kernels N(0, 1/fan_in), norm scales 1 + N(0, 0.1),
  other vectors N(0, 0.1). Built abstractly: eager initialisation is slow to dispatch."""
  graphdef, params = nnx.split(nnx.eval_shape(build), nnx.Param)
  rng = np.random.default_rng(seed)

  def draw(path, x):
    if len(x.shape) == 1:
      mean = 1.0 if path[-1].key == 'scale' else 0.0
      return mean + rng.normal(0, 0.1, x.shape).astype(np.float32)
    return rng.normal(0, math.prod(x.shape[:-1]) ** -0.5, x.shape).astype(np.float32)

  pure = jax.tree_util.tree_map_with_path(draw, nnx.to_pure_dict(params))
  nnx.replace_by_pure_dict(params, jax.tree.map(jnp.asarray, pure))
  return nnx.merge(graphdef, params)


def packed_batch(config, seed: int = 0):
  """Two rows of 48: row 0 holds two documents (images 0; 1 and 2 back to back), row 1
  three (images 0, 2; slot 1 invalid), both end in padding. All contract keys."""
  rng = np.random.default_rng(seed)
  vocab, image_id = config.model.decoder.vocab_size, config.model.image_token_id
  k, size = config.model.connector.num_tokens, config.model.vit.image_size
  layouts = [[[3, 'img', 5], [2, 'img', 'img', 4]],
             [['img', 6], [7], [1, 'img', 3]]]
  length, slots = 48, 3
  batch = {'tokens': np.zeros((2, length), np.int32),
           'segment_ids': np.zeros((2, length), np.int32),
           'positions': np.zeros((2, length), np.int32),
           'images': rng.integers(0, 256, (2, slots, size, size, 3), dtype=np.uint8),
           'image_valid': np.array([[True, True, True], [True, False, True]]),
           'targets': np.zeros((2, length), np.int32),
           'loss_mask': np.zeros((2, length), np.float32),
           'source_id': np.zeros((2,), np.int32)}
  for row, documents in enumerate(layouts):
    ids, segments, positions = [], [], []
    for segment, document in enumerate(documents, start=1):
      doc = []
      for part in document:
        doc += [image_id] * k if part == 'img' else list(rng.integers(5, vocab, part))
      ids += doc
      segments += [segment] * len(doc)
      positions += list(range(len(doc)))
    assert len(ids) < length, 'every row ends in padding'
    batch['tokens'][row, :len(ids)] = ids
    batch['segment_ids'][row, :len(ids)] = segments
    batch['positions'][row, :len(ids)] = positions
  batch['targets'][:, :-1] = batch['tokens'][:, 1:]
  return batch


def jax_logits(model, batch) -> np.ndarray:
  """The JAX model's logits; an MoE model must have dropped nothing (the reference never
  drops, so parity needs room for every assignment)."""
  inputs = {k: jnp.asarray(batch[k]) for k in ('tokens', 'segment_ids', 'positions', 'images',
                                              'image_valid')}
  logits, aux = nnx.jit(lambda m, b: m(b))(model, inputs)
  assert float(aux.get('moe/dropped_fraction', 0.0)) == 0.0
  return np.asarray(logits)


def export(model, config, out: str) -> dict[str, np.ndarray]:
  """OUT/config.json + OUT/model.safetensors in the canonical naming; returns the tensors."""
  flat = naming.flatten(nnx.to_pure_dict(nnx.state(model, nnx.Param)), config.model)
  os.makedirs(out, exist_ok=True)
  safetensors_numpy.save_file(flat, os.path.join(out, 'model.safetensors'))
  with open(os.path.join(out, 'config.json'), 'w', encoding='utf-8') as f:
    json.dump({'model': config.model.to_dict()}, f)
  return flat


def torch_logits(model, batch) -> np.ndarray:
  with torch.no_grad():
    return model(**{k: torch.from_numpy(np.asarray(v)) for k, v in batch.items()}).numpy()


class Export(NamedTuple):
  config: object
  batch: dict
  expected: np.ndarray   # JAX logits
  out: str               # the export directory
  flat: dict             # its tensors


@pytest.fixture(scope='module')
def exports(tmp_path_factory):
  """name -> Export of CASES[name], built once per module on first use."""
  torch.set_num_threads(1)
  cache = {}

  def get(name: str) -> Export:
    if name not in cache:
      config = CASES[name]
      model = random_model(lambda: MM1(config, rngs=nnx.Rngs(0)), seed=1)
      batch = packed_batch(config)
      out = str(tmp_path_factory.mktemp(name))
      flat = export(model, config, out)
      cache[name] = Export(config, batch, jax_logits(model, batch), out, flat)
    return cache[name]

  return get


def copy_config(out: str, directory) -> None:
  with open(os.path.join(out, 'config.json'), encoding='utf-8') as f:
    (directory / 'config.json').write_text(f.read())


@pytest.mark.parametrize('name', sorted(CASES))
def test_reference_logits_equal_jax(exports, name):
  case = exports(name)
  ours = torch_logits(MM1ForCausalLM.from_pretrained(case.out), case.batch)
  expected = case.expected
  error = float(np.max(np.abs(ours - expected)))
  print(f'torch reference vs JAX ({name}): max abs diff {error:.2e}')
  assert ours.shape == expected.shape and ours.dtype == np.float32
  assert error <= TOLERANCE


@pytest.mark.parametrize('name', sorted(CASES))
def test_state_dict_is_the_exported_tensors(exports, name, tmp_path):
  _, batch, _, out, flat = exports(name)
  model = MM1ForCausalLM.from_pretrained(out)
  state = {k: v.numpy() for k, v in model.state_dict().items()}
  assert sorted(state) == sorted(flat)
  for key, value in flat.items():
    assert state[key].shape == value.shape and np.array_equal(state[key], value), key
  # And back: the state dict saved by torch loads into an identical model.
  from safetensors.torch import save_file
  save_file(dict(model.state_dict()), str(tmp_path / 'model.safetensors'))
  copy_config(out, tmp_path)
  again = MM1ForCausalLM.from_pretrained(str(tmp_path))
  assert np.array_equal(torch_logits(again, batch), torch_logits(model, batch))


def test_scanned_and_unrolled_models_export_the_same_keys():
  def plan(config):
    abstract = nnx.eval_shape(lambda: MM1(config, rngs=nnx.Rngs(0)))
    return naming.param_plan(config.model, nnx.to_pure_dict(nnx.state(abstract, nnx.Param)))

  scanned = plan(CASES['avgpool_scanned'])
  unrolled = plan(model_config('avgpool', **{'vit.use_class_token': True}))
  assert sorted((e.key, e.shape) for e in scanned) == sorted((e.key, e.shape) for e in unrolled)
  assert any(e.index == 3 and e.key.startswith('decoder.layers.3.') for e in scanned)
  assert all(e.index is None for e in unrolled)


def test_sharded_safetensors_load(exports, tmp_path):
  """An index file with two shards (the Hugging Face convention) loads the same model."""
  _, batch, expected, out, flat = exports('attnpool_untied')
  keys = sorted(flat)
  shards = {'model-00001-of-00002.safetensors': keys[::2],
            'model-00002-of-00002.safetensors': keys[1::2]}
  for file, names in shards.items():
    safetensors_numpy.save_file({k: flat[k] for k in names}, str(tmp_path / file))
  weight_map = {k: file for file, names in shards.items() for k in names}
  (tmp_path / 'model.safetensors.index.json').write_text(json.dumps(
      {'metadata': {}, 'weight_map': weight_map}))
  copy_config(out, tmp_path)
  ours = torch_logits(MM1ForCausalLM.from_pretrained(str(tmp_path)), batch)
  assert float(np.max(np.abs(ours - expected))) <= TOLERANCE


def test_bfloat16_parameters_run(exports):
  """from_pretrained(dtype=bfloat16) computes in bfloat16 and still returns float32 logits
  close to the float32 ones (bfloat16 keeps ~3 significant digits)."""
  name = 'c_abstractor'
  case = exports(name)
  model = MM1ForCausalLM.from_pretrained(case.out, dtype=torch.bfloat16)
  assert {p.dtype for p in model.parameters()} == {torch.bfloat16}
  ours = torch_logits(model, case.batch)
  assert ours.dtype == np.float32 and np.all(np.isfinite(ours))
  scale = float(np.max(np.abs(case.expected)))
  assert float(np.max(np.abs(ours - case.expected))) <= 0.1 * scale


def test_mismatched_tensors_are_named(exports, tmp_path):
  _, _, _, out, flat = exports('attnpool_untied')
  broken = dict(flat)
  del broken['decoder.final_norm.scale']
  broken['decoder.layers.0.mlp.up.kernel'] = broken['decoder.layers.0.mlp.up.kernel'][:, :8]
  safetensors_numpy.save_file(broken, str(tmp_path / 'model.safetensors'))
  copy_config(out, tmp_path)
  with pytest.raises(ValueError, match=r'decoder\.final_norm\.scale.*decoder\.layers\.0\.mlp'
                                       r'\.up\.kernel'):
    MM1ForCausalLM.from_pretrained(str(tmp_path))


def test_truncated_safetensors_is_named(exports, tmp_path):
  out = exports('attnpool_untied').out
  with open(os.path.join(out, 'model.safetensors'), 'rb') as f:
    data = f.read()
  (tmp_path / 'model.safetensors').write_bytes(data[:len(data) // 2])
  copy_config(out, tmp_path)
  with pytest.raises(ValueError, match=r'model\.safetensors is not a readable safetensors'):
    MM1ForCausalLM.from_pretrained(str(tmp_path))


def test_imports_and_runs_without_jax(exports):
  """A process in which `import jax` (and flax) fails loads the export and runs it."""
  _, batch, expected, out, _ = exports('attnpool_untied')
  script = f'''
import sys
sys.modules['jax'] = None  # any import of jax now raises ImportError
sys.modules['flax'] = None
import numpy as np, torch
from mm1_jax.export.torch_model import MM1ForCausalLM
from mm1_jax.export import naming
batch = dict(np.load(sys.argv[1]))
with torch.no_grad():
  logits = MM1ForCausalLM.from_pretrained({out!r})(**{{k: torch.from_numpy(v) for k, v in batch.items()}})
np.save(sys.argv[2], logits.numpy())
assert not any(m == 'jax' or m.startswith(('jax.', 'flax')) for m in sys.modules
               if sys.modules[m] is not None)
'''
  batch_file, logits_file = os.path.join(out, 'batch.npz'), os.path.join(out, 'logits.npy')
  np.savez(batch_file, **batch)
  env = dict(os.environ, PYTHONPATH=ROOT)
  subprocess.run([sys.executable, '-c', script, batch_file, logits_file], check=True, cwd=ROOT,
                 env=env, timeout=300)
  assert float(np.max(np.abs(np.load(logits_file) - expected))) <= TOLERANCE


# ------------------------------------------------------------------ pieces, exactly


@pytest.mark.parametrize('input_size, output_size', [(4, 2), (5, 2), (7, 3), (6, 6), (3, 1)])
def test_area_pooling_matrix_equals_jax(input_size, output_size):
  np.testing.assert_array_equal(torch_connectors.area_pooling_matrix(input_size, output_size),
                                connectors.area_pooling_matrix(input_size, output_size))


@pytest.mark.parametrize('old, new, class_token', [(4, 6, True), (5, 3, False), (4, 4, True)])
def test_position_table_resize_equals_jax(old, new, class_token):
  table = np.random.default_rng(old).normal(size=(old * old + class_token, 8)).astype(np.float32)
  expected = np.asarray(interpolate_position_embedding(jnp.asarray(table), new, class_token))
  ours = torch_vit.resize_position_table(torch.from_numpy(table), new, class_token).numpy()
  assert ours.shape == expected.shape
  assert float(np.max(np.abs(ours - expected))) <= 1e-5


@pytest.mark.parametrize('dispatch, renormalize', [('dropless', True), ('capacity', False)])
def test_moe_layer_equals_jax(dispatch, renormalize):
  """Top-2 of 4 experts; capacity_factor = E / k gives every expert room for all tokens."""
  config = dict(num_experts=4, top_k=2, every=1, dispatch=dispatch, capacity_factor=2.0,
                load_balance_weight=0.01, z_loss_weight=0.001, renormalize=renormalize)
  layer = random_model(lambda: moe.MoE(32, 48, ml_collections.ConfigDict(config),
                                        rngs=nnx.Rngs(0)), seed=2)
  x = np.random.default_rng(3).normal(size=(2, 12, 32)).astype(np.float32)
  expected, aux = nnx.jit(lambda m, x: m(x))(layer, jnp.asarray(x))
  assert float(aux['dropped_fraction']) == 0.0
  ours = TorchMoE(32, 48, config)
  params = nnx.to_pure_dict(nnx.state(layer, nnx.Param))
  ours.load_state_dict({k: torch.from_numpy(np.array(v)) for k, v in params.items()})
  with torch.no_grad():
    result = ours(torch.from_numpy(x)).numpy()
  error = float(np.max(np.abs(result - np.asarray(expected))))
  print(f'torch MoE layer vs JAX ({dispatch}): max abs diff {error:.2e}')
  assert error <= TOLERANCE


# ------------------------------------------------------------------ end to end


def test_trained_checkpoint_through_to_pytorch(smoke_run, tmp_path):
  """A trained run -> `to_pytorch.convert` (sharded) -> from_pretrained: the logits equal
  `mm1_jax.load(workdir).forward` on a packed batch with images."""
  import mm1_jax
  from mm1_jax.export import to_pytorch
  config, workdir, _ = smoke_run
  out = str(tmp_path / 'out')
  to_pytorch.convert(workdir, out, max_shard_size='200KB', hf=False, show_progress=False)
  assert os.path.exists(os.path.join(out, 'model.safetensors.index.json'))
  batch = packed_batch(config, seed=4)
  batch['images'] = batch['images'][:, :, :32, :32]  # the smoke model's image size
  expected = mm1_jax.load(workdir).forward(batch)
  ours = torch_logits(MM1ForCausalLM.from_pretrained(out), batch)
  error = float(np.max(np.abs(ours - expected)))
  print(f'torch reference vs mm1_jax.load(...).forward (trained smoke run): max abs diff '
        f'{error:.2e}')
  assert error <= TOLERANCE
