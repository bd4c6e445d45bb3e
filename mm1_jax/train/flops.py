"""Model FLOPs per step and the peak they are measured against (for MFU).

Training FLOPs are 3x the forward FLOPs (forward + two backward matmuls). Forward:
2 FLOPs per parameter per token for every matmul weight, plus attention scores and
values (2 x 2 x length x width per token and layer; causal masking is not discounted,
the common convention). This is an estimate: the model issue refines it per part.

The peak is the chip's published dense bf16 rate where it is known, and on CPU the
measured rate of a large float32 matmul in this same process, so a CPU MFU says how close
the step comes to what this machine's matmul achieves.
"""

from __future__ import annotations

import time

import jax
import jax.numpy as jnp
import numpy as np

from mm1_jax.models.flops import inactive_expert_params

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


def _count(tree) -> int:
  return sum(int(x.size) for x in jax.tree.leaves(tree))


def train_flops_per_step(config, params, *, num_images: float) -> float:
  """Estimated training FLOPs of one step of `config.train.batch_size` rows."""
  vit_cfg, dec_cfg, data = config.model.vit, config.model.decoder, config.data
  vit_params = _count(params.get('vit', {}))
  connector_params = _count(params.get('connector', {}))
  decoder_params = _count(params.get('decoder', {}))
  embed = dec_cfg.vocab_size * dec_cfg.d_model
  # The input embedding is a gather, not a matmul; a tied table is still used by the head.
  decoder_matmul = decoder_params - (0 if dec_cfg.tie_embeddings else embed)
  # A token runs top_k of an MoE layer's experts (models/flops.py).
  decoder_matmul -= inactive_expert_params(config.model)
  tokens = config.train.batch_size * data.seq_len
  patches = (vit_cfg.image_size // vit_cfg.patch_size) ** 2
  forward = 2 * decoder_matmul * tokens
  forward += 4 * dec_cfg.num_layers * data.seq_len * dec_cfg.d_model * tokens
  forward += num_images * (2 * vit_params * patches + 4 * vit_cfg.depth * patches ** 2 * vit_cfg.width)
  forward += num_images * 2 * connector_params * patches
  return 3.0 * forward


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
