"""The sharded train state: FSDP divides per-device memory, parameter groups (frozen ViT,
faster connector), checkpoints that restore under another mesh, and a half-written
checkpoint that is never restored."""

import os
import shutil

import jax
import jax.numpy as jnp
import ml_collections
import numpy as np
import optax
import pytest

from mm1_jax.parallel import mesh as mesh_lib
from mm1_jax.train import checkpoint as checkpoint_lib
from mm1_jax.train import optimizer as optimizer_lib
from mm1_jax.train import state as state_lib


def _mesh(**sizes):
  sizes = dict(dict(data=1, fsdp=1, tensor=1, expert=1), **sizes)
  devices = jax.devices()[:int(np.prod(list(sizes.values())))]
  return mesh_lib.make_mesh(ml_collections.ConfigDict(sizes), devices=devices)


def _grouped_config():
  from experiments import tiny
  config = tiny.get_config('smoke')
  config.train.freeze = '^vit/'
  config.train.lr_scales = (('^connector/', 10.0),)
  return config


def _optimizer(config):
  return optimizer_lib.make_optimizer(config, optimizer_lib.resolve_settings(config, 1))


@pytest.fixture(scope='module')
def fsdp8():
  """(config, tx, layout, state): a state laid out with fsdp=8 over 8 devices."""
  config = _grouped_config()
  tx = _optimizer(config)
  layout = state_lib.make_layout(config, _mesh(fsdp=8), tx)
  # Random values placed in the layout's shardings (what init_state's out_shardings give),
  # without compiling the model's initialisation.
  rng = np.random.default_rng(0)
  state = jax.tree.map(
      lambda a: jax.device_put(rng.standard_normal(a.shape).astype(a.dtype), a.sharding),
      layout.abstract)
  return config, tx, layout, state


def _per_device_bytes(tree) -> dict:
  usage = {}
  for leaf in jax.tree.leaves(tree):
    for shard in leaf.addressable_shards:
      usage[shard.device] = usage.get(shard.device, 0) + shard.data.nbytes
  return usage


def test_fsdp_divides_the_per_device_memory_of_params_and_optimizer_state(fsdp8):
  _, _, _, state = fsdp8
  for part in ('params', 'opt_state'):
    leaves = jax.tree.leaves(state[part])
    full = sum(leaf.nbytes for leaf in leaves)
    replicated = sum(leaf.nbytes for leaf in leaves if leaf.sharding.is_fully_replicated)
    per_device = _per_device_bytes(state[part])
    assert len(per_device) == 8
    # What is not replicated (norm scales, biases, counters) is split eight ways...
    for used in per_device.values():
      assert used == pytest.approx(replicated + (full - replicated) / 8, rel=0.01), part
    # ...and that is nearly everything: each device holds about an eighth.
    assert max(per_device.values()) < full / 8 * 1.25, part


def test_master_weights_and_optimizer_state_stay_float32_under_bfloat16_compute():
  config = _grouped_config()
  config.train.dtype = 'bfloat16'
  tx = _optimizer(config)
  layout = state_lib.make_layout(config, _mesh(), tx)
  floats = [x.dtype for x in jax.tree.leaves(layout.abstract)
            if jnp.issubdtype(x.dtype, jnp.floating)]
  assert floats and all(d == jnp.float32 for d in floats)


def test_frozen_group_does_not_move_and_scaled_group_moves_faster():
  config = _grouped_config()
  config.train.optimizer.weight_decay = 0.1
  config.train.schedule.warmup = 0
  settings = optimizer_lib.OptimizerSettings(peak_lr=1e-2, weight_decay=0.1, warmup=0,
                                             total_steps=10, final_fraction=1.0)
  tx = optimizer_lib.make_optimizer(config, settings)
  params = {'vit': {'blocks': {0: {'kernel': jnp.ones((2, 2))}}},
            'connector': {'readout': {'kernel': jnp.ones((2, 2))}},
            'decoder': {'embedding': jnp.ones((2, 2))}}
  grads = jax.tree.map(jnp.ones_like, params)
  state = tx.init(params)
  updates, _ = tx.update(grads, state, params)
  # Frozen: no update (not even weight decay) and no Adam moments kept for it.
  np.testing.assert_array_equal(updates['vit']['blocks'][0]['kernel'], 0.0)
  moments = [x for x in jax.tree.leaves(state) if getattr(x, 'shape', ()) == (2, 2)]
  assert len(moments) == 4  # mu and nu of the two trainable matrices only
  np.testing.assert_allclose(updates['connector']['readout']['kernel'],
                             10 * updates['decoder']['embedding'], rtol=1e-6)
  assert np.all(np.asarray(updates['decoder']['embedding']) < 0)


