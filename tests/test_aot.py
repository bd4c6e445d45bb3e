"""Ahead-of-time compilation for TPU topologies (mm1_jax.aot), on this CPU host.

Topology names are checked everywhere; the compilations need libtpu (the `tpu` extra)
and are skipped without it. Each compiles the tiny config for a v5e 2x2 slice (4 chips).
"""

import dataclasses
import json
import subprocess
import sys

import pytest

from mm1_jax.models import flops as model_flops
from mm1_jax.parallel import tpu_topology

needs_libtpu = pytest.mark.skipif(
    not tpu_topology.libtpu_available(),
    reason="libtpu is not installed (pip install -e '.[tpu]'): TPU compilation is unavailable")


@pytest.mark.parametrize('name, chip, shape', [
    ('v5p-512', 'v5p', (4, 8, 8)),   # v5p-N counts TensorCores: 256 chips
    ('v5p-8', 'v5p', (2, 2, 1)),
    ('v5p-128', 'v5p', (4, 4, 4)),
    ('v4-32', 'v4', (2, 2, 4)),
    ('v5e-256', 'v5e', (16, 16)),    # v5e-N counts chips
    ('v5litepod-4', 'v5e', (2, 2)),
    ('v6e-8', 'v6e', (2, 4)),
    ('v5p:2x4x4', 'v5p', (2, 4, 4)),
])
def test_topology_names(name, chip, shape):
  topology = tpu_topology.parse(name)
  assert topology.chip.name == chip and topology.shape == shape


@pytest.mark.parametrize('name, message', [
    ('v9-8', 'unknown TPU generation'),
    ('v5p-7', 'must be even'),
    ('v5e-12', 'powers of two'),
    ('v5e:2x2x2', '2 positive axes'),
    ('tpu', 'accelerator type'),
])
def test_bad_topology_names(name, message):
  with pytest.raises(ValueError, match=message):
    tpu_topology.parse(name)


def tiny_config(**mesh):
  from experiments import tiny
  config = tiny.get_config()
  config.mesh.update({**dict(data=1, fsdp=1, tensor=1, expert=1), **mesh})
  return config


def analyse(config, step='train', **kwargs):
  from mm1_jax.aot import report
  return report.analyse(config, config_name='tiny', topology=tpu_topology.parse('v5e-4'),
                        step=step, **kwargs)


@pytest.fixture(scope='module')
def train_report():
  return analyse(tiny_config(data=2, fsdp=2))


@needs_libtpu
def test_train_step_compiles_with_data_and_fsdp(train_report):
  r = train_report
  assert r.chips == 4 and r.mesh == dict(data=2, fsdp=2, tensor=1, expert=1)
  m = r.memory
  assert m.total == m.arguments + m.outputs - m.aliased + m.temporaries + m.generated_code
  # The state is donated: its outputs alias its arguments.
  assert 0 < m.aliased <= min(m.arguments, m.outputs)
  assert r.fits and m.needed <= r.hbm_bytes == 16 * 2**30
  assert r.cost['flops'] > 0 and r.estimated_seconds > 0
  assert 0 < r.estimated_mfu < 1
  # What XLA counts for the 4 chips is the model's FLOPs (mm1_jax.models.flops) and a
  # little more (norms, softmax, the optimizer).
  assert 1 <= r.flops_coverage < 1.2
  # Those FLOPs at peak bound the time from below; the cost model's time is above them.
  assert r.flops_bound_seconds == pytest.approx(
      r.cost['flops'] / tpu_topology.CHIPS['v5e'].peak_bf16_flops)
  assert r.flops_bound_seconds <= r.estimated_seconds
  # fsdp shards the state: each chip holds about half of the float32 parameters and moments.
  state_bytes = 3 * 4 * r.num_params
  assert state_bytes / 2 * 0.9 < m.arguments < state_bytes * 0.75


@needs_libtpu
def test_config_that_cannot_fit_is_reported_as_not_fitting(train_report):
  # The same program against a smaller HBM ...
  small = dataclasses.replace(train_report, hbm_bytes=train_report.memory.needed - 1)
  assert not small.fits and 'GiB of HBM' in small.error and small.as_dict()['fits'] is False
  # ... and a KV cache beyond a v5e's 16 GiB: 2**18 rows x 4 layers x 128 positions x
  # 2 kv heads x 32 x 2 (k and v) float32 values = 64 GiB, 16 GiB on each of 4 chips.
  config = tiny_config(data=4)
  config.eval.batch_size = 2 ** 18
  huge = analyse(config, step='decode')
  assert not huge.fits and huge.error
  assert huge.memory is None or huge.memory.needed > huge.hbm_bytes


@needs_libtpu
@pytest.mark.parametrize('mesh, message', [
    (dict(data=3), r'config.mesh .*multiply to 3, but there are 4 devices'),
    (dict(data=-1, tensor=3), r'config.mesh .*fixed sizes multiply to 3'),
])
def test_mesh_that_does_not_divide_the_chips(mesh, message):
  with pytest.raises(ValueError, match=message):
    analyse(tiny_config(**mesh))


@needs_libtpu
def test_batch_that_does_not_divide_the_mesh():
  config = tiny_config(data=4)
  config.train.batch_size = 6
  with pytest.raises(ValueError, match='config.train.batch_size: 6 rows'):
    analyse(config)


