"""Every term of the FLOP model (mm1_jax.models.flops) against XLA, one module at a time.

What is compared: each module alone is lowered (`jax.jit(...).lower` on abstract shapes:
nothing is compiled, allocated or run) and the FLOPs of the dot operations in its HLO are
summed the way XLA's cost analysis counts a dot, 2 x output elements x contracted size
(`hlo_dot_flops`; the first test checks it against `cost_analysis()` on a program of dots
only). Why dots and not XLA's whole count: `cost_analysis()['flops']` also counts one FLOP
per element of every elementwise op (norms, softmax, masks, activations), which the model
leaves out by convention; at test widths those are 1-4 % of XLA's total, too close to the
2 % bound to tell a wrong term from them. The one non-dot op the model counts, the
C-Abstractor's depthwise convolution (written as shifted products), is added from XLA's
cost analysis of `depthwise_conv3x3` alone.

Each term must match within 2 % (they agree to rounding); the shapes are small, and chosen
so that a missing or doubled piece (a block, the class token, a key/value head, a
connector stage at the wrong resolution) moves the count by more than that.
"""

import math
import re

import jax
import jax.numpy as jnp
import pytest
from flax import nnx

from experiments import tiny
from mm1_jax.models import flops
from mm1_jax.models.attention import Attention, CausalSegments
from mm1_jax.models.connectors import depthwise_conv3x3, make_connector
from mm1_jax.models.decoder import Decoder, DecoderLayer
from mm1_jax.models.mm1 import MM1
from mm1_jax.models.moe import MoE, capacity_of, route
from mm1_jax.models.vit import ViT

S = jax.ShapeDtypeStruct
F32 = jnp.float32

# ------------------------------------------------------------------ XLA's count of dots

_OPERAND_SHAPE = re.compile(r'\w+\[[\d,]*\](\{[\d,]*\})?\s+')


def _dims(type_text: str) -> list[int]:
  return [int(d) for d in re.match(r'\w+\[([\d,]*)\]', type_text).group(1).split(',') if d]


def hlo_dot_flops(hlo_text: str) -> float:
  """FLOPs of the dot ops of an HLO module (2 x output elements x contracted size), each
  computation counted as many times as it is called. Loops and opaque ops are refused:
  their trip counts and contents are not in the text."""
  computations, order, entry = {}, [], None
  for line in hlo_text.splitlines():
    if line and not line.startswith(' ') and line.rstrip().endswith('{'):
      name = line.split()[1] if line.startswith('ENTRY') else line.split()[0]
      order.append(name)
      computations[name] = {'shapes': {}, 'dots': 0.0, 'calls': []}
      entry = name if line.startswith('ENTRY') else entry
      continue
    if not order or ' = ' not in line:
      continue
    target, instruction = line.strip().split(' = ', 1)
    name = target.split()[-1]
    if instruction.startswith('('):  # a tuple type: skip to its closing parenthesis
      depth = 0
      for end, char in enumerate(instruction):
        depth += {'(': 1, ')': -1}.get(char, 0)
        if not depth:
          break
      type_text, rest = instruction[:end + 1], instruction[end + 1:].strip()
    else:
      type_text, rest = instruction.split(' ', 1)
    computation = computations[order[-1]]
    computation['shapes'][name] = None if type_text.startswith('(') else _dims(type_text)
    op = rest.split('(', 1)[0]
    if op in ('while', 'conditional', 'custom-call', 'convolution'):
      raise ValueError(f'cannot count the dots of a {op} ({name}): unroll it')
    computation['calls'] += re.findall(r'(?:to_apply|calls)=([\w.\-]+)', rest)
    if op == 'dot':
      lhs = _OPERAND_SHAPE.sub('', rest[len('dot('):]).split(',')[0].strip()
      lhs_dims = computation['shapes'][lhs]
      contracting = re.search(r'lhs_contracting_dims=\{([\d,]*)\}', rest).group(1)
      contracted = math.prod(lhs_dims[int(d)] for d in contracting.split(',') if d)
      computation['dots'] += 2.0 * math.prod(_dims(type_text)) * contracted
  calls = dict.fromkeys(order, 0)
  calls[entry] = 1
  for name in reversed(order):  # callees are printed before their callers
    for callee in computations[name]['calls']:
      calls[callee] += calls[name]
  return sum(calls[name] * computations[name]['dots'] for name in order)


def dot_flops(fn, *args) -> float:
  return hlo_dot_flops(jax.jit(fn).lower(*args).compiler_ir('hlo').as_hlo_text())


