"""TPU slice shapes as Cloud TPU defines them."""

import pytest

from launch import topology


@pytest.mark.parametrize('name, chips, hosts, topo', [
    ('v5p-8', 4, 1, '2x2x1'),
    ('v5p-16', 8, 2, '2x2x2'),
    ('v5p-64', 32, 8, '2x4x4'),
    ('v5p-128', 64, 16, '4x4x4'),
    ('v5p-256', 128, 32, '4x4x8'),
    ('v5p-512', 256, 64, '4x8x8'),
    ('v4-32', 16, 4, '2x2x4'),
    ('v5litepod-4', 4, 1, '2x2'),
    ('v5e-8', 8, 1, '2x4'),
    ('v5litepod-16', 16, 4, '4x4'),
    ('v5litepod-256', 256, 64, '16x16'),
    ('v6e-32', 32, 8, '4x8'),
])
def test_known_slices(name, chips, hosts, topo):
  tpu = topology.parse(name)
  assert (tpu.chips, tpu.hosts, tpu.topology) == (chips, hosts, topo)
  assert tpu.chips_per_host * tpu.hosts == tpu.chips


@pytest.mark.parametrize('name', ['v5p-12', 'v5p-4', 'v3-8', 'tpu', 'v6e-0'])
def test_invalid_types_are_named(name):
  with pytest.raises(ValueError, match=name):
    topology.parse(name)
