"""Train-step speed, measured against this same process.

    python benchmarks/train_step.py [--steps 5] [--json out.json]
    python benchmarks/train_step.py --batch_size 8 --attention cudnn   # one GPU

Prints two ratios, then the JSON they are computed from:
  * mfu_vs_matmul: the train step's achieved FLOP/s (model FLOPs of mm1_jax.models.flops
    over the measured step time) over the FLOP/s of a large float32 matmul on the same
    devices in the same process (goal >= 0.6 on CPU, for a compute-bound config);
  * save_block_over_step: how long an asynchronous checkpoint save blocks the training
    loop, over the time of one step (goal <= 0.1).
On a GPU or TPU the peak is the chip's published bf16 rate and the config is MM1's
1.2B-shaped decoder in bfloat16 (experiments/mm1_1b.py), with the batch cut to what one
chip holds (--batch_size); the same process's bf16 [8192, 8192] matmul rate is printed
beside it (mfu_vs_matmul), since a chip seldom reaches its published peak.

Not a test: nothing imports it, and nothing asserts a time.
"""

from __future__ import annotations

import argparse
import json
import os
import sys
import tempfile
import time

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))

import jax  # noqa: E402
import jax.numpy as jnp  # noqa: E402
import numpy as np  # noqa: E402

from experiments import tiny  # noqa: E402
from mm1_jax.parallel import mesh as mesh_lib  # noqa: E402
from mm1_jax.models import flops as model_flops  # noqa: E402
from mm1_jax.train import checkpoint as checkpoint_lib  # noqa: E402
from mm1_jax.train import flops as flops_lib  # noqa: E402
from mm1_jax.train import optimizer as optimizer_lib  # noqa: E402
from mm1_jax.train import state as state_lib  # noqa: E402
from mm1_jax.train import step as step_lib  # noqa: E402
from mm1_jax.train import trainer  # noqa: E402


def cpu_config():
  """Compute-bound on CPU: wide matmuls, a short sequence, one small image per row."""
  config = tiny.get_config()
  dec = config.model.decoder
  dec.d_model, dec.num_layers, dec.num_heads, dec.num_kv_heads, dec.d_ff = 512, 4, 8, 8, 2048
  dec.vocab_size = 2048
  config.data.seq_len = 256
  config.data.max_images = 1
  config.train.batch_size = 8
  return config