def module_dot_flops(make, call, *args) -> float:
  """Dot FLOPs of `call(module, *args)` for the abstract module `make()` builds."""
  graphdef, state = nnx.split(nnx.eval_shape(make))
  return dot_flops(lambda state, *a: call(nnx.merge(graphdef, state), *a), state, *args)


def depthwise_xla_flops(images: int, side: int, channels: int) -> float:
  """XLA's own count of the depthwise 3x3 convolution (elementwise ops, no dots)."""
  lowered = jax.jit(depthwise_conv3x3).lower(S((images, side, side, channels), F32),
                                             S((3, 3, channels), F32))
  return lowered.cost_analysis()['flops']


def test_dot_counter_is_xla_cost_analysis_of_a_program_of_dots():
  helper = jax.jit(lambda a, b: jnp.einsum('bij,bjk->bik', a, b))  # a called computation

  def program(a, b, c, d):
    x = helper(helper(a, b), b)  # called twice
    return jnp.einsum('bik,kl->bil', x, c), jnp.einsum('bij,hbij->h', a, d)

  args = (S((3, 4, 5), F32), S((3, 5, 5), F32), S((5, 7), F32), S((2, 3, 4, 5), F32))
  xla = jax.jit(program).lower(*args).cost_analysis()['flops']
  assert dot_flops(program, *args) == xla == 2 * (2 * 3 * 4 * 5 * 5 + 3 * 4 * 5 * 7 + 2 * 60)
  # A loop's trip count is not in the text: refused, never undercounted.
  scanned = lambda x: jax.lax.scan(lambda c, _: (c @ c, None), x, length=3)[0]
  with pytest.raises(ValueError, match='while'):
    dot_flops(scanned, S((4, 4), F32))


def within_2_percent(ours: float, xla: float) -> None:
  assert ours == pytest.approx(xla, rel=0.02), f'model {ours:.6g} vs XLA dots {xla:.6g}'


# --------------------------------------------------------------------------------- ViT


def _vit_config(use_class_token: bool):
  vit = tiny.get_config().model.vit
  vit.update(image_size=32, patch_size=8, width=128, depth=4, num_heads=4, mlp_dim=256,
             feature_layer=-2, use_class_token=use_class_token, scan_layers=False)
  return vit


@pytest.mark.parametrize('use_class_token', [True, False])
def test_vit_blocks_and_attention(use_class_token):
  vit = _vit_config(use_class_token)
  images = 2
  xla = module_dot_flops(lambda: ViT(vit, rngs=nnx.Rngs(0)), lambda m, x: m(x),
                         S((images, 32, 32, 3), jnp.uint8))
  # Patch embedding and the 3 blocks that feature_layer -2 runs (of depth 4).
  within_2_percent(images * flops.vit_forward_flops(vit), xla)
  # The attention alone: 16 patches (+ the class token) attend to each other.
  tokens = flops.vit_tokens(vit, 4)
  assert tokens == 16 + use_class_token
  head_dim = vit.width // vit.num_heads
  xla = module_dot_flops(
      lambda: Attention(vit.width, vit.num_heads, use_bias=True, rngs=nnx.Rngs(0)),
      lambda m, x: m(x), S((images, tokens, vit.width), F32))
  ours = (flops.attention_projection_flops(tokens, vit.width, vit.num_heads, vit.num_heads,
                                           head_dim)
          + flops.attention_flops(tokens, tokens, vit.num_heads, head_dim))
  within_2_percent(images * ours, xla)


# --------------------------------------------------------------------------- connectors


@pytest.mark.parametrize('use_class_token', [True, False])
@pytest.mark.parametrize('kind', ['avgpool', 'attnpool', 'c_abstractor'])
def test_connector(kind, use_class_token):
  model = tiny.get_config().model
  model.vit.update(image_size=32, patch_size=8, width=96, use_class_token=use_class_token,
                   drop_class_token=False)
  model.decoder.d_model = 128
  model.connector.update(kind=kind, num_tokens=4, num_heads=4, width=64, depth=2, mlp_depth=2)
  images, grid, side = 3, 4, 2
  patches = grid * grid + use_class_token
  xla = module_dot_flops(lambda: make_connector(model, rngs=nnx.Rngs(0)), lambda m, x: m(x),
                         S((images, patches, model.vit.width), F32))
  if kind == 'attnpool':
    # The learned queries do not depend on the image: XLA projects them once per call.
    xla -= 2 * model.connector.num_tokens * model.decoder.d_model ** 2
  if kind == 'c_abstractor':
    # Its depthwise convolutions, stage 1 on the patch grid and stage 2 on the tokens.
    width, depth = model.connector.width, model.connector.depth
    xla += depth * (depthwise_xla_flops(images, grid, width)
                    + depthwise_xla_flops(images, side, width))
  within_2_percent(images * flops.connector_forward_flops(model), xla)


