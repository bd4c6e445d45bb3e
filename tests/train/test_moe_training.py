"""Sparse upcycling and MoE training end to end: a dense run's checkpoint becomes step 0 of
a tiny_moe run that computes the dense function exactly, and training from it lowers the
loss while logging the MoE metrics."""

import json
import os

import jax
import numpy as np
import pytest
from flax import nnx

from experiments import tiny, tiny_moe
from mm1_jax import api
from mm1_jax.eval.evaluator import module_of
from mm1_jax.export import from_hf
from mm1_jax.train import state as state_lib
from mm1_jax.train import logging_lib, trainer, upcycle

pytestmark = pytest.mark.slow

TRAIN_STEPS = 16


def _on_world(config, synthetic_root):
  config.data.root = synthetic_root
  config.data.synthetic = False
  config.log.tensorboard = False
  return config


def _dense_config(synthetic_root):
  config = _on_world(tiny.get_config('smoke'), synthetic_root)
  config.model.decoder.scan_layers = True  # the dense run stacks its layers, the MoE one not
  return config


def _moe_config(synthetic_root):
  config = _on_world(tiny_moe.get_config('smoke'), synthetic_root)
  config.train.steps = TRAIN_STEPS
  config.checkpoint.every = 0
  return config


@pytest.fixture(scope='module')
def upcycled(tmp_path_factory, synthetic_root):
  """(dense workdir, MoE workdir, upcycle summary): a randomly initialised dense run
  written at step 0, upcycled into tiny_moe:smoke."""
  root = tmp_path_factory.mktemp('upcycle')
  dense_config = _dense_config(synthetic_root)
  model = state_lib.build_model(dense_config, seed=3)
  params = jax.tree.map(np.asarray, nnx.to_pure_dict(nnx.state(model, nnx.Param)))
  dense_dir = from_hf.write_workdir(dense_config, params, str(root / 'dense'))
  summary = upcycle.upcycle(dense_dir, _moe_config(synthetic_root), str(root / 'moe'))
  return dense_dir, summary['workdir'], summary


def _batch(rows=4, length=32):
  rng = np.random.default_rng(0)
  tokens = rng.integers(5, 512, (rows, length)).astype(np.int32)
  tokens[:, 3:7] = 4  # an image run
  return dict(tokens=tokens, segment_ids=np.ones((rows, length), np.int32),
              positions=np.broadcast_to(np.arange(length, dtype=np.int32), (rows, length)),
              images=rng.integers(0, 256, (rows, 1, 32, 32, 3)).astype(np.uint8),
              image_valid=np.ones((rows, 1), bool))


def test_upcycled_moe_computes_the_dense_function(upcycled):
  dense_dir, moe_dir, summary = upcycled
  assert summary['dense_step'] == 0 and summary['num_experts'] == 8
  dense, moe = api.load(dense_dir), api.load(moe_dir)
  assert moe.step == 0 and moe.config.model.moe.num_experts == 8
  moe_params = nnx.to_pure_dict(nnx.state(module_of(moe), nnx.Param))
  dense_layers = nnx.to_pure_dict(nnx.state(module_of(dense), nnx.Param))['decoder']['layers']
  layer1 = moe_params['decoder']['layers'][1]['mlp']
  for name in ('gate', 'up', 'down'):  # every expert a copy of dense layer 1's SwiGLU
    for expert in range(8):
      np.testing.assert_array_equal(layer1[name][expert], dense_layers['mlp'][name]['kernel'][1])
  assert float(np.std(layer1['router'])) > 0  # fresh, not copied
  # Top-2 renormalised gates over identical experts: the dense function, when no
  # assignment drops (capacity = a whole row).
  wide = moe.config.copy_and_resolve_references()
  wide.model.moe.capacity_factor = 4.0
  model = state_lib.build_model(wide, seed=0)
  nnx.update(model, moe_params)
  batch = _batch()
  logits, aux = nnx.jit(lambda m, b: m(b))(model, batch)
  assert float(aux['moe/dropped_fraction']) == 0.0
  np.testing.assert_allclose(logits, dense.forward(batch), atol=5e-5)


def test_mismatched_shapes_name_the_key_or_parameter(upcycled, synthetic_root):
  dense_dir, _, _ = upcycled
  dense_config, dense_params, _ = upcycle.read_dense(dense_dir)
  narrow = _moe_config(synthetic_root)
  narrow.model.moe.d_ff = 256
  with pytest.raises(upcycle.UpcycleError, match=r'model\.moe\.d_ff'):
    upcycle.upcycle_params(dense_params, dense_config, narrow)
  other_vit = _moe_config(synthetic_root)
  other_vit.model.vit.mlp_dim = 96
  with pytest.raises(upcycle.UpcycleError, match='vit/blocks/0/mlp/down/kernel'):
    upcycle.upcycle_params(dense_params, dense_config, other_vit)


def test_training_from_the_upcycled_checkpoint_lowers_the_loss(upcycled, synthetic_root):
  _, moe_dir, _ = upcycled
  config = _moe_config(synthetic_root)
  config.mesh.update(data=-1, expert=2)  # experts sharded: 4 per shard, rows over all 8
  summary = trainer.train(config, moe_dir, show_progress=False)
  assert summary.start_step == 0 and summary.steps == TRAIN_STEPS  # resumed checkpoint 0
  records = [r for r in logging_lib.read_steps(moe_dir).values() if 'loss' in r]
  first, last = records[0], records[-1]
  print('tiny_moe from upcycled dense: ' + '; '.join(
      f"step {r['step']} loss {r['loss']:.3f} load max/min {r['moe/expert_load_max']:.2f}/"
      f"{r['moe/expert_load_min']:.2f} dropped {r['moe/dropped_fraction']:.3f}"
      for r in (first, last)))
  assert last['loss'] < first['loss'] - 0.5
  for record in records:
    assert record['moe/expert_load_max'] >= 1.0 >= record['moe/expert_load_min'] >= 0.0
    assert 0.0 <= record['moe/dropped_fraction'] < 1.0
    assert record['moe/load_balance_loss'] > 0 and record['moe/router_z_loss'] > 0
