"""Parity with the transformers reference implementations (random weights, float32).

Our ViT with CLIP's weights gives CLIPVisionModel's hidden states, and our decoder with
Llama's weights gives LlamaForCausalLM's logits: max abs diff at most 1e-4 (never
loosened), for GQA and non-GQA shapes, with scan_layers on and off.
"""

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')

from experiments import tiny  # noqa: E402
from mm1_jax.export import hf_clip, hf_llama  # noqa: E402
from mm1_jax.models.decoder import Decoder  # noqa: E402
from mm1_jax.models.vit import ViT, normalize_pixels  # noqa: E402

TOLERANCE = 1e-4


def _torch_state(module) -> dict:
  return {k: v.detach().numpy() for k, v in module.state_dict().items()}


def _abstract_params(build):
  return nnx.to_pure_dict(nnx.state(nnx.eval_shape(build), nnx.Param))


def _build_with(build, params):
  model = nnx.eval_shape(build)
  graphdef, state = nnx.split(model)
  nnx.replace_by_pure_dict(state, jax.tree.map(jnp.asarray, params))
  return nnx.merge(graphdef, state)


# ---------------------------------------------------------------- CLIP vision tower

@pytest.fixture(scope='module')
def clip():
  torch.manual_seed(0)
  config = transformers.CLIPVisionConfig(
      hidden_size=64, intermediate_size=128, num_hidden_layers=3, num_attention_heads=4,
      image_size=32, patch_size=8, hidden_act='quick_gelu', layer_norm_eps=1e-5)
  model = transformers.CLIPVisionModel(config).eval()
  images = np.random.default_rng(0).integers(0, 256, (2, 32, 32, 3), np.uint8)
  pixels = torch.from_numpy(np.array(normalize_pixels(jnp.asarray(images)))).permute(0, 3, 1, 2)
  with torch.no_grad():
    out = model(pixel_values=pixels, output_hidden_states=True)
    tower = getattr(model, "vision_model", model)
    post = tower.post_layernorm(out.last_hidden_state)
  return dict(config=config.to_dict(), tensors=_torch_state(model), images=images,
              hidden=[h.numpy() for h in out.hidden_states], post=post.numpy(),
              pooled=out.pooler_output.numpy())


def _vit_config(**overrides):
  c = tiny.get_config().model.vit
  c.update(dict(depth=3, activation='quick_gelu', use_class_token=True), **overrides)
  return c


@pytest.mark.parametrize('feature_layer, final_norm, drop_class_token, scan_layers', [
    (-2, False, True, False),  # LLaVA / MM1: penultimate hidden state, no class token
    (-2, False, True, True),   # the same with scanned blocks
    (-1, False, False, False),  # last hidden state
    (-1, True, False, True),   # with CLIP's post_layernorm
])
def test_vit_matches_clip_vision_model(clip, feature_layer, final_norm, drop_class_token,
                                       scan_layers):
  config = _vit_config(feature_layer=feature_layer, final_norm=final_norm,
                       drop_class_token=drop_class_token, scan_layers=scan_layers)
  build = lambda: ViT(config, rngs=nnx.Rngs(0))
  params = hf_clip.convert(config, clip['config'], clip['tensors'], _abstract_params(build))
  ours = np.asarray(jax.jit(lambda m, x: m(x))(_build_with(build, params), clip['images']))
  expected = clip['post'] if final_norm else clip['hidden'][feature_layer]
  if drop_class_token:
    expected = expected[:, 1:]
  error = float(np.max(np.abs(ours - expected)))
  print(f'ViT vs CLIPVisionModel (feature_layer={feature_layer}, final_norm={final_norm}, '
        f'scan={scan_layers}): max abs diff {error:.2e}')
  assert ours.shape == expected.shape
  assert error <= TOLERANCE
  if final_norm:
    assert float(np.max(np.abs(ours[:, 0] - clip['pooled']))) <= TOLERANCE


