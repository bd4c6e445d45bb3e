"""Cloud TPU slice shapes: chips, hosts and the physical topology of an accelerator type.

Accelerator types are named as Cloud TPU names them: `v4-N` and `v5p-N` count TensorCores
(two per chip, four chips per host, 3-D torus), `v5litepod-N` (v5e) and `v6e-N` count chips
(2-D, four chips per host on multi-host slices, up to eight on a single host). Pure Python:
`launch/` runs on a laptop without JAX.
"""

from __future__ import annotations

import dataclasses
import math
import re

# family -> (cores per chip, 3-D topology?, GKE accelerator label, most chips on one host)
_FAMILIES = {
    'v4': (2, True, 'tpu-v4-podslice', 4),
    'v5p': (2, True, 'tpu-v5p-slice', 4),
    'v5litepod': (1, False, 'tpu-v5-lite-podslice', 8),
    'v6e': (1, False, 'tpu-v6e-slice', 8),
}
_ALIASES = {'v5e': 'v5litepod'}


@dataclasses.dataclass(frozen=True)
class TpuSlice:
  accelerator_type: str  # as gcloud takes it, e.g. 'v5p-64'
  family: str
  chips: int
  hosts: int
  chips_per_host: int
  topology: str          # e.g. '2x4x4'
  gke_accelerator: str   # GKE node label value


def _is_power_of_two(n: int) -> bool:
  return n > 0 and n & (n - 1) == 0


def _topology_3d(chips: int) -> str:
  # 4 chips are 2x2x1; each doubling grows the last of the smallest dimensions:
  # 2x2x2, 2x2x4, 2x4x4, 4x4x4, 4x4x8, ... as Cloud TPU lays v4 and v5p slices out.
  dims = [2, 2, 1]
  while math.prod(dims) < chips:
    smallest = min(dims)
    last = max(i for i, d in enumerate(dims) if d == smallest)
    dims[last] *= 2
  return 'x'.join(map(str, dims))


def _topology_2d(chips: int) -> str:
  short = 2 ** (int(math.log2(chips)) // 2)
  return f'{short}x{chips // short}'


def parse(accelerator_type: str) -> TpuSlice:
  """'v5p-64' -> TpuSlice(chips=32, hosts=8, topology='2x4x4', ...)."""
  match = re.fullmatch(r'(v4|v5p|v5litepod|v5e|v6e)-(\d+)', accelerator_type)
  if not match:
    raise ValueError(
        f'unknown TPU type {accelerator_type!r}: expected v4-N, v5p-N, v5litepod-N (v5e-N) '
        f'or v6e-N, e.g. v5p-64')
  family = _ALIASES.get(match.group(1), match.group(1))
  count = int(match.group(2))
  cores_per_chip, three_d, label, single_host_max = _FAMILIES[family]
  chips = count // cores_per_chip
  if count % cores_per_chip or not _is_power_of_two(chips) or (three_d and chips < 4):
    raise ValueError(f'TPU type {accelerator_type!r} does not name a valid {family} slice')
  if chips <= single_host_max:
    hosts, per_host = 1, chips
  else:
    hosts, per_host = chips // 4, 4
  topology = _topology_3d(chips) if three_d else _topology_2d(chips)
  return TpuSlice(accelerator_type=f'{family}-{count}', family=family, chips=chips,
                  hosts=hosts, chips_per_host=per_host, topology=topology,
                  gke_accelerator=label)
