"""Every shipped MM1 config parses, validates and has the published decoder size (within
3%; the MoE configs: the published total within 5%), checked on abstract shapes only
(jax.eval_shape: nothing is allocated)."""

import importlib
import math

import jax
import pytest
from flax import nnx

from mm1_jax import config_lib
from mm1_jax.models import param_count
from mm1_jax.models import MM1
from mm1_jax.models.flops import model_flops_per_sequence

TARGETS = {'mm1_1b': 1.2e9, 'mm1_3b': 3e9, 'mm1_7b': 7e9, 'mm1_30b': 30e9}


def _counts(config) -> dict[str, int]:
  """Parameters per part of the abstract MM1 (nothing allocated)."""
  model = nnx.eval_shape(lambda: MM1(config, rngs=nnx.Rngs(0)))
  params = nnx.to_pure_dict(nnx.state(model, nnx.Param))
  return {part: sum(math.prod(x.shape) for x in jax.tree.leaves(tree))
          for part, tree in params.items()}


@pytest.mark.parametrize('name', sorted(TARGETS))
def test_config_size_and_recipe(name):
  module = importlib.import_module(f'experiments.{name}')
  config = module.get_config()
  config_lib.validate(config)
  counts = _counts(config)
  decoder, total = counts['decoder'], sum(counts.values())
  flops = model_flops_per_sequence(config)
  print(f'{name}: ' + ', '.join(f'{k} {v / 1e6:.1f}M' for k, v in counts.items()) +
        f', total {total / 1e9:.3f}B, training FLOPs per sequence {flops:.3e}')
  assert total == param_count(config)
  assert abs(decoder / TARGETS[name] - 1) <= 0.03
  assert config.model.connector.kind == 'c_abstractor'
  assert config.model.connector.num_tokens == 144
  assert config.data.seq_len == 4096 and config.data.max_images == 16
  assert config.train.batch_size == 512
  vit = config.model.vit
  assert (vit.image_size, vit.patch_size) == ((336, 14) if name == 'mm1_1b' else (378, 14))
  # 6 FLOPs per decoder parameter per token is the floor of the estimate.
  assert flops > 6 * (decoder - config.model.decoder.vocab_size * config.model.decoder.d_model
                      ) * config.data.seq_len


# MM1's MoE models: published total parameters, (experts, every), the dense base config.
MOE_TARGETS = {'mm1_3b_moe': (64e9, 64, 2, 'mm1_3b'), 'mm1_7b_moe': (47e9, 32, 4, 'mm1_7b')}


@pytest.mark.parametrize('name', sorted(MOE_TARGETS))
def test_moe_config_size_and_recipe(name):
  target, experts, every, dense_name = MOE_TARGETS[name]
  module = importlib.import_module(f'experiments.{name}')
  config = module.get_config()
  config_lib.validate(config)
  counts = _counts(config)
  total = sum(counts.values())
  flops = model_flops_per_sequence(config)
  print(f'{name}: ' + ', '.join(f'{k} {v / 1e9:.3f}B' for k, v in counts.items()) +
        f', total {total / 1e9:.3f}B, training FLOPs per sequence {flops:.3e}')
  assert abs(total / target - 1) <= 0.05
  assert total == param_count(config)
  moe = config.model.moe
  assert (moe.num_experts, moe.every, moe.top_k) == (experts, every, 2)
  assert (moe.load_balance_weight, moe.z_loss_weight) == (0.01, 0.001)
  assert config.mesh.expert > 1 and experts % config.mesh.expert == 0
  # The dense model it extends: same decoder shape, and (top-2 of wider-than-half experts
  # in 1/every of the layers) more FLOPs, far fewer than all experts would cost.
  dense = importlib.import_module(f'experiments.{dense_name}').get_config()
  assert dense.model.decoder == config.model.decoder
  dense_flops = model_flops_per_sequence(dense)
  assert dense_flops < flops < dense_flops * (1 + experts / every)
  upcycle = module.get_config('upcycle')
  assert upcycle.model.moe.d_ff == 0  # experts as wide as the dense FFN
  config_lib.validate(upcycle)
  config_lib.validate(module.get_config('local'))
  with pytest.raises(ValueError, match='nope'):
    module.get_config('nope')


@pytest.mark.parametrize('name', sorted(TARGETS))
def test_variants_validate(name):
  module = importlib.import_module(f'experiments.{name}')
  config_lib.validate(module.get_config('local'))
  highres = module.get_config('highres')
  config_lib.validate(highres)
  assert highres.model.vit.image_size == 672
  with pytest.raises(ValueError, match='nope'):
    module.get_config('nope')


@pytest.mark.parametrize('key, value', [
    ('model.connector.num_heads', 3), ('model.connector.depth', 0),
    ('model.connector.width', -1), ('model.connector.mlp_depth', 0)])
def test_connector_and_vit_keys_are_checked(key, value):
  from experiments import mm1_1b
  config = mm1_1b.get_config('local')
  if key == 'model.connector.num_heads':
    config.model.connector.kind = 'attnpool'
  section, _, leaf = key.rpartition('.')
  target = config
  for part in section.split('.'):
    target = target[part]
  target[leaf] = value
  with pytest.raises(config_lib.ConfigError, match=key.replace('.', r'\.')):
    config_lib.validate(config)