def accelerator_config(batch_size: int, attention: str):
  """MM1's 1.2B ablation decoder shape in bfloat16, `batch_size` rows per step."""
  path = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))),
                      'experiments', 'mm1_1b.py')
  if os.path.exists(path):
    import importlib.util
    spec = importlib.util.spec_from_file_location('mm1_1b', path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    config = module.get_config()
  else:
    config = tiny.get_config()
    dec = config.model.decoder
    dec.d_model, dec.num_layers, dec.num_heads, dec.num_kv_heads = 2048, 24, 16, 16
    dec.d_ff, dec.vocab_size = 5632, 32000
    vit = config.model.vit
    vit.image_size, vit.patch_size, vit.width, vit.depth = 224, 14, 1024, 24
    vit.num_heads, vit.mlp_dim = 16, 4096
    config.model.connector.num_tokens = 64
    config.data.seq_len = 2048
    config.data.max_images = 4
    config.train.batch_size = 8
  config.train.dtype = 'bfloat16'
  config.train.batch_size = batch_size
  config.model.decoder.remat = 'dots_with_no_batch_dims_saveable'
  config.model.decoder.attention = attention
  config.mesh.update(data=-1, fsdp=1)
  return config


def synthetic_batch(config) -> dict:
  """A batch of the DESIGN.md contract: one image run at the start of each row, then text."""
  rng = np.random.default_rng(0)
  b, length, m = config.train.batch_size, config.data.seq_len, config.data.max_images
  k, size = config.model.connector.num_tokens, config.model.vit.image_size
  tokens = rng.integers(5, config.model.decoder.vocab_size, (b, length), dtype=np.int32)
  tokens[:, :k] = config.model.image_token_id
  loss_mask = np.ones((b, length), np.float32)
  loss_mask[:, :k] = 0
  return {
      'tokens': tokens,
      'targets': np.roll(tokens, -1, axis=1),
      'loss_mask': loss_mask,
      'segment_ids': np.ones((b, length), np.int32),
      'positions': np.broadcast_to(np.arange(length, dtype=np.int32), (b, length)).copy(),
      'images': rng.integers(0, 256, (b, m, size, size, 3), dtype=np.uint8),
      'image_valid': np.ones((b, m), bool),
      'source_id': np.zeros((b,), np.int32),
  }


def measure(config, steps: int, measure_save: bool = True) -> dict:
  config.train.steps = 1000
  mesh = mesh_lib.make_mesh(config.mesh)
  tx = optimizer_lib.make_optimizer(
      config, optimizer_lib.resolve_settings(config, state_lib.count_params(config)))
  layout = state_lib.make_layout(config, mesh, tx)
  host_batch = synthetic_batch(config)
  shardings = trainer.batch_shardings(mesh, host_batch)
  with jax.set_mesh(mesh):
    state = state_lib.init_state(config, layout, tx)
    batch = {k: jax.device_put(v, shardings[k]) for k, v in host_batch.items()}
    train_step = step_lib.jit_train_step(config, layout, shardings, tx, num_sources=1)
    state, metrics = train_step(state, batch)  # compile
    jax.block_until_ready((state, metrics))
    times = []
    for _ in range(steps):
      start = time.perf_counter()
      state, metrics = train_step(state, batch)
      jax.block_until_ready((state, metrics))
      times.append(time.perf_counter() - start)
    step_seconds = float(np.median(times))

    blocked = []  # seconds each asynchronous save blocked the loop
    if measure_save:
      with tempfile.TemporaryDirectory() as directory:
        checkpointer = checkpoint_lib.Checkpointer(directory, keep=2, use_async=True)
        for i in range(3):
          state, metrics = train_step(state, batch)
          jax.block_until_ready(state)
          start = time.perf_counter()
          checkpointer.save(i + 1, state, config=config)
          blocked.append(time.perf_counter() - start)
          checkpointer.wait()
        checkpointer.close()

  num_images = float(host_batch['image_valid'].sum())
  flops_per_step = model_flops.train_flops_per_step(config, num_images=num_images)
  peak, peak_source = flops_lib.peak_flops()
  device = jax.devices()[0]
  if device.platform == 'cpu':
    matmul = flops_lib.measured_matmul_flops(size=1024)
  else:
    matmul = flops_lib.measured_matmul_flops(size=8192, repeats=10, dtype=jnp.bfloat16)
  reference = matmul if device.platform == 'cpu' else peak
  save_block = float(np.median(blocked)) if blocked else float('nan')
  return {
      'device': f'{device.platform} {device.device_kind} x{jax.device_count()}',
      'num_params': layout.num_params,
      'dtype': config.train.dtype,
      'batch_size': config.train.batch_size,
      'seq_len': config.data.seq_len,
      'flops_per_step': flops_per_step,
      'step_seconds': step_seconds,
      'step_seconds_all': times,
      'achieved_flops': flops_per_step / step_seconds,
      'matmul_flops': matmul,
      'peak_flops': peak,
      'peak_source': peak_source,
      'reference_flops': reference,
      'mfu_vs_matmul': flops_per_step / step_seconds / matmul,
      'mfu_vs_peak': flops_per_step / step_seconds / peak,
      'save_block_seconds': save_block,
      'save_block_seconds_all': blocked,
      'save_block_over_step': save_block / step_seconds,
  }


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--steps', type=int, default=5)
  parser.add_argument('--json', default=None, help='also write the JSON here')
  parser.add_argument('--batch_size', type=int, default=8,
                      help='rows per step on an accelerator (the CPU config is fixed)')
  parser.add_argument('--attention', default='xla', help='model.decoder.attention on an '
                      "accelerator: 'xla', 'cudnn' (GPU) or 'splash' (TPU)")
  parser.add_argument('--no_save', action='store_true',
                      help='skip the checkpoint-blocking measurement (a big state on a slow disk)')
  args = parser.parse_args()
  on_cpu = jax.devices()[0].platform == 'cpu'
  config = cpu_config() if on_cpu else accelerator_config(args.batch_size, args.attention)
  result = measure(config, args.steps, measure_save=not args.no_save)
  if on_cpu:
    print(f'achieved FLOP/s over measured matmul FLOP/s: {result["mfu_vs_matmul"]:.3f} '
          f'(goal >= 0.6)')
  else:
    print(f'MFU against {result["peak_source"]}: {result["mfu_vs_peak"]:.3f}; achieved '
          f'FLOP/s over this process\'s bf16 matmul FLOP/s: {result["mfu_vs_matmul"]:.3f}')
  print(f'async save blocking time over step time: {result["save_block_over_step"]:.3f} '
        f'(goal <= 0.1)')
  print(json.dumps(result, indent=2))
  if args.json:
    with open(args.json, 'w') as f:
      json.dump(result, f, indent=2)


if __name__ == '__main__':
  main()