def test_unknown_connector_kind_is_named():
  model = tiny.get_config().model
  model.connector.kind = 'perceiver'
  with pytest.raises(ValueError, match=r"model\.connector\.kind='perceiver'"):
    flops.connector_forward_flops(model)


# ----------------------------------------------------------------------------- decoder


def _decoder_config(**overrides):
  decoder = tiny.get_config().model.decoder
  decoder.update({**dict(d_model=128, num_heads=8, num_kv_heads=2, d_ff=256, vocab_size=1000,
                        num_layers=2, scan_layers=False), **overrides})
  return decoder


ROWS, LENGTH = 2, 32
TOKENS = S((ROWS, LENGTH), jnp.int32)


def test_decoder_layer_attention_and_mlp_with_grouped_kv_heads():
  decoder = _decoder_config()
  x = S((ROWS, LENGTH, decoder.d_model), F32)
  xla = module_dot_flops(lambda: DecoderLayer(decoder, rngs=nnx.Rngs(0), dtype=F32),
                         lambda m, x, ids: m(x, CausalSegments(ids), ids)[0], x, TOKENS)
  within_2_percent(ROWS * flops.decoder_layer_flops(decoder, LENGTH), xla)
  # The attention alone: 8 query heads, 2 key/value heads, the full causal square.
  head_dim = decoder.d_model // decoder.num_heads
  xla = module_dot_flops(
      lambda: Attention(decoder.d_model, decoder.num_heads, decoder.num_kv_heads,
                        rope_theta=1e4, rngs=nnx.Rngs(0)),
      lambda m, x, ids: m(x, mask=CausalSegments(ids), positions=ids), x, TOKENS)
  ours = (flops.attention_projection_flops(LENGTH, decoder.d_model, decoder.num_heads,
                                           decoder.num_kv_heads, head_dim)
          + flops.attention_flops(LENGTH, LENGTH, decoder.num_heads, head_dim))
  within_2_percent(ROWS * ours, xla)
  assert ROWS * flops.decoder_attention_flops(decoder, LENGTH) == pytest.approx(
      decoder.num_layers * ROWS * flops.attention_flops(LENGTH, LENGTH, 8, head_dim))


@pytest.mark.parametrize('tie_embeddings', [True, False])
def test_lm_head_and_whole_decoder(tie_embeddings):
  decoder = _decoder_config(tie_embeddings=tie_embeddings)
  x = S((ROWS, LENGTH, decoder.d_model), F32)
  make = lambda: Decoder(decoder, rngs=nnx.Rngs(0))
  within_2_percent(ROWS * flops.lm_head_flops(decoder, LENGTH),
                   module_dot_flops(make, lambda m, x: m.logits(x), x))
  # Embeddings in, logits out: every layer and the head (the embedding gather is free).
  xla = module_dot_flops(make, lambda m, x, ids: m(x, ids, ids), x, TOKENS)
  within_2_percent(ROWS * flops.decoder_forward_flops(decoder, LENGTH), xla)


# --------------------------------------------------------------------------------- MoE


def _moe_config(dispatch: str, top_k: int, every: int = 1):
  moe = tiny.get_config().model.moe
  moe.update(num_experts=4, top_k=top_k, every=every, dispatch=dispatch, capacity_factor=1.25)
  return moe


