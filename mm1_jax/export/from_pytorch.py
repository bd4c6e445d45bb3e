"""The way back: an exported directory (to_pytorch.py) -> a training workdir.

    python -m mm1_jax.export.from_pytorch --in=/export/mm1_3b --workdir=/runs/mm1_3b_back

reads OUT/config.json, OUT/model.safetensors (or its shards and index) and the tokenizer,
checks every tensor against the model the config builds (a missing, unexpected or
misshapen tensor is named with both shapes), and writes WORKDIR as a run at the exported
step: config.json, tokenizer.model and checkpoints/<step> holding the parameters, a fresh
optimizer state and, when the config's data is present here, the data iterator at its
start. `mm1_jax.load(WORKDIR)` then gives the same outputs as the exported run; training
from it continues with a freshly initialised optimizer (its moments are not exported).

Float32 exports come back bit for bit; bfloat16 ones are widened to float32. WORKDIR is
assembled in a temporary sibling and renamed at the end, so a failure leaves no workdir
that looks complete.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

import ml_collections
import numpy as np

from mm1_jax.export import naming
from mm1_jax.export import safetensors_shards as shards
from mm1_jax.export import to_pytorch


class RestoreError(ValueError):
  """The exported directory does not make the model of its config; names the tensor."""


def read_export_config(directory: str) -> dict:
  path = os.path.join(directory, to_pytorch.CONFIG_FILE)
  if not os.path.exists(path):
    raise FileNotFoundError(f'{path} is missing: {directory} is not an export of '
                            f'mm1_jax.export.to_pytorch (or the export did not finish)')
  with open(path, encoding='utf-8') as f:
    exported = json.load(f)
  if exported.get('format') != to_pytorch.FORMAT:
    raise RestoreError(f'{path}: format={exported.get("format")!r}, expected '
                       f'{to_pytorch.FORMAT!r}')
  if exported.get('format_version', 0) > to_pytorch.FORMAT_VERSION:
    raise RestoreError(f'{path}: format_version {exported["format_version"]} is newer than '
                       f'this reader ({to_pytorch.FORMAT_VERSION})')
  return exported


def load_params(directory: str, config) -> dict:
  """The nested float32 parameters of MM1(config) from the directory's safetensors."""
  from mm1_jax.export.from_hf import _abstract_params
  tensors = shards.Tensors(directory)
  expected = {e.key: e.shape for e in naming.param_plan(config.model, _abstract_params(config))}
  for key, shape in expected.items():
    if key not in tensors.weight_map:
      raise RestoreError(f'tensor {key!r} (shape {shape}) is missing from {directory}')
    found = tensors.shape(key)
    if found != shape:
      raise RestoreError(f'tensor {key!r} has shape {found} in {directory}, the config '
                         f'needs {shape}')
  extra = sorted(set(tensors.weight_map) - set(expected))
  if extra:
    raise RestoreError(f'{directory} holds tensors the config does not build: {extra[:5]}')
  flat = {key: np.asarray(tensors.get(key)).astype(np.float32, copy=False)
          for key in expected}
  return naming.unflatten(flat, config.model)


def _iterator(config):
  """The data iterator at its start, when the config's data is present on this host."""
  root = os.path.expanduser(config.data.root)
  if not config.data.synthetic and not (root and os.path.isdir(root)):
    return None
  from data_pipelines import grain_pipeline
  from mm1_jax.train import trainer
  import jax
  trainer.prepare_data(config)
  return grain_pipeline.make_iterator(config, process_index=jax.process_index(),
                                      process_count=jax.process_count())


def restore(directory: str, workdir: str) -> dict:
  """Writes WORKDIR from the export in `directory`; returns a summary."""
  from mm1_jax.export.from_hf import save_checkpoint
  directory = os.path.abspath(os.path.expanduser(directory))
  workdir = os.path.abspath(os.path.expanduser(workdir))
  if os.path.exists(workdir) and os.listdir(workdir):
    raise FileExistsError(f'--workdir={workdir} exists and is not empty')
  exported = read_export_config(directory)
  config = ml_collections.ConfigDict(exported['mm1_config'])
  tokenizer = os.path.join(directory, exported.get('tokenizer_file', 'tokenizer.model'))
  if not os.path.exists(tokenizer):
    raise FileNotFoundError(f'{tokenizer} is missing (named by {directory}/config.json)')
  params = load_params(directory, config)
  step = int(exported['step'])

  parent = os.path.dirname(workdir)
  os.makedirs(parent, exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f'.{os.path.basename(workdir)}.partial-', dir=parent)
  try:
    with open(os.path.join(staging, 'config.json'), 'w', encoding='utf-8') as f:
      f.write(config.to_json_best_effort(indent=2))
    shutil.copyfile(tokenizer, os.path.join(staging, to_pytorch.TOKENIZER_FILE))
    iterator = _iterator(config)
    save_checkpoint(config, params, os.path.join(staging, 'checkpoints'), step=step,
                    iterator=iterator)
    if os.path.exists(workdir):
      os.rmdir(workdir)  # empty (checked above)
    to_pytorch.publish(staging, workdir)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return {'workdir': workdir, 'step': step, 'data_iterator': iterator is not None}


def main(argv) -> None:
  from absl import flags, logging
  del argv
  logging.set_verbosity(logging.WARNING)
  f = flags.FLAGS
  try:
    summary = restore(getattr(f, 'in'), f.workdir)
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  print(json.dumps(summary))


def run() -> None:
  from absl import app, flags
  flags.DEFINE_string('in', None, 'Directory written by mm1_jax.export.to_pytorch.')
  flags.DEFINE_string('workdir', None, 'Training workdir to create.')
  flags.mark_flags_as_required(['in', 'workdir'])
  app.run(main)


if __name__ == '__main__':
  run()
