"""from_hf: random HF CLIP + Llama directories -> step-0 workdir -> mm1_jax.load -> equal.

The loaded model's image features equal CLIPVisionModel's penultimate hidden state and its
text-only logits equal LlamaForCausalLM's (max abs diff at most 1e-4, float32); a
checkpoint that does not fit the config fails naming the parameter.
"""

import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

import mm1_jax  # noqa: E402
from experiments import tiny  # noqa: E402
from mm1_jax.export import from_hf  # noqa: E402
from mm1_jax.models.vit import normalize_pixels  # noqa: E402

TOLERANCE = 1e-4


def _config(synthetic_root):
  config = tiny.get_config('smoke')
  config.data.root = synthetic_root
  config.data.synthetic = False
  vit = config.model.vit
  vit.update(activation='quick_gelu', use_class_token=True, drop_class_token=True,
             feature_layer=-2, final_norm=False)
  config.model.decoder.num_layers = 2
  return config


@pytest.fixture(scope='module')
def hf_dirs(tmp_path_factory):
  torch.manual_seed(0)
  vision = transformers.CLIPVisionModel(transformers.CLIPVisionConfig(
      hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
      image_size=32, patch_size=8, hidden_act='quick_gelu')).eval()
  llm = transformers.LlamaForCausalLM(transformers.LlamaConfig(
      vocab_size=512, hidden_size=128, intermediate_size=384, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=2, tie_word_embeddings=True,
      rope_theta=10000.0, rms_norm_eps=1e-5, initializer_range=0.2)).eval()
  root = tmp_path_factory.mktemp('hf')
  vision.save_pretrained(root / 'clip')
  llm.save_pretrained(root / 'llama')
  return dict(vision=str(root / 'clip'), llm=str(root / 'llama'), clip=vision, llama=llm)


def test_import_then_load_equals_the_references(hf_dirs, synthetic_root, tmp_path):
  config = _config(synthetic_root)
  params = from_hf.import_params(config, hf_dirs['vision'], hf_dirs['llm'])
  workdir = from_hf.write_workdir(config, params, str(tmp_path / 'run'))
  model = mm1_jax.load(workdir)
  assert model.step == 0

  images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), np.uint8)
  pixels = torch.from_numpy(np.array(normalize_pixels(images))).permute(0, 3, 1, 2)
  tokens = np.random.default_rng(1).integers(5, 512, (2, 10)).astype(np.int32)
  with torch.no_grad():
    hidden = hf_dirs['clip'](pixel_values=pixels, output_hidden_states=True).hidden_states
    logits = hf_dirs['llama'](torch.from_numpy(tokens).long()).logits.numpy()
  features = model.image_features(list(images))
  vit_error = float(np.max(np.abs(features - hidden[-2][:, 1:].numpy())))

  batch = dict(tokens=tokens, segment_ids=np.ones_like(tokens),
               positions=np.broadcast_to(np.arange(10, dtype=np.int32), tokens.shape),
               images=np.zeros((2, 0, 32, 32, 3), np.uint8), image_valid=np.zeros((2, 0), bool))
  llm_error = float(np.max(np.abs(model.forward(batch) - logits)))
  print(f'from_hf: image features max abs diff {vit_error:.2e}, logits {llm_error:.2e}')
  assert vit_error <= TOLERANCE and llm_error <= TOLERANCE


def test_mismatched_checkpoint_names_the_parameter(hf_dirs, synthetic_root):
  config = _config(synthetic_root)
  config.model.decoder.d_ff = 256
  with pytest.raises(ValueError, match='model.decoder.d_ff'):
    from_hf.import_params(config, None, hf_dirs['llm'])
  config = _config(synthetic_root)
  config.model.vit.use_class_token = False
  with pytest.raises(ValueError, match='model.vit.use_class_token'):
    from_hf.import_params(config, hf_dirs['vision'], None)