@needs_libtpu
def test_decode_step_compiles_and_scanned_layers_are_costed_as_unrolled():
  scanned = tiny_config(data=2, tensor=2)
  scanned.model.decoder.scan_layers = True
  unrolled = tiny_config(data=2, tensor=2)
  report = analyse(scanned, step='decode')
  reference = analyse(unrolled, step='decode', correct_loops=False)
  assert report.fits and report.memory.aliased > 0  # the cache is donated
  # XLA counts a loop body once: the raw figure is far below the unrolled program's, the
  # corrected one matches it.
  layers = scanned.model.decoder.num_layers
  assert report.cost['flops'] < reference.cost['flops'] * 2 / layers
  assert report.cost_unrolled['flops'] == pytest.approx(reference.cost['flops'], rel=0.02)
  # The probes it was extrapolated from: one and two layers, unrolled.
  assert [p['decoder_layers'] for p in report.cost_probes] == [1, 2]
  one, two = (p['flops'] for p in report.cost_probes)
  assert report.cost_unrolled['flops'] == pytest.approx(one + (layers - 1) * (two - one))


@needs_libtpu
def test_command_line_json_and_exit_status(tmp_path):
  command = [sys.executable, '-m', 'mm1_jax.aot', '--config=experiments/tiny.py',
             '--topology=v5e-4', '--step=decode', '--json', '--config.mesh.data=4',
             '--config.model.decoder.num_layers=1']
  done = subprocess.run(command, capture_output=True, text=True, timeout=600)
  assert done.returncode == 0, done.stderr[-2000:]
  report = json.loads(done.stdout)
  assert report['fits'] and report['chips'] == 4 and report['mesh']['data'] == 4
  memory = report['memory_bytes_per_chip']
  assert memory['total'] == (memory['arguments'] + memory['outputs'] - memory['aliased']
                             + memory['temporaries'] + memory['generated_code'])
  bad = subprocess.run(command[:-2] + ['--config.mesh.data=3'], capture_output=True, text=True,
                       timeout=600)
  assert bad.returncode == 2 and 'config.mesh' in bad.stderr


@needs_libtpu
@pytest.mark.parametrize('dispatch', ['capacity', 'dropless'])
def test_moe_train_step_compiles_with_expert_parallelism(dispatch):
  from experiments import tiny_moe
  config = tiny_moe.get_config()
  config.model.decoder.num_layers = 2  # one dense and one MoE layer: all the program's parts
  config.model.moe.dispatch = dispatch
  config.mesh.update(data=1, fsdp=2, tensor=1, expert=2)
  report = analyse(config, correct_loops=False)
  assert report.fits and report.mesh['expert'] == 2
  m = report.memory
  assert m.total == m.arguments + m.outputs - m.aliased + m.temporaries + m.generated_code
  # The 8 experts' weights are split over expert x fsdp: each chip holds about a quarter.
  expert_state = 3 * 4 * 3 * 8 * config.model.decoder.d_model * 384
  assert m.arguments < 3 * 4 * report.num_params - expert_state * 3 / 4 * 0.9


def test_cost_probes_unroll_one_micro_batch():
  from experiments import tiny_moe
  from mm1_jax.aot import report
  from mm1_jax.models.vit import num_blocks
  config = tiny_moe.get_config()
  config.model.decoder.scan_layers = True
  config.train.update(batch_size=8, grad_accum=4)
  every = config.model.moe.every
  probe = report._probe_config(config, decoder_units=2, vit_blocks=None)
  # Two repeating units of the decoder (dense and MoE layers), unrolled; the ViT as it is.
  assert probe.model.decoder.num_layers == 2 * every and not probe.model.decoder.scan_layers
  assert probe.model.vit.to_dict() == config.model.vit.to_dict()
  # One micro-batch: the estimate multiplies by grad_accum.
  assert (probe.train.batch_size, probe.train.grad_accum) == (2, 1)
  blocks = report._probe_config(config, decoder_units=None, vit_blocks=2)
  assert blocks.model.decoder.num_layers == config.model.decoder.num_layers
  vit = blocks.model.vit
  assert num_blocks(vit.depth, vit.feature_layer) == 2 and not vit.scan_layers


@needs_libtpu
def test_splash_attention_is_costed_at_peak(train_report):
  from experiments import tiny
  from mm1_jax.aot import report
  config = tiny.get_config()
  assert report.opaque_flops(config, 'train') == 0  # XLA attention: the compiler counts it
  config.model.decoder.attention = 'splash'
  assert report.opaque_flops(config, 'decode') == 0  # decoding never runs splash
  opaque = report.opaque_flops(config, 'train')
  # Splash runs the decoder's only FLOPs quadratic in length: f(2L) - 2 f(L) is twice them.
  def forward(length):
    return model_flops.decoder_forward_flops(config.model.decoder, length, config.model.moe)
  length = config.data.seq_len
  quadratic = (forward(2 * length) - 2 * forward(length)) / 2
  assert opaque == pytest.approx(3 * quadratic * config.train.batch_size, rel=1e-9)
  with_splash = dataclasses.replace(train_report, opaque_flops=opaque)
  seconds = opaque / (train_report.chips * train_report.peak_flops_per_chip)
  assert with_splash.estimated_seconds == pytest.approx(train_report.estimated_seconds + seconds)
  assert with_splash.flops_coverage == pytest.approx(
      train_report.flops_coverage + opaque / train_report.model_flops)
