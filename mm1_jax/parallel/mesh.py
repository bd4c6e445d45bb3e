"""The device mesh: one mesh with axes ('data', 'fsdp', 'tensor', 'expert') in that order.

`make_mesh(config.mesh)` turns the config's sizes into a `jax.sharding.Mesh`; one size of
-1 takes whatever devices the others leave. The axes are `Auto` so that sharding
constraints by logical name (see `rules.constrain`) steer XLA's propagation. Sizes that
do not fit the devices raise `config_lib.ConfigError` naming config.mesh; `mesh_shape`
checks them without building anything (the entry points call it at start-up).
"""

from __future__ import annotations

import math
from collections.abc import Mapping, Sequence

import jax
import numpy as np
from jax.experimental import mesh_utils
from jax.sharding import AxisType, Mesh

from mm1_jax.config_lib import ConfigError

MESH_AXES = ('data', 'fsdp', 'tensor', 'expert')


def mesh_shape(mesh_config: Mapping[str, int], num_devices: int) -> tuple[int, ...]:
  """Resolves the sizes of MESH_AXES for `num_devices` devices (a -1 fills the rest).

  Raises ConfigError (a ValueError) naming config.mesh when they do not fit.
  """
  sizes = {axis: int(mesh_config.get(axis, 1)) for axis in MESH_AXES}
  described = ', '.join(f'{axis}={size}' for axis, size in sizes.items())
  fill = [axis for axis, size in sizes.items() if size == -1]
  if len(fill) > 1 or any(size == 0 or size < -1 for size in sizes.values()):
    raise ConfigError(
        f'config.mesh ({described}): sizes must be positive, with at most one -1')
  fixed = math.prod(size for size in sizes.values() if size != -1)
  if fill:
    if num_devices % fixed:
      raise ConfigError(f'config.mesh ({described}): the fixed sizes multiply to {fixed}, '
                        f'which does not divide the {num_devices} devices')
    sizes[fill[0]] = num_devices // fixed
  elif fixed != num_devices:
    raise ConfigError(f'config.mesh ({described}): the sizes multiply to {fixed}, '
                      f'but there are {num_devices} devices')
  return tuple(sizes[axis] for axis in MESH_AXES)


def make_mesh(mesh_config: Mapping[str, int],
              devices: Sequence[jax.Device] | None = None) -> Mesh:
  """A Mesh over `devices` (default: all) with axes MESH_AXES sized by `mesh_config`."""
  devices = list(jax.devices() if devices is None else devices)
  shape = mesh_shape(mesh_config, len(devices))
  try:  # topology-aware placement on TPU/GPU; plain order elsewhere
    device_array = mesh_utils.create_device_mesh(shape, devices)
  except (ValueError, NotImplementedError, AssertionError):
    device_array = np.asarray(devices, dtype=object).reshape(shape)
  return Mesh(device_array, MESH_AXES, axis_types=(AxisType.Auto,) * len(MESH_AXES))
