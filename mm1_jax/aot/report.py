"""Compile a program for a TPU topology and read what XLA says about it, per chip.

Memory (`compiled.memory_analysis()`, bytes per chip): arguments, outputs, the part of
the outputs aliased to (donated) arguments, temporaries and generated code;
    total = arguments + outputs - aliased + temporaries + generated code.
The TPU compiler also reports its own peak of live buffers; a program fits when that peak
(or, without one, the total) is within the chip's HBM. A program that cannot fit at all
stops the compiler; that is reported as not fitting, with the compiler's message.

Cost (`compiled.cost_analysis()`, per chip): FLOPs, bytes accessed, and the TPU cost
model's `optimal_seconds`. XLA counts the body of a loop once, whatever its trip count,
and the TPU compiler makes loops of its own (windowed einsums over fsdp shards). When the
program has loops, the cost comes from probes compiled without windowed einsums, with
each scanned stack (decoder layers, ViT blocks) unrolled at one and at two layers,
extrapolated linearly to the configured depths (see `loop_corrected_cost`); gradient
accumulation multiplies by the number of micro-batches.

The Pallas splash attention kernel is a custom call that the cost analysis counts as
nothing (no FLOPs, no time). Its work is added as the decoder attention's model FLOPs
(`mm1_jax.models.flops`: the full square of scores, forward and backward) at the chips'
bf16 peak, as the cost model would time a matmul: splash keeps its scores on chip, while
XLA's own attention writes them to HBM (mm1_1b on v5p-64: 6.1 s a step costed that way,
against 3.5 s). All of it is an estimate.
"""

from __future__ import annotations

import contextlib
import dataclasses
import math
import re

import jax
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

from mm1_jax.aot import programs
from mm1_jax.models import flops as model_flops
from mm1_jax.models.vit import num_blocks
from mm1_jax.parallel import mesh as mesh_lib
from mm1_jax.parallel import tpu_topology

COST_KEYS = {'flops': 'flops', 'bytes accessed': 'bytes_accessed',
             'optimal_seconds': 'optimal_seconds'}


class AotError(ValueError):
  """The program cannot be built or compiled as configured; the message names why."""


