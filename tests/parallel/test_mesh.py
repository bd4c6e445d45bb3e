"""make_mesh: axis order, -1 fill, and ConfigErrors naming config.mesh."""

import jax
import pytest

from mm1_jax.config_lib import ConfigError
from mm1_jax.parallel.mesh import MESH_AXES, make_mesh, mesh_shape


def test_axes_and_explicit_sizes():
  mesh = make_mesh(dict(data=2, fsdp=2, tensor=2, expert=1))
  assert mesh.axis_names == MESH_AXES == ('data', 'fsdp', 'tensor', 'expert')
  assert dict(mesh.shape) == dict(data=2, fsdp=2, tensor=2, expert=1)


@pytest.mark.parametrize('fill_axis', MESH_AXES)
def test_minus_one_fills_the_remaining_devices(fill_axis):
  sizes = dict(data=1, fsdp=2, tensor=1, expert=1)
  sizes[fill_axis] = -1
  mesh = make_mesh(sizes)
  expected = 8 // (2 if fill_axis != 'fsdp' else 1)
  assert mesh.shape[fill_axis] == expected
  assert mesh.devices.size == len(jax.devices()) == 8


def test_subset_of_devices():
  mesh = make_mesh(dict(data=-1, fsdp=1, tensor=2, expert=1), devices=jax.devices()[:4])
  assert dict(mesh.shape) == dict(data=2, fsdp=1, tensor=2, expert=1)


@pytest.mark.parametrize('sizes', [
    dict(data=2, fsdp=2, tensor=1, expert=1),   # 4 != 8
    dict(data=-1, fsdp=3, tensor=1, expert=1),  # 3 does not divide 8
    dict(data=-1, fsdp=-1, tensor=1, expert=1),  # two fills
])
def test_mismatch_raises_naming_config_mesh(sizes):
  # A ConfigError: the entry points print it as one line and exit 2 (tests/test_cli_errors.py).
  with pytest.raises(ConfigError, match=r'config\.mesh.*data='):
    make_mesh(sizes)
  with pytest.raises(ConfigError, match=r'config\.mesh.*data='):
    mesh_shape(sizes, 8)
