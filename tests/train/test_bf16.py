"""bfloat16 training (`train.dtype='bfloat16'`, every pod config's setting): the model's
matrix products run in bfloat16 while parameters and optimizer state stay float32.

Checked on the jaxpr of the whole train step (tracing only, nothing is compiled), for the
ViT, each connector kind, the dense decoder and the MoE decoder under both dispatches:
  * every matrix product (dot_general, ragged_dot) of the model has a bfloat16 operand,
    and each part has bfloat16 x bfloat16 products. A part that ignored the dtype would
    multiply float32 x float32 (jnp promotes a mixed pair to float32 before the product).
    Float32 x bfloat16 pairs are the backward passes of the products the model
    accumulates in float32 on purpose (attention scores, logits).
  * the router and the routing tables (functions in FLOAT32_BY_DESIGN) are float32 on
    purpose (top-k over bfloat16 probabilities is noisy).
  * the step returns float32 parameters and optimizer state.
That the bfloat16 loss tracks the float32 one over a few steps is in test_step.py, which
holds the compiled float32 step already.
"""

import functools

import jax
import jax.numpy as jnp
import ml_collections
import pytest
from jax.extend import core

from mm1_jax.parallel import mesh as mesh_lib
from mm1_jax.train import optimizer as optimizer_lib
from mm1_jax.train import state as state_lib
from mm1_jax.train import step as step_lib

MATMULS = ('dot_general', 'ragged_dot', 'ragged_dot_general', 'conv_general_dilated')
# mm1_jax/models functions whose products are float32 by design: the MoE router.
FLOAT32_BY_DESIGN = ('route', 'capacity_dispatch')
# Which part of the model a product belongs to: the first of these files on its stack.
PARTS = (('moe', 'mm1_jax/models/moe.py'), ('vit', 'mm1_jax/models/vit.py'),
         ('connector', 'mm1_jax/models/connectors.py'),
         ('decoder', 'mm1_jax/models/decoder.py'))


def _config(moe: str | None, connector: str, dtype: str):
  from experiments import tiny, tiny_moe
  config = (tiny_moe if moe else tiny).get_config('smoke')
  if moe:
    config.model.moe.dispatch = moe
  config.model.connector.kind = connector
  config.train.dtype = dtype
  return config


def _abstract_batch(config):
  rows, length = config.train.batch_size, config.data.seq_len
  images, side = config.data.max_images, config.model.vit.image_size
  ints = lambda *shape: jax.ShapeDtypeStruct(shape, jnp.int32)
  return dict(tokens=ints(rows, length), targets=ints(rows, length),
              loss_mask=jax.ShapeDtypeStruct((rows, length), jnp.float32),
              segment_ids=ints(rows, length), positions=ints(rows, length),
              images=jax.ShapeDtypeStruct((rows, images, side, side, 3), jnp.uint8),
              image_valid=jax.ShapeDtypeStruct((rows, images), jnp.bool_),
              source_id=ints(rows))


def _step_jaxpr(config):
  """The train step's ClosedJaxpr on one device (traced, not compiled)."""
  sizes = ml_collections.ConfigDict(dict(data=1, fsdp=1, tensor=1, expert=1))
  mesh = mesh_lib.make_mesh(sizes, devices=jax.devices()[:1])
  tx = optimizer_lib.make_optimizer(config, optimizer_lib.resolve_settings(config, 1))
  layout = state_lib.make_layout(config, mesh, tx)
  step = functools.partial(step_lib.train_step, graphdef=layout.graphdef, tx=tx,
                           num_sources=3)
  with jax.set_mesh(mesh):
    return jax.make_jaxpr(step, return_shape=True)(layout.abstract, _abstract_batch(config))


def _equations(jaxpr):
  """Every equation of `jaxpr` and of the jaxprs nested in it (scan, remat, pjit...)."""
  for eqn in jaxpr.eqns:
    yield eqn
    for value in eqn.params.values():
      for item in value if isinstance(value, (list, tuple)) else (value,):
        if isinstance(item, core.ClosedJaxpr):
          yield from _equations(item.jaxpr)
        elif isinstance(item, core.Jaxpr):
          yield from _equations(item)


def _model_frames(eqn):
  frames = eqn.source_info.traceback.frames if eqn.source_info.traceback else []
  return [f for f in frames if 'mm1_jax/models/' in f.file_name]


def matmul_dtypes(jaxpr) -> dict[str, list[tuple[str, str, str]]]:
  """{part: [(operand dtypes 'a x b', function, file:line)]} of the model's products."""
  found = {}
  for eqn in _equations(jaxpr.jaxpr):
    frames = _model_frames(eqn)
    if eqn.primitive.name not in MATMULS or not frames:
      continue
    if any(f.function_name in FLOAT32_BY_DESIGN for f in frames):
      continue
    files = [f.file_name for f in frames]
    part = next(name for name, file in PARTS + (('mm1', 'mm1_jax/models/'),)
                if any(file in f for f in files))
    innermost = frames[0]
    found.setdefault(part, []).append((
        ' x '.join(str(v.aval.dtype) for v in eqn.invars[:2]), innermost.function_name,
        f"{innermost.file_name.split('mm1_jax/models/')[1]}:{innermost.line_num}"))
  return found


# (MoE dispatch or None for a dense decoder, connector): each part of the model at least once.
VARIANTS = [(None, 'avgpool'), ('capacity', 'attnpool'), ('dropless', 'c_abstractor')]


@pytest.fixture(scope='module', params=VARIANTS, ids=lambda v: f'{v[0] or "dense"}-{v[1]}')
def bf16_step(request):
  moe, connector = request.param
  config = _config(moe, connector, 'bfloat16')
  return config, _step_jaxpr(config)


def test_every_model_product_is_bfloat16(bf16_step):
  config, (jaxpr, _) = bf16_step
  found = matmul_dtypes(jaxpr)
  parts = {'vit', 'connector', 'decoder'} | ({'moe'} if config.model.moe.num_experts else set())
  assert parts <= set(found), sorted(found)
  for part, products in found.items():
    float32 = [p for p in products if p[0] == 'float32 x float32']
    assert not float32, f'{part}: float32 products under bfloat16: {sorted(set(float32))}'
    assert any(p[0] == 'bfloat16 x bfloat16' for p in products), part


def test_parameters_and_optimizer_state_stay_float32(bf16_step):
  _, (_, (new_state, _)) = bf16_step
  floats = [x.dtype for part in ('params', 'opt_state')
            for x in jax.tree.leaves(new_state[part]) if jnp.issubdtype(x.dtype, jnp.floating)]
  assert floats and all(d == jnp.float32 for d in floats), set(floats)


def test_float32_products_are_seen_under_float32():
  """The walk finds the products it judges: under float32 they are all float32 x float32."""
  jaxpr, _ = _step_jaxpr(_config(None, 'avgpool', 'float32'))
  found = matmul_dtypes(jaxpr)
  assert {'vit', 'connector', 'decoder'} <= set(found)
  assert {p[0] for products in found.values() for p in products} == {'float32 x float32'}
