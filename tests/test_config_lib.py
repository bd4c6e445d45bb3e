"""Start-up validation names the config key that is wrong."""

import os

import pytest

from experiments import tiny
from mm1_jax import config_lib


def test_tiny_config_is_valid():
  config_lib.validate(tiny.get_config())
  config_lib.validate(tiny.get_config('smoke'))


def test_unknown_variant_is_named():
  with pytest.raises(ValueError, match='nope'):
    tiny.get_config('nope')


@pytest.mark.parametrize('key, value, named', [
    ('model.connector.kind', 'qformer', 'config.model.connector.kind'),
    ('model.connector.num_tokens', 5, 'config.model.connector.num_tokens'),
    ('model.connector.num_tokens', 64, 'config.model.connector.num_tokens'),
    ('model.decoder.num_kv_heads', 3, 'config.model.decoder.num_kv_heads'),
    ('model.vit.patch_size', 5, 'config.model.vit.image_size'),
    ('train.on_nonfinite', 'ignore', 'config.train.on_nonfinite'),
    ('train.optimizer.lr', -1.0, 'config.train.optimizer.lr'),
    ('train.optimizer.lr', 'fast', 'config.train.optimizer.lr'),
    ('train.grad_accum', 3, 'config.train.grad_accum'),
    ('train.dtype', 'float16', 'config.train.dtype'),
    ('data.seq_len', 0, 'config.data.seq_len'),
    ('data.packing', 'tight', 'config.data.packing'),
    ('data.min_piece_tokens', 0, 'config.data.min_piece_tokens'),
    ('mesh.fsdp', 0, 'config.mesh.fsdp'),
])
def test_bad_value_names_its_key(key, value, named):
  config = tiny.get_config()
  section, _, leaf = key.rpartition('.')
  target = config
  for part in section.split('.'):
    target = target[part]
  target[leaf] = value
  with pytest.raises(config_lib.ConfigError, match=named.replace('.', r'\.')):
    config_lib.validate(config)


def test_weights_must_name_known_sources():
  config = tiny.get_config()
  config.data.weights.pictures = 0.5
  with pytest.raises(config_lib.ConfigError, match=r'config\.data\.weights\.pictures'):
    config_lib.validate(config)


def test_all_zero_weights_are_rejected():
  config = tiny.get_config()
  for name in config.data.weights:
    config.data.weights[name] = 0.0
  with pytest.raises(config_lib.ConfigError, match=r'config\.data\.weights'):
    config_lib.validate(config)


def test_unknown_key_is_rejected_by_the_locked_config():
  config = tiny.get_config()
  config.lock()
  with pytest.raises(AttributeError, match='learning_rate'):
    config.train.learning_rate = 0.1


def test_moe_configs_are_valid():
  from experiments import tiny_moe
  config_lib.validate(tiny_moe.get_config())
  config_lib.validate(tiny_moe.get_config('smoke'))


@pytest.mark.parametrize('key, value, named', [
    ('model.moe.top_k', 9, 'config.model.moe.top_k'),  # 8 experts
    ('model.moe.top_k', 0, 'config.model.moe.top_k'),
    ('model.moe.every', 0, 'config.model.moe.every'),
    ('model.moe.every', 3, 'config.model.moe.every'),  # 4 layers
    ('model.moe.dispatch', 'sinkhorn', 'config.model.moe.dispatch'),
    ('model.moe.capacity_factor', 0.0, 'config.model.moe.capacity_factor'),
    ('model.moe.num_experts', -2, 'config.model.moe.num_experts'),
    ('model.moe.load_balance_weight', -0.1, 'config.model.moe.load_balance_weight'),
    ('model.moe.d_ff', -1, 'config.model.moe.d_ff'),
    ('mesh.expert', 3, 'config.mesh.expert'),  # does not divide 8 experts
])
def test_bad_moe_value_names_its_key(key, value, named):
  from experiments import tiny_moe
  config = tiny_moe.get_config()
  section, _, leaf = key.rpartition('.')
  target = config
  for part in section.split('.'):
    target = target[part]
  target[leaf] = value
  with pytest.raises(config_lib.ConfigError, match=named.replace('.', r'\.')):
    config_lib.validate(config)


@pytest.mark.parametrize('root', ['', '  '])
def test_empty_data_root_is_rejected_when_the_synthetic_world_goes_there(root):
  config = tiny.get_config()
  config.data.root = root
  with pytest.raises(config_lib.ConfigError, match=r'config\.data\.root: is empty'):
    config_lib.validate(config)
  config.data.synthetic = False  # pod configs: data.root comes from the command line
  config_lib.validate(config)


def _real_data_config(synthetic_root):
  config = tiny.get_config('smoke')
  config.data.root, config.data.synthetic = synthetic_root, False
  return config


def test_check_data_accepts_the_synthetic_world(synthetic_root):
  config_lib.check_data(_real_data_config(synthetic_root))


def test_check_data_empty_root_with_relative_paths(synthetic_root):
  config = _real_data_config(synthetic_root)
  config.data.root = ''
  with pytest.raises(config_lib.ConfigError,
                     match=r"config\.data\.root: is empty.*config\.data\.sources\.captions\.path"):
    config_lib.check_data(config)
  for name in config.data.sources:  # absolute paths need no root
    config.data.sources[name].path = os.path.join(synthetic_root, name)
  config.data.tokenizer = os.path.join(synthetic_root, 'tokenizer', 'spm.model')
  config_lib.check_data(config)


@pytest.mark.parametrize('key, value, named', [
    ('kind', 'interleaved', r'config\.data\.sources\.captions\.kind: .*of kind captions'),
    ('path', 'nowhere', r'config\.data\.sources\.captions\.path: directory .*nowhere'),
    ('path', 'tokenizer', r'config\.data\.sources\.captions\.path: No complete captions'),
])
def test_check_data_names_the_source_key(synthetic_root, key, value, named):
  config = _real_data_config(synthetic_root)
  config.data.sources.captions[key] = value
  with pytest.raises(config_lib.ConfigError, match=named):
    config_lib.check_data(config)
  config.data.weights.captions = 0.0  # a source that is not read is not checked
  config_lib.check_data(config)


def test_check_data_missing_root(tmp_path):
  config = tiny.get_config()
  config.data.root, config.data.synthetic = str(tmp_path / 'missing'), False
  with pytest.raises(config_lib.ConfigError, match=r'config\.data\.root: directory .*missing'):
    config_lib.check_data(config, sources=False)
