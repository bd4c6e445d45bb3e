"""TPU pod topologies described on any host: names, chip facts, compile-only devices.

`parse('v5p-512')` turns a Cloud TPU accelerator name into its chip kind and physical
shape; `compile_only_devices(topology, slices)` asks libtpu (the `tpu` extra) for devices
that XLA can compile for but that run nothing, so a pod program can be compiled and
measured on a CPU machine (see mm1_jax.aot).

Naming, as Cloud TPU does: v4-N and v5p-N count TensorCores (2 per chip: v5p-512 is
256 chips, 4x8x8); v5e-N (alias v5litepod-N) and v6e-N count chips (v5e-256 is 16x16).
An explicit shape is accepted too: 'v5p:4x8x8', 'v5e:2x2'.
"""

from __future__ import annotations

import dataclasses
import importlib.util
import math
import os
import re


@dataclasses.dataclass(frozen=True)
class Chip:
  name: str            # as in accelerator names: v4, v5e, v5p, v6e
  device_kind: str     # jax Device.device_kind
  hbm_bytes: int       # published HBM per chip
  peak_bf16_flops: float  # published dense bf16 FLOP/s per chip
  cores_per_name_unit: int  # TensorCores counted per chip in 'vX-N' (1: N counts chips)
  mesh_dims: int       # 3 for the 3D-torus chips, 2 for the 2D ones


GiB = 1024 ** 3

CHIPS = {
    'v4': Chip('v4', 'TPU v4', 32 * GiB, 275e12, 2, 3),
    'v5e': Chip('v5e', 'TPU v5 lite', 16 * GiB, 197e12, 1, 2),
    'v5p': Chip('v5p', 'TPU v5', 95 * GiB, 459e12, 2, 3),
    'v6e': Chip('v6e', 'TPU v6 lite', 32 * GiB, 918e12, 1, 2),
}
ALIASES = {'v5litepod': 'v5e', 'v6litepod': 'v6e'}


@dataclasses.dataclass(frozen=True)
class Topology:
  chip: Chip
  shape: tuple[int, ...]  # chips along each physical axis of one slice

  @property
  def num_chips(self) -> int:
    return math.prod(self.shape)

  @property
  def shape_name(self) -> str:
    return 'x'.join(str(n) for n in self.shape)

  @property
  def name(self) -> str:
    return f'{self.chip.name}-{self.num_chips * self.chip.cores_per_name_unit}'


def _chip(name: str, whole: str) -> Chip:
  name = ALIASES.get(name.lower(), name.lower())
  if name not in CHIPS:
    raise ValueError(f'--topology={whole!r}: unknown TPU generation {name!r} '
                     f'(known: {", ".join(CHIPS)})')
  return CHIPS[name]


def default_shape(chip: Chip, num_chips: int) -> tuple[int, ...]:
  """The shape Cloud TPU gives a slice of `num_chips` (a power of two): start from one
  chip (2x2x1 for 3D chips) and double the smallest axis, the last one among equals."""
  if num_chips < 1 or num_chips & (num_chips - 1):
    raise ValueError(f'{chip.name} with {num_chips} chips: only powers of two have a '
                     f'default shape; name the shape, e.g. {chip.name}:2x2x3')
  shape = [1] * chip.mesh_dims
  if chip.mesh_dims == 3 and num_chips >= 4:
    shape = [2, 2, 1]
  while math.prod(shape) < num_chips:
    smallest = min(shape)
    last = max(i for i, n in enumerate(shape) if n == smallest)
    shape[last] *= 2
  if math.prod(shape) != num_chips:  # 1 or 2 chips of a 3D generation
    shape = [1] * (chip.mesh_dims - 1) + [num_chips]
  return tuple(shape)


def parse(name: str) -> Topology:
  """'v5p-512' (accelerator type) or 'v5p:4x8x8' (explicit chip shape) -> Topology."""
  match = re.fullmatch(r'([a-z0-9]+)-(\d+)', name.strip().lower())
  if match:
    chip = _chip(match.group(1), name)
    count = int(match.group(2))
    if count % chip.cores_per_name_unit:
      raise ValueError(f'--topology={name!r}: {chip.name}-N counts TensorCores '
                       f'({chip.cores_per_name_unit} per chip), so N must be even')
    return Topology(chip, default_shape(chip, count // chip.cores_per_name_unit))
  match = re.fullmatch(r'([a-z0-9]+):(\d+(?:x\d+)*)', name.strip().lower())
  if match:
    chip = _chip(match.group(1), name)
    shape = tuple(int(n) for n in match.group(2).split('x'))
    if len(shape) != chip.mesh_dims or min(shape) < 1:
      raise ValueError(f'--topology={name!r}: a {chip.name} slice has {chip.mesh_dims} '
                       f'positive axes, e.g. {chip.name}:{"x".join(["2"] * chip.mesh_dims)}')
    return Topology(chip, shape)
  raise ValueError(f'--topology={name!r}: expected an accelerator type such as v5p-512 or '
                   f'v5e-4, or a chip shape such as v5p:4x8x8')


def libtpu_available() -> bool:
  return importlib.util.find_spec('libtpu') is not None


def accelerator_type(topology: Topology) -> str:
  """The name Cloud TPU's metadata would give this slice (v5e slices are 'v5litepod-N')."""
  chip = 'v5litepod' if topology.chip.name == 'v5e' else topology.chip.name
  return f'{chip}-{topology.num_chips * topology.chip.cores_per_name_unit}'


def describe_host_without_tpu(topology: Topology) -> None:
  """On a host without TPUs, tell libtpu what it would otherwise query from Cloud TPU
  metadata (and print errors about): only for a process that compiles and runs nothing
  on a TPU. Must run before libtpu is first loaded; keeps what the environment sets."""
  os.environ.setdefault('TPU_SKIP_MDS_QUERY', '1')
  os.environ.setdefault('TPU_WORKER_HOSTNAMES', 'localhost')
  os.environ.setdefault('TPU_ACCELERATOR_TYPE', accelerator_type(topology))


def compile_only_devices(topology: Topology, slices: int = 1) -> list:
  """Devices of `slices` copies of `topology` that XLA compiles for but that run nothing.

  Needs libtpu (pip install 'mm1-jax[tpu]'); works on hosts without TPUs. The device list
  is ordered slice by slice.
  """
  if not libtpu_available():
    raise RuntimeError('compiling for a TPU topology needs libtpu: '
                       "pip install -e '.[tpu]' (or pip install 'jax[tpu]')")
  if slices < 1:
    raise ValueError(f'--slices={slices}: must be at least 1')
  # A compile-only client touches no TPU, so it may share the host with another process
  # that loaded libtpu (which otherwise holds /tmp/libtpu_lockfile and blocks this one).
  os.environ.setdefault('ALLOW_MULTIPLE_LIBTPU_LOAD', '1')
  from jax.experimental import topologies
  kwargs = {'num_slices': slices} if slices > 1 else {}
  description = topologies.get_topology_desc(
      topology_name=f'{topology.chip.name}:{topology.shape_name}', platform='tpu', **kwargs)
  devices = list(description.devices)
  expected = topology.num_chips * slices
  if len(devices) != expected:
    raise RuntimeError(f'libtpu described {len(devices)} devices for {topology.name} x '
                       f'{slices} slices, expected {expected}')
  return devices
