"""Forward-pass FLOP/s of MM1 over this process's measured matmul FLOP/s.

    python benchmarks/forward.py [--batch=4] [--seq_len=512] [--repeats=5]

A compute-bound CPU configuration (decoder d_model 512, 4 layers, d_ff 1408, sequence 512;
a 4-block ViT of width 256 on 64x64 images with 8x8 patches, 2 images per row, C-Abstractor
16 tokens) runs its jitted forward pass; its model FLOPs (mm1_jax.models.flops) per
second are divided by the FLOP/s of a float32 512x512 matmul measured in the same
process. Prints the ratio, then the JSON it is computed from. Only the ratio
means something on a shared CPU; absolute times mean something only on an accelerator.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import time

# This checkout's packages, not whichever copy is installed (as the other benchmarks do).
sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402
from flax import nnx  # noqa: E402

from experiments import tiny  # noqa: E402
from mm1_jax.models import MM1  # noqa: E402
from mm1_jax.models.flops import forward_flops_per_sequence  # noqa: E402
from mm1_jax.train.flops import measured_matmul_flops  # noqa: E402


def benchmark_config(seq_len: int):
  config = tiny.get_config()
  config.model.vit.update(image_size=64, patch_size=8, width=256, depth=4, num_heads=4,
                          mlp_dim=1024)
  config.model.connector.update(kind='c_abstractor', num_tokens=16, depth=1, width=256)
  config.model.decoder.update(vocab_size=512, d_model=512, num_layers=4, num_heads=8,
                              num_kv_heads=8, d_ff=1408)
  config.data.seq_len = seq_len
  config.data.max_images = 2
  return config


def make_batch(config, batch: int) -> dict:
  rng = np.random.default_rng(0)
  length, k = config.data.seq_len, config.model.connector.num_tokens
  tokens = rng.integers(5, config.model.decoder.vocab_size, (batch, length)).astype(np.int32)
  for slot in range(config.data.max_images):
    start = 1 + slot * (k + 8)
    tokens[:, start:start + k] = config.model.image_token_id
  size = config.model.vit.image_size
  return dict(
      tokens=jnp.asarray(tokens), segment_ids=jnp.ones((batch, length), jnp.int32),
      positions=jnp.broadcast_to(jnp.arange(length, dtype=jnp.int32), (batch, length)),
      images=jnp.asarray(rng.integers(0, 256, (batch, config.data.max_images, size, size, 3)),
                         jnp.uint8),
      image_valid=jnp.ones((batch, config.data.max_images), bool))


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument('--batch', type=int, default=4)
  parser.add_argument('--seq_len', type=int, default=512)
  parser.add_argument('--repeats', type=int, default=5)
  args = parser.parse_args()

  config = benchmark_config(args.seq_len)
  model = MM1(config, rngs=nnx.Rngs(0))
  graphdef, state = nnx.split(model)
  forward = jax.jit(lambda s, b: nnx.merge(graphdef, s)(b)[0])
  batch = make_batch(config, args.batch)
  forward(state, batch).block_until_ready()  # compile
  best = float('inf')
  for _ in range(args.repeats):
    start = time.perf_counter()
    forward(state, batch).block_until_ready()
    best = min(best, time.perf_counter() - start)
  model_flops = args.batch * forward_flops_per_sequence(config)
  xla_flops = forward.lower(state, batch).compile().cost_analysis().get('flops', float('nan'))
  matmul = measured_matmul_flops()
  result = dict(forward_seconds=best, model_flops=model_flops, xla_flops=float(xla_flops),
                forward_flops_per_s=model_flops / best, matmul_flops_per_s=matmul,
                ratio=model_flops / best / matmul, batch=args.batch, seq_len=args.seq_len,
                device=jax.devices()[0].device_kind, num_devices=jax.device_count())
  print(f'forward FLOP/s / matmul FLOP/s = {result["ratio"]:.3f}')
  print(json.dumps(result, indent=2))


if __name__ == '__main__':
  main()