def test_clip_shape_mismatch_names_the_parameter(clip):
  config = _vit_config(mlp_dim=96)
  build = lambda: ViT(config, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='model.vit.mlp_dim'):
    hf_clip.convert(config, clip['config'], clip['tensors'], _abstract_params(build))
  tensors = dict(clip['tensors'])
  tensors['encoder.layers.1.mlp.fc1.weight'] = tensors['encoder.layers.1.mlp.fc1.weight'][:96]
  config = _vit_config()
  with pytest.raises(ValueError, match=r'vit\.blocks\.1\.mlp\.up\.kernel'):
    hf_clip.convert(config, clip['config'], tensors, _abstract_params(
        lambda: ViT(config, rngs=nnx.Rngs(0))))


# ---------------------------------------------------------------- Llama decoder

LENGTH = 12


@pytest.fixture(scope='module')
def tokens():
  return np.random.default_rng(1).integers(0, 512, (2, LENGTH)).astype(np.int32)


def _llama(num_kv_heads, tie):
  torch.manual_seed(num_kv_heads)
  config = transformers.LlamaConfig(
      vocab_size=512, hidden_size=64, intermediate_size=96, num_hidden_layers=2,
      num_attention_heads=4, num_key_value_heads=num_kv_heads, rms_norm_eps=1e-5,
      rope_theta=10000.0, tie_word_embeddings=tie, max_position_embeddings=64,
      attention_bias=False, mlp_bias=False, initializer_range=0.2)
  model = transformers.LlamaForCausalLM(config).eval()
  # Random-init norms are all ones; perturb them so that the mapping of every scale counts.
  with torch.no_grad():
    for name, p in model.named_parameters():
      if 'norm' in name:
        p.add_(0.1 * torch.randn_like(p))
  return config, model


@pytest.mark.parametrize('num_kv_heads, tie, scan_layers', [
    (2, False, False),  # GQA, untied, loop
    (2, False, True),   # GQA, scanned
    (4, True, True),    # MHA, tied, scanned
    (4, True, False),   # MHA, tied, loop
])
def test_decoder_matches_llama(tokens, num_kv_heads, tie, scan_layers):
  hf_config, hf_model = _llama(num_kv_heads, tie)
  with torch.no_grad():
    expected = hf_model(torch.from_numpy(tokens).long()).logits.numpy()
  config = tiny.get_config().model.decoder
  config.update(vocab_size=512, d_model=64, d_ff=96, num_layers=2, num_heads=4,
                num_kv_heads=num_kv_heads, tie_embeddings=tie, scan_layers=scan_layers)
  build = lambda: Decoder(config, rngs=nnx.Rngs(0))
  params = hf_llama.convert(config, hf_config.to_dict(), _torch_state(hf_model),
                            _abstract_params(build))
  segments = np.ones_like(tokens)
  positions = np.broadcast_to(np.arange(LENGTH, dtype=np.int32), tokens.shape)
  ours = np.asarray(jax.jit(lambda m, t, s, p: m(m.embed_tokens(t), s, p))(
      _build_with(build, params), tokens, segments, positions))
  error = float(np.max(np.abs(ours - expected)))
  print(f'Decoder vs LlamaForCausalLM (kv_heads={num_kv_heads}, tied={tie}, '
        f'scan={scan_layers}): max abs diff {error:.2e}')
  assert error <= TOLERANCE


def test_llama_config_mismatch_names_the_key():
  hf_config, hf_model = _llama(2, False)
  config = tiny.get_config().model.decoder
  config.update(vocab_size=512, d_model=64, d_ff=96, num_layers=2, num_heads=4,
                num_kv_heads=4, tie_embeddings=False)
  build = lambda: Decoder(config, rngs=nnx.Rngs(0))
  with pytest.raises(ValueError, match='model.decoder.num_kv_heads'):
    hf_llama.convert(config, hf_config.to_dict(), _torch_state(hf_model), _abstract_params(build))
