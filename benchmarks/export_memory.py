"""Peak host memory of `mm1_jax.export.to_pytorch` against its bound.

    python benchmarks/export_memory.py --workdir=RUN --out=OUT [--max_shard_size=1GB]
        [--dtype=float32] [--init=experiments/mm1_1b.py] [--override key=value ...]

With --init, first writes an initialised checkpoint of that config (with the overrides,
e.g. model.decoder.num_layers=8) into RUN in a separate process, so that the measured
process never held the model. Then exports RUN into OUT in this process and prints JSON:
the resident memory before the export (baseline), the peak (VmHWM), the largest output
shard, the largest stored array (a scanned stack is one array) and the largest output
tensor, the model's total size, and whether peak - baseline <= the bound

    2 x (largest shard + largest stored array) + ALLOWANCE

which is what a streaming export holds at most: a shard's tensors plus safetensors' copy of
them while it is written, and a block read from the checkpoint plus its copy converted to
the Hugging Face layout (transposed or cast). ALLOWANCE absorbs the allocator's slack.
The baseline is taken after the imports and after a warm-up that uses each library once
(reading one small parameter, writing a tiny safetensors file, building the abstract
model): their one-off costs (thread pools, caches; ~12 MiB) are not the export's. A
non-streaming export, which holds the whole model, exceeds the bound as soon as the model
is several times larger than it (`total_over_bound`).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys

sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _status_bytes(field: str) -> int:
  with open('/proc/self/status', encoding='ascii') as f:
    for line in f:
      if line.startswith(field + ':'):
        return int(line.split()[1]) * 1024  # kB
  raise RuntimeError(f'/proc/self/status has no {field}')


ALLOWANCE = 8 * 2**20


def _warm_up(workdir: str) -> None:
  """Uses once what the export uses, so that one-off costs land before the baseline."""
  import tempfile

  import ml_collections
  import numpy as np
  import safetensors.numpy
  from mm1_jax.export import to_pytorch
  from mm1_jax.export.checkpoint_reader import CheckpointReader
  reader = CheckpointReader(workdir)
  shapes = reader.shapes()
  to_pytorch.check_shapes(ml_collections.ConfigDict(reader.config()), shapes)
  smallest = min(shapes, key=lambda path: int(np.prod(shapes[path])))
  with tempfile.TemporaryDirectory() as scratch:
    safetensors.numpy.save_file({'warm_up': np.ascontiguousarray(reader.read(smallest))},
                                os.path.join(scratch, 'warm_up.safetensors'))
  del reader
  to_pytorch.release_memory()


def _reset_peak() -> None:
  """Starts the high-water mark (VmHWM) afresh at the current RSS (Linux >= 4.0). Not
  ru_maxrss: it survives exec, so a child of a big process (pytest) would inherit its peak."""
  with open('/proc/self/clear_refs', 'w', encoding='ascii') as f:
    f.write('5')


INIT = r'''
import ast, importlib.util, json, os, shutil, sys
import jax
from mm1_jax.parallel import mesh as mesh_lib
from mm1_jax.train import checkpoint as checkpoint_lib, optimizer as optimizer_lib
from mm1_jax.train import state as state_lib
config_file, workdir, tokenizer, overrides = sys.argv[1], sys.argv[2], sys.argv[3], sys.argv[4:]
path, _, arg = config_file.partition(':')
spec = importlib.util.spec_from_file_location('export_memory_config', path)
module = importlib.util.module_from_spec(spec)
spec.loader.exec_module(module)
config = module.get_config(arg or None)
for item in overrides:
  key, value = item.split('=', 1)
  node = config
  *parents, last = key.split('.')
  for p in parents:
    node = node[p]
  node[last] = ast.literal_eval(value)
config.mesh.update(data=1, fsdp=-1, tensor=1, expert=1)
mesh = mesh_lib.make_mesh(config.mesh)
settings = optimizer_lib.resolve_settings(config, state_lib.count_params(config))
tx = optimizer_lib.make_optimizer(config, settings)
layout = state_lib.make_layout(config, mesh, tx)
state = state_lib.init_state(config, layout, tx)
os.makedirs(workdir, exist_ok=True)
with open(os.path.join(workdir, 'config.json'), 'w') as f:
  f.write(config.to_json_best_effort(indent=2))
shutil.copyfile(tokenizer, os.path.join(workdir, 'tokenizer.model'))
c = checkpoint_lib.Checkpointer(os.path.join(workdir, 'checkpoints'), keep=1, use_async=False)
c.save(1, state, config=config)
c.close()
print(json.dumps({'params': layout.num_params}))
'''


def main() -> None:
  parser = argparse.ArgumentParser(description=__doc__.split('\n')[0])
  parser.add_argument('--workdir', required=True)
  parser.add_argument('--out', required=True)
  parser.add_argument('--max_shard_size', default='5GB')
  parser.add_argument('--dtype', default='float32')
  parser.add_argument('--init', default=None, help='config file[:variant] to initialise RUN')
  parser.add_argument('--tokenizer', default=None, help='tokenizer for --init')
  parser.add_argument('--override', nargs='*', default=[])
  args = parser.parse_args()
  if args.init and not args.tokenizer:
    parser.error('--init needs --tokenizer (a SentencePiece model to ship with the export)')
  if args.init:
    init = subprocess.run([sys.executable, '-c', INIT, args.init, args.workdir, args.tokenizer]
                          + args.override, check=True, capture_output=True, text=True)
    print(init.stdout.strip().splitlines()[-1], file=sys.stderr)

  # Everything the export imports, before the baseline.
  import jax  # noqa: F401
  import ml_dtypes  # noqa: F401
  import safetensors.numpy  # noqa: F401
  import tensorstore  # noqa: F401
  import tqdm  # noqa: F401
  from mm1_jax.export import from_hf, to_pytorch  # noqa: F401
  from mm1_jax.export.checkpoint_reader import CheckpointReader
  from mm1_jax.train import state  # noqa: F401
  import numpy as np

  _warm_up(args.workdir)
  _reset_peak()
  baseline = _status_bytes('VmRSS')
  summary = to_pytorch.convert(args.workdir, args.out, dtype=args.dtype,
                               max_shard_size=args.max_shard_size, show_progress=False)
  peak = _status_bytes('VmHWM')

  reader = CheckpointReader(args.workdir)
  itemsize = to_pytorch.numpy_dtype(args.dtype).itemsize
  stored = max(int(np.prod(s)) * reader.dtype(p).itemsize for p, s in reader.shapes().items())
  total = sum(int(np.prod(s)) * itemsize for s in reader.shapes().values())
  outputs = []
  for root, _, files in os.walk(args.out):
    outputs += [os.path.getsize(os.path.join(root, f)) for f in files if f.endswith('.safetensors')]
  from mm1_jax.export import naming
  import ml_collections
  config = ml_collections.ConfigDict(reader.config())
  tensor = max(int(np.prod(e.shape)) * itemsize
               for e in naming.plan(config.model, reader.shapes().items()))
  used = peak - baseline
  bound = 2 * (max(outputs) + stored) + ALLOWANCE
  print(json.dumps({
      'baseline_rss': baseline, 'peak_rss': peak, 'peak_minus_baseline': used,
      'largest_shard': max(outputs), 'largest_stored_array': stored,
      'largest_output_tensor': tensor, 'model_bytes': total, 'bound': bound,
      'within_bound': used <= bound, 'total_over_bound': total / bound,
      'files': summary['files']}))


if __name__ == '__main__':
  main()
