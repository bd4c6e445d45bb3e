"""The peak FLOP/s that MFU is measured against; the model FLOPs come from elsewhere.

The FLOPs of a step are counted in one place, `mm1_jax.models.flops` (the conventions are
its docstring's); `train_flops_per_step` is re-exported here for the trainer.

The peak is the chip's published dense bf16 rate where it is known, and on CPU the
measured rate of a large float32 matmul in this same process, so a CPU MFU says how close
the step comes to what this machine's matmul achieves.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from mm1_jax.models.flops import train_flops_per_step  # the trainer's count

# Dense bf16 peak FLOP/s per chip, by jax device_kind prefix.
KNOWN_PEAKS = {
    'NVIDIA H200': 989e12,
    'NVIDIA H100': 989e12,
    'NVIDIA A100': 312e12,
    'TPU v4': 275e12,
    'TPU v5 lite': 197e12,
    'TPU v5e': 197e12,
    'TPU v5p': 459e12,
    'TPU v5': 459e12,
    'TPU v6 lite': 918e12,
    'TPU v6e': 918e12,
}


def measured_matmul_flops(size: int = 512, repeats: int = 5, dtype=np.float32) -> float:
  """FLOP/s of [size, size] matmuls in `dtype` run on all local devices at once, best of
  `repeats`: what this process's matmuls achieve when every device is busy, as in a step."""
  devices = jax.local_devices()
  mesh = jax.sharding.Mesh(devices, ('d',))
  sharding = jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec('d'))
  # From host memory onto this process's devices only (never the job's global mesh).
  x = jax.device_put(np.ones((len(devices), size, size), dtype), sharding)
  matmul = jax.jit(lambda a: jnp.einsum('nij,njk->nik', a, a), out_shardings=sharding)
  matmul(x).block_until_ready()
  best = float('inf')
  for _ in range(repeats):
    start = time.perf_counter()
    matmul(x).block_until_ready()
    best = min(best, time.perf_counter() - start)
  return 2.0 * len(devices) * size ** 3 / best


def peak_flops() -> tuple[float, str]:
  """(peak FLOP/s of all local devices together, where the number comes from)."""
  device = jax.local_devices()[0]
  for prefix, peak in KNOWN_PEAKS.items():
    if device.device_kind.startswith(prefix):
      return peak * jax.local_device_count(), f'{prefix} bf16 peak'
  return measured_matmul_flops(), f'measured f32 matmul on {device.platform}'


__all__ = ['KNOWN_PEAKS', 'measured_matmul_flops', 'peak_flops', 'train_flops_per_step']