def test_parameter_paths_match_the_models_names(fsdp8):
  _, _, layout, _ = fsdp8
  paths = [optimizer_lib.param_path(p)
           for p, _ in jax.tree_util.tree_leaves_with_path(layout.abstract['params'])]
  assert any(p.startswith('vit/') for p in paths)
  assert any(p.startswith('connector/') for p in paths)


def _assert_same_values(a, b):
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b), strict=True):
    np.testing.assert_array_equal(np.asarray(x), np.asarray(y))


def test_checkpoint_saved_under_fsdp8_restores_under_data2_fsdp2(tmp_path, fsdp8):
  config, tx, _, state = fsdp8
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path), keep=3, use_async=True)
  checkpointer.save(1, state, config=config)
  checkpointer.close()

  small_mesh = _mesh(data=2, fsdp=2)
  layout = state_lib.make_layout(config, small_mesh, tx)
  restored = checkpoint_lib.Checkpointer(str(tmp_path), keep=3, use_async=False).restore(
      1, layout.abstract)
  _assert_same_values(restored, state)
  for leaf, sharding in zip(jax.tree.leaves(restored), jax.tree.leaves(layout.shardings)):
    assert leaf.sharding == sharding
    assert {d.id for d in leaf.sharding.device_set} == {0, 1, 2, 3}
  embedding = restored['params']['decoder']['embedding']
  assert embedding.addressable_shards[0].data.size < embedding.size  # really re-split
  # The resolved config travels with the checkpoint.
  assert os.path.isdir(tmp_path / '1' / 'config')


def test_checkpoint_killed_mid_save_is_never_restored(tmp_path, fsdp8):
  config, _, layout, state = fsdp8
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path), keep=3, use_async=False)
  checkpointer.save(1, state, config=config)
  # Step 2 differs from step 1 in every value, so restoring the wrong step shows.
  changed = jax.tree.map(lambda x: x + 1, state)
  checkpointer.save(2, changed, config=config)
  checkpointer.close()
  # What a save of step 3 killed half-way leaves: Orbax's temporary directory, with files
  # cut short and no commit.
  partial = tmp_path / '3.orbax-checkpoint-tmp'
  shutil.copytree(tmp_path / '2', partial)
  (partial / 'commit_success.txt').unlink(missing_ok=True)
  for root, _, files in os.walk(partial):
    for name in files:
      with open(os.path.join(root, name), 'r+b') as f:
        f.truncate(os.path.getsize(os.path.join(root, name)) // 2)

  reopened = checkpoint_lib.Checkpointer(str(tmp_path), keep=3, use_async=False)
  assert reopened.latest_step() == 2
  assert reopened.all_steps() == [1, 2]
  restored = reopened.restore(2, layout.abstract)
  assert int(restored['step']) == int(changed['step'])
  _assert_same_values(restored, changed)
  reopened.close()


def test_checkpoint_arrays_are_stored_in_bounded_chunks(tmp_path, monkeypatch):
  """A reader of one tensor (the PyTorch export) never has to hold more than a chunk."""
  import json

  import orbax.checkpoint as ocp
  import tensorstore as ts
  from etils import epath
  monkeypatch.setattr(checkpoint_lib, 'CHUNK_BYTES', 16 * 1024)
  state = {'params': {'stack': jnp.ones((4, 64, 128), jnp.float32)},
           'step': jnp.zeros((), jnp.int32)}
  checkpointer = checkpoint_lib.Checkpointer(str(tmp_path), keep=1, use_async=False)
  checkpointer.save(1, state)
  checkpointer.close()
  state_dir = epath.Path(tmp_path) / '1' / 'state'
  with open(state_dir / '_METADATA') as f:
    use_zarr3 = bool(json.load(f).get('use_zarr3', False))
  context = ts.Context({'cache_pool#ocdbt': {'total_bytes_limit': 0}})
  info = ocp.type_handlers.ParamInfo(name='params.stack', parent_dir=state_dir,
                                     use_zarr3=use_zarr3, ts_context=context)
  stored = ts.open(ocp.type_handlers.get_json_tspec_read(info, use_ocdbt=True),
                   context=context).result()
  chunk = stored.chunk_layout.read_chunk.shape
  assert 4 * int(np.prod(chunk)) <= 16 * 1024 < 4 * 4 * 64 * 128
  np.testing.assert_array_equal(stored.read().result(), np.ones((4, 64, 128), np.float32))