def build_mesh(mesh_config, devices, slices: int = 1) -> Mesh:
  """The config's mesh over `devices`; across slices the 'data' axis spans the slices."""
  shape = mesh_lib.mesh_shape(mesh_config, len(devices))
  if slices == 1:
    return mesh_lib.make_mesh(mesh_config, devices)
  data = shape[mesh_lib.MESH_AXES.index('data')]
  if data % slices:
    raise AotError(f'config.mesh.data={data} must be a multiple of --slices={slices}: '
                   f'across slices only data parallelism is laid out (over DCN)')
  per_slice = (data // slices,) + shape[1:]
  dcn = (slices,) + (1,) * (len(shape) - 1)
  array = mesh_utils.create_hybrid_device_mesh(per_slice, dcn, devices)
  return Mesh(array, mesh_lib.MESH_AXES, axis_types=(AxisType.Auto,) * len(shape))


@dataclasses.dataclass(frozen=True)
class Memory:
  """Bytes per chip."""
  arguments: int
  outputs: int
  aliased: int
  temporaries: int
  generated_code: int
  compiler_peak: int | None

  @property
  def total(self) -> int:
    return (self.arguments + self.outputs - self.aliased + self.temporaries
            + self.generated_code)

  @property
  def needed(self) -> int:
    """What must fit: the compiler's peak of live buffers where it reports one (buffers
    of different lifetimes share memory, so the peak can be below the sum of the parts;
    and above it, with what the runtime reserves), else the total."""
    return self.compiler_peak if self.compiler_peak else self.total


def read_memory(compiled) -> Memory:
  stats = compiled.memory_analysis()
  if stats is None:
    raise AotError('the compiler reported no memory analysis for this program')
  peak = getattr(stats, 'peak_memory_in_bytes', None)
  return Memory(arguments=int(stats.argument_size_in_bytes),
                outputs=int(stats.output_size_in_bytes),
                aliased=int(stats.alias_size_in_bytes),
                temporaries=int(stats.temp_size_in_bytes),
                generated_code=int(stats.generated_code_size_in_bytes),
                compiler_peak=int(peak) if peak else None)


def read_cost(compiled) -> dict[str, float]:
  analysis = compiled.cost_analysis()
  if isinstance(analysis, (list, tuple)):  # older jax: one dict per computation
    analysis = analysis[0] if analysis else {}
  return {name: float(analysis[key]) for key, name in COST_KEYS.items()
          if analysis and key in analysis}


@contextlib.contextmanager
def _no_persistent_cache():
  """Compile-only executables cannot be loaded back from JAX's persistent cache."""
  enabled = jax.config.jax_enable_compilation_cache
  jax.config.update('jax_enable_compilation_cache', False)
  try:
    yield
  finally:
    jax.config.update('jax_enable_compilation_cache', enabled)


def compile_program(program: programs.Program, mesh: Mesh, options: dict | None = None):
  with jax.set_mesh(mesh), _no_persistent_cache():
    return program.jitted.lower(*program.args).compile(compiler_options=options)


_OOM = re.compile(r'RESOURCE_EXHAUSTED|Ran out of memory|exceeds the memory|out of memory',
                  re.IGNORECASE)


def is_out_of_memory(error: Exception) -> bool:
  return bool(_OOM.search(str(error)))


# ------------------------------------------------------------------- loop correction

# The TPU compiler turns a matmul whose operand is all-gathered (or whose result is
# reduce-scattered) over fsdp into a loop over the shards (a windowed einsum), of which
# the cost analysis again counts one step: off for the cost probes, every FLOP counts.
COST_COMPILER_OPTIONS = {'xla_tpu_enable_windowed_einsum_for_all_gather': False,
                         'xla_tpu_enable_windowed_einsum_for_reduce_scatter': False}


def _decoder_unit(config) -> int:
  """Decoder layers that repeat as one unit (MoE interleaves dense and expert layers)."""
  moe = config.model.get('moe')
  return int(moe.every) if moe is not None and moe.num_experts else 1


def _scanned(config, step: str) -> tuple[bool, bool]:
  """(decoder scanned, ViT scanned and run): the decode step runs no ViT."""
  vit = step == 'train' and bool(config.model.vit.get('scan_layers'))
  return bool(config.model.decoder.scan_layers), vit


# Attention kernels the cost analysis cannot see into (Pallas custom calls).
OPAQUE_ATTENTION = ('splash',)


def opaque_flops(config, step: str) -> float:
  """Model FLOPs of one step (all chips) that run in kernels the cost analysis cannot see."""
  if step != 'train' or config.model.decoder.attention not in OPAQUE_ATTENTION:
    return 0.0
  return model_flops.train_flops_by_part(config)['decoder_attention']


def _probe_config(config, decoder_units: int | None, vit_blocks: int | None):
  """`config` with one micro-batch and each scanned stack unrolled at the given depth
  (None: the stack as configured)."""
  probe = config.copy_and_resolve_references()
  if decoder_units is not None:
    probe.model.decoder.update(num_layers=decoder_units * _decoder_unit(config),
                               scan_layers=False)
  if vit_blocks is not None:
    vit = probe.model.vit
    never_run = vit.depth - num_blocks(vit.depth, vit.feature_layer)
    if vit.feature_layer >= 0:
      vit.feature_layer = vit_blocks
    vit.update(depth=vit_blocks + never_run, scan_layers=False)
  probe.train.batch_size = config.train.batch_size // config.train.grad_accum
  probe.train.grad_accum = 1
  return probe


def loop_corrected_cost(config, mesh, step: str, progress=None,
                        probes: list | None = None) -> dict[str, float]:
  """Cost per chip of `step` with every loop counted in full (module docstring).

  Compiled without windowed einsums: the base probe has each scanned stack unrolled at
  one layer, and one more probe per scanned stack at two layers gives that stack's cost
  per layer, extrapolated linearly to its depth. Micro-batches multiply the whole. Each
  probe's depths and cost (one micro-batch) are appended to `probes` when given.
  """
  decoder_scanned, vit_scanned = _scanned(config, step)
  base = (1 if decoder_scanned else None, 1 if vit_scanned else None)
  points = [base]
  if decoder_scanned:
    points.append((2, base[1]))
  if vit_scanned:
    points.append((base[0], 2))
  costs = []
  for decoder_units, vit_blocks in points:
    if progress:
      layers = 'as configured' if decoder_units is None else decoder_units * _decoder_unit(config)
      blocks = 'as configured' if vit_blocks is None else vit_blocks
      progress(f'cost probe {len(costs) + 1}/{len(points)}: decoder layers {layers}, '
               f'ViT blocks {blocks} (unrolled)')
    probe = _probe_config(config, decoder_units, vit_blocks)
    compiled = compile_program(programs.make_program(probe, mesh, step), mesh,
                               COST_COMPILER_OPTIONS)
    costs.append(read_cost(compiled))
    if probes is not None:
      vit = probe.model.vit
      probes.append({'decoder_layers': probe.model.decoder.num_layers,
                     'vit_blocks': num_blocks(vit.depth, vit.feature_layer), **costs[-1]})
  trips = []
  if decoder_scanned:
    trips.append(config.model.decoder.num_layers // _decoder_unit(config))
  if vit_scanned:
    trips.append(num_blocks(config.model.vit.depth, config.model.vit.feature_layer))
  micro = config.train.grad_accum if step == 'train' else 1
  corrected = {}
  for key, value in costs[0].items():
    for extra, n in zip(costs[1:], trips):
      value += (n - 1) * (extra[key] - costs[0][key])
    corrected[key] = value * micro
  return corrected


# ---------------------------------------------------------------------------- report

@dataclasses.dataclass
class Report:
  config_name: str
  step: str
  topology: str
  chip: str
  slices: int
  chips: int
  mesh: dict[str, int]
  num_params: int
  hbm_bytes: int
  memory: Memory | None           # None when the compiler ran out of HBM
  cost: dict[str, float]          # per chip, as compiled (loops counted once)
  cost_unrolled: dict[str, float]  # per chip, loops corrected (empty when not computed)
  model_flops: float | None       # per step, all chips
  peak_flops_per_chip: float
  compiler_error: str = ''
  loops_uncounted: bool = False   # loops whose cost was not corrected: no time estimate
  opaque_flops: float = 0.0       # per step, all chips: in kernels the cost analysis misses
  cost_probes: list = dataclasses.field(default_factory=list)  # per chip, one micro-batch
  probe_error: str = ''           # why the cost probes could not compile, if they could not

  @property
  def fits(self) -> bool:
    return self.memory is not None and self.memory.needed <= self.hbm_bytes

  @property
  def error(self) -> str:
    """Why it does not fit ('' when it does)."""
    if self.memory is None:
      return f'HBM overflow reported by the compiler: {self.compiler_error}'
    if not self.fits:
      return (f'needs {self.memory.needed / 2**30:.2f} GiB per chip, {self.chip} has '
              f'{self.hbm_bytes / 2**30:.2f} GiB of HBM')
    return ''

  @property
  def estimated_seconds(self) -> float | None:
    if self.loops_uncounted:
      return None
    cost = self.cost_unrolled or self.cost
    seconds = cost.get('optimal_seconds')
    # The cost model has been seen to answer a negative time (mm1_3b_moe): no estimate.
    if seconds is None or seconds <= 0:
      return None
    return seconds + self.opaque_seconds

  @property
  def opaque_seconds(self) -> float:
    """The opaque kernels' FLOPs at the chips' peak (module docstring)."""
    return self.opaque_flops / (self.chips * self.peak_flops_per_chip)

  @property
  def counted_flops(self) -> float | None:
    """FLOPs of one step on all chips: the cost analysis's and the opaque kernels'."""
    cost = self.cost_unrolled or self.cost
    if 'flops' not in cost or self.loops_uncounted:
      return None
    return cost['flops'] * self.chips + self.opaque_flops

  @property
  def flops_coverage(self) -> float | None:
    """Counted FLOPs / the model's FLOPs. Well below 1 means the cost analysis missed
    work, e.g. loops the compiler itself made (collective matmuls), and the estimated time
    is too short by about as much."""
    counted = self.counted_flops
    if not self.model_flops or counted is None:
      return None
    return counted / self.model_flops

  @property
  def flops_bound_seconds(self) -> float | None:
    """The counted FLOPs at the chips' peak: a floor under the step time (and 1 / coverage a
    ceiling over the MFU), also where the cost model gives no time."""
    counted = self.counted_flops
    if not self.model_flops or counted is None:
      return None
    return counted / (self.chips * self.peak_flops_per_chip)

  @property
  def estimated_mfu(self) -> float | None:
    seconds = self.estimated_seconds
    if not self.model_flops or not seconds:
      return None
    return self.model_flops / (seconds * self.chips * self.peak_flops_per_chip)

  def as_dict(self) -> dict:
    memory = None
    if self.memory is not None:
      memory = dataclasses.asdict(self.memory)
      memory['total'] = self.memory.total
    return {
        'config': self.config_name, 'step': self.step, 'topology': self.topology,
        'chip': self.chip, 'slices': self.slices, 'chips': self.chips, 'mesh': self.mesh,
        'num_params': self.num_params, 'hbm_bytes_per_chip': self.hbm_bytes,
        'fits': self.fits, 'memory_bytes_per_chip': memory,
        'cost_per_chip_as_compiled': self.cost, 'cost_per_chip_estimate': self.cost_unrolled,
        'model_flops_per_step': self.model_flops,
        'peak_flops_per_chip': self.peak_flops_per_chip,
        'estimated_step_seconds': self.estimated_seconds,
        'estimated_mfu': self.estimated_mfu, 'flops_coverage': self.flops_coverage,
        'flops_bound_seconds': self.flops_bound_seconds,
        'opaque_flops_per_step': self.opaque_flops, 'cost_probes': self.cost_probes,
        'loops_uncounted': self.loops_uncounted, 'probe_error': self.probe_error,
        'error': self.error,
    }


def analyse(config, *, config_name: str, topology: tpu_topology.Topology, slices: int = 1,
            step: str = 'train', hbm_bytes: int | None = None, correct_loops: bool = True,
            progress=None) -> Report:
  """Compiles `step` of `config` for `slices` x `topology` and reports per-chip numbers.

  Raises AotError for a layout that cannot be built (mesh sizes, batch split); an HBM
  overflow is reported (fits=False), not raised.
  """
  say = progress or (lambda message: None)
  devices = tpu_topology.compile_only_devices(topology, slices)
  try:
    mesh = build_mesh(config.mesh, devices, slices)
  except ValueError as e:
    raise AotError(f'{e} ({topology.name} x {slices} slice(s) = {len(devices)} chips)') from e
  program = programs.make_program(config, mesh, step)
  hbm = topology.chip.hbm_bytes if hbm_bytes is None else int(hbm_bytes)
  report = Report(config_name=config_name, step=step, topology=topology.name,
                  chip=topology.chip.name, slices=slices, chips=len(devices),
                  mesh=dict(mesh.shape), num_params=program.num_params, hbm_bytes=hbm,
                  memory=None, cost={}, cost_unrolled={},
                  model_flops=program.model_flops,
                  peak_flops_per_chip=topology.chip.peak_bf16_flops,
                  opaque_flops=opaque_flops(config, step))
  say(f'compiling the {step} step for {topology.name} ({topology.shape_name}) x {slices}, '
      f'mesh {dict(mesh.shape)}')
  try:
    compiled = compile_program(program, mesh)
  except jax.errors.JaxRuntimeError as e:
    if not is_out_of_memory(e):
      raise
    report.compiler_error = _first_lines(e)
    return report
  report.memory = read_memory(compiled)
  report.cost = read_cost(compiled)
  has_loops = any(_scanned(config, step)) or ' while(' in compiled.as_text()
  if has_loops or (step == 'train' and config.train.grad_accum > 1):
    if correct_loops and report.cost:
      try:
        report.cost_unrolled = loop_corrected_cost(config, mesh, step, say,
                                                   report.cost_probes)
      except jax.errors.JaxRuntimeError as e:
        # Probes gather whole fsdp operands (no windowed einsums): they can overflow HBM
        # where the real program fits.
        if not is_out_of_memory(e):
          raise
        report.probe_error = f'a cost probe overflowed HBM: {_first_lines(e)}'
    report.loops_uncounted = not report.cost_unrolled
  return report


def _first_lines(error: Exception, count: int = 3) -> str:
  return ' '.join(str(error).strip().splitlines()[:count])


def _gib(n: float) -> str:
  return f'{n / 2**30:.2f} GiB'


def format_report(report: Report) -> str:
  lines = [f'{report.config_name}: {report.step} step on {report.topology} '
           f'({report.chips} {report.chip} chips, {report.slices} slice(s)), mesh {report.mesh}, '
           f'{report.num_params / 1e9:.3f}B parameters']
  if report.memory is not None:
    m = report.memory
    lines += ['memory per chip (compiler):',
              f'  arguments        {_gib(m.arguments)}',
              f'  outputs          {_gib(m.outputs)}',
              f'  aliased (donated) -{_gib(m.aliased)}',
              f'  temporaries      {_gib(m.temporaries)}',
              f'  generated code   {_gib(m.generated_code)}',
              f'  total            {_gib(m.total)}'
              + (f'   (compiler peak {_gib(m.compiler_peak)})' if m.compiler_peak else ''),
              f'  HBM              {_gib(report.hbm_bytes)}']
  lines.append(f'fits: {"yes" if report.fits else "NO"}'
               + (f' ({report.error})' if report.error else ''))
  cost = report.cost_unrolled or report.cost
  if cost:
    label = ('loops unrolled, ' if report.cost_unrolled else
             'loop bodies counted once, ' if report.loops_uncounted else '')
    lines.append(f'estimate ({label}per chip): {cost.get("flops", math.nan):.3e} FLOPs, '
                 f'{cost.get("bytes_accessed", math.nan):.3e} bytes accessed')
  if report.loops_uncounted:
    lines.append('no time estimate: ' + (report.probe_error or 'the program has loops and '
                                         '--nocorrect_loops was given'))
  if report.estimated_seconds:
    lines.append(f'estimated step time (XLA cost model): {report.estimated_seconds:.3f} s'
                 + (f', of which {report.opaque_seconds:.3f} s splash attention at peak'
                    if report.opaque_flops else ''))
  if report.model_flops:
    lines.append(f'model FLOPs per step: {report.model_flops:.3e}')
  if report.estimated_mfu is not None:
    lines.append(f'estimated MFU: {100 * report.estimated_mfu:.1f}% '
                 f'(model FLOPs / (estimated time x {report.chips} chips x '
                 f'{report.peak_flops_per_chip / 1e12:.0f} TFLOP/s bf16 peak))')
  coverage = report.flops_coverage
  if coverage is not None:
    lines.append(f'the cost analysis counted {100 * coverage:.0f}% of the model FLOPs'
                 + (': it missed work, so the time is underestimated and the MFU overstated'
                    if coverage < 0.9 else ''))
    lines.append(f'those FLOPs at peak: {report.flops_bound_seconds:.3f} s a step at least, '
                 f'MFU {100 / coverage:.1f}% at most')
  return '\n'.join(lines)


__all__ = ['AotError', 'Memory', 'Report', 'analyse', 'build_mesh', 'format_report',
           'loop_corrected_cost', 'read_cost', 'read_memory']