def dispatch_overhead(moe, tokens_per_group: int, groups: int, d_model: int, d_ff: int):
  """What a dispatch executes beyond the model's count (models/flops.py docstring)."""
  tokens, experts, k = tokens_per_group * groups, moe.num_experts, moe.top_k
  if moe.dispatch == 'capacity':
    slots = groups * experts * capacity_of(tokens_per_group, experts, k, moe.capacity_factor)
    # Every slot runs, empty or not; tokens move in and out by one-hot einsums over slots.
    return (flops.swiglu_flops(slots - tokens * k, d_model, d_ff)
            + 2 * flops.matmul_flops(tokens, slots // groups, d_model))
  # XLA:CPU's ragged_dot is a masked dense dot over all experts; then the gate-weighted sum.
  return ((experts - 1) * k * flops.swiglu_flops(tokens, d_model, d_ff)
          + flops.matmul_flops(tokens, k, d_model))


@pytest.mark.parametrize('dispatch, top_k', [
    ('capacity', 1), ('capacity', 2), ('dropless', 1), ('dropless', 2)])
def test_moe_layer_top_k_and_router(dispatch, top_k):
  moe = _moe_config(dispatch, top_k)
  d_model, d_ff = 128, 256
  xla = module_dot_flops(lambda: MoE(d_model, d_ff, moe, rngs=nnx.Rngs(0)),
                         lambda m, x: m(x)[0], S((ROWS, LENGTH, d_model), F32))
  ours = flops.moe_flops(ROWS * LENGTH, d_model, d_ff, moe)
  within_2_percent(ours + dispatch_overhead(moe, LENGTH, ROWS, d_model, d_ff), xla)
  # The router alone (too small a part of the layer for the 2 % above to see).
  x, router = S((ROWS, LENGTH, d_model), F32), S((d_model, 4), F32)
  within_2_percent(flops.router_flops(ROWS * LENGTH, d_model, 4),
                   dot_flops(lambda x, r: route(x, r, top_k, True).weights, x, router))
  assert ours == (top_k * flops.swiglu_flops(ROWS * LENGTH, d_model, d_ff)
                  + flops.router_flops(ROWS * LENGTH, d_model, 4))


def test_moe_decoder_counts_experts_in_every_nth_layer():
  decoder = _decoder_config(num_layers=4)
  moe = _moe_config('dropless', 2, every=2)
  moe.d_ff = 64  # experts narrower than the dense layers' SwiGLU
  x = S((ROWS, LENGTH, decoder.d_model), F32)
  xla = module_dot_flops(lambda: Decoder(decoder, rngs=nnx.Rngs(0), moe_config=moe),
                         lambda m, x, ids: m(x, ids, ids), x, TOKENS)
  overhead = 2 * dispatch_overhead(moe, LENGTH, ROWS, decoder.d_model, 64)  # 2 MoE layers
  within_2_percent(ROWS * flops.decoder_forward_flops(decoder, LENGTH, moe) + overhead, xla)


# ------------------------------------------------------------------------ whole model


def test_mm1_forward_is_the_sum_of_its_terms():
  """ViT (class token dropped after the penultimate block), C-Abstractor, GQA decoder."""
  from experiments import mm1_1b
  config = mm1_1b.get_config('local')
  config.model.vit.scan_layers = config.model.decoder.scan_layers = False
  rows, slots, length, size = 2, 2, 64, config.model.vit.image_size
  config.data.seq_len, config.data.max_images = length, slots
  batch = dict(tokens=S((rows, length), jnp.int32), segment_ids=S((rows, length), jnp.int32),
               positions=S((rows, length), jnp.int32),
               images=S((rows, slots, size, size, 3), jnp.uint8),
               image_valid=S((rows, slots), jnp.bool_))
  xla = module_dot_flops(lambda: MM1(config, rngs=nnx.Rngs(0)), lambda m, b: m(b)[0], batch)
  connector = config.model.connector
  grid, side = size // config.model.vit.patch_size, math.isqrt(connector.num_tokens)
  width = connector.width or config.model.decoder.d_model
  xla += connector.depth * (depthwise_xla_flops(rows * slots, grid, width)
                            + depthwise_xla_flops(rows * slots, side, width))
  # Every term above matches XLA to rounding, so the sum is held tighter than 2 %: any
  # part left out (the connector here is 1 % of the whole) shows.
  ours = rows * flops.forward_flops_per_sequence(config)
  assert ours == pytest.approx(xla, rel=1e-3), f'model {ours:.6g} vs XLA dots {xla:.6g}'


def test_training_step_counts():
  from experiments import mm1_1b
  from mm1_jax.train import flops as train_flops
  config = mm1_1b.get_config()
  rows, slots = config.train.batch_size, config.data.max_images
  forward = flops.forward_flops_per_sequence(config)
  assert flops.model_flops_per_sequence(config) == 3 * forward  # training = 3x forward
  # By default every image slot holds an image; the trainer passes the images it saw.
  full = flops.train_flops_per_step(config)
  assert full == pytest.approx(rows * 3 * forward)
  image = flops.image_forward_flops(config.model)
  assert full - flops.train_flops_per_step(config, num_images=rows * slots - 10) == (
      pytest.approx(3 * 10 * image))
  parts = flops.train_flops_by_part(config)
  assert sum(parts.values()) == pytest.approx(full)
  assert parts['vit'] == pytest.approx(3 * rows * slots * flops.vit_forward_flops(config.model.vit))
  # The trainer's count is this one (mm1_jax.train.flops keeps only the peak side).
  assert train_flops.train_flops_per_step is flops.train_flops_per_step
