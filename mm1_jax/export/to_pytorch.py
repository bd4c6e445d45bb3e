"""Export a training checkpoint for PyTorch: safetensors, config and tokenizer.

    python -m mm1_jax.export.to_pytorch --workdir=/runs/mm1_3b --out=/export/mm1_3b \\
        [--step=N] [--dtype=float32|bfloat16] [--max_shard_size=5GB]

writes OUT/
  config.json         {"format": "mm1-jax-pytorch", "format_version", "model": the resolved
                      model config, "dtype", "step", "tokenizer_file", "weights",
                      "mm1_config": the whole training config, "hf_llm"/"hf_vision": the
                      subdirectory or why there is none}
  model.safetensors   every parameter under its canonical key (mm1_jax/export/naming.py),
                      or model-0000i-of-0000N.safetensors + model.safetensors.index.json
                      above --max_shard_size (as Hugging Face shards)
  tokenizer.model     the run's SentencePiece model
  hf_llm/             a dense decoder as a transformers LlamaForCausalLM directory
  hf_vision/          the ViT as a transformers CLIPVisionModel directory, when it is one
which mm1_jax/export/torch_model.py (`MM1ForCausalLM.from_pretrained(OUT)`) loads, and
`python -m mm1_jax.export.from_pytorch` turns back into a workdir.

Streaming: only the checkpoint's parameters are read (never the optimizer state), one
stored chunk at a time into one parameter or a block of rows of a scanned stack (at most
max_shard_size / 10 bytes; checkpoint_reader.py), and each output shard is written and
dropped before the next one's tensors are read. The host memory needed is about one output
shard plus one block plus one stored chunk, whatever the model size; measured, the
serialisation and the Hugging Face layout each copy once more (benchmarks/export_memory.py:
peak - baseline after a warm-up <= 2 x (largest shard + largest stored array) + 8 MiB,
independent of the number of layers). Orbax's chunks are the devices' shards of each array: a checkpoint saved by one
device has one chunk per array, so a scanned stack is decoded whole (once per block).
Everything is written into a temporary sibling of OUT that is renamed to OUT last: an
interrupted or failed export never leaves OUT looking complete.

Standard formats: hf_llm only for a dense decoder (no transformers architecture computes
our MoE decoders exactly, see the README); hf_vision only when
the ViT is exactly CLIP's (class token, a CLIP activation). Our ViT's output is CLIP's
`last_hidden_state` (hf_vision keeps only the blocks up to `feature_layer`), followed by
`post_layernorm` when `model.vit.final_norm` (else post_layernorm is the identity), with
the class token dropped when `model.vit.drop_class_token`.
"""

from __future__ import annotations

import json
import os
import shutil
import sys
import tempfile

import ml_collections
import numpy as np

from mm1_jax.export import hf_clip, hf_llama, naming
from mm1_jax.export import safetensors_shards as shards
from mm1_jax.export.checkpoint_reader import CheckpointError, CheckpointReader

FORMAT = 'mm1-jax-pytorch'
FORMAT_VERSION = 1
CONFIG_FILE = 'config.json'
TOKENIZER_FILE = 'tokenizer.model'
DEFAULT_MAX_SHARD_SIZE = '5GB'
# Rows of a stacked parameter are read in blocks of at most max_shard_size / BLOCK_FRACTION.
BLOCK_FRACTION = 10


class ExportError(ValueError):
  """The checkpoint cannot be exported as asked; the message names the parameter or key."""


def numpy_dtype(name: str):
  if name == 'float32':
    return np.dtype(np.float32)
  if name == 'bfloat16':
    import ml_dtypes
    return np.dtype(ml_dtypes.bfloat16)
  raise ExportError(f'--dtype={name!r}: expected float32 or bfloat16')


class SourceCache:
  """Hands out stored parameters and their rows, reading each from the checkpoint in
  blocks of at most `block_bytes` (one row at least) and keeping only the latest block.

  Callers ask in source order (a stacked parameter's rows consecutively), so a parameter
  that fits the budget is read exactly once. Rows are views: a block stays alive only while
  a shard being built still holds some of its rows.
  """

  def __init__(self, reader: CheckpointReader, dtype, block_bytes: int):
    self.reader = reader
    self.dtype = dtype
    self.block_bytes = block_bytes
    self._shapes = reader.shapes()
    self._path = None
    self._start = None  # first row of the block held; None: the whole parameter
    self._block = None

  def _holds(self, path: tuple, index: int | None) -> bool:
    if path != self._path:
      return False
    if index is None:
      return self._start is None
    return self._start is not None and self._start <= index < self._start + len(self._block)

  def get(self, path: tuple, index: int | None) -> np.ndarray:
    if not self._holds(path, index):
      self._block = None  # drop ours before reading the next block
      if index is None:
        self._block, self._start = self.reader.read(path), None
      else:
        shape = self._shapes[path]
        row_bytes = int(np.prod(shape[1:])) * self.reader.dtype(path).itemsize
        count = max(1, self.block_bytes // max(row_bytes, 1))
        self._block, self._start = self.reader.read(path, slice(index, index + count)), index
      self._path = path
    value = self._block if index is None else self._block[index - self._start]
    return value.astype(self.dtype, copy=False)


def release_memory() -> None:
  """Hands freed heap memory back to the OS (glibc keeps it in per-thread arenas, which
  TensorStore's reader threads would otherwise grow shard after shard)."""
  try:
    import ctypes
    ctypes.CDLL('libc.so.6').malloc_trim(0)
  except (OSError, AttributeError):
    pass  # not glibc: nothing to do


def check_shapes(config, stored: dict) -> None:
  """The checkpoint's parameters are exactly the model of its config (names and shapes)."""
  from mm1_jax.export.from_hf import _abstract_params
  expected = {path: tuple(leaf.shape) for path, leaf in naming.leaves(_abstract_params(config))}
  for path, shape in expected.items():
    if path not in stored:
      raise ExportError(f'the checkpoint has no parameter {naming.join(path)} which the '
                        f'config (shape {shape}) needs')
    if stored[path] != shape:
      raise ExportError(f'parameter {naming.join(path)}: the checkpoint holds shape '
                        f'{stored[path]}, the config needs {shape}')
  extra = sorted(naming.join(p) for p in stored if p not in expected)
  if extra:
    raise ExportError(f'the checkpoint has parameters the config does not build: {extra[:5]}')


def hf_llm_problem(config) -> str | None:
  if config.model.moe.get('num_experts', 0):
    return ('MoE decoder (model.moe.num_experts > 0): no transformers architecture computes '
            'it exactly (see the README); use torch_model.MM1ForCausalLM')
  return None


def _write_hf(directory: str, hf_config: dict, maps, extra: dict, cache: SourceCache,
              dtype, max_shard_size: int, progress) -> None:
  """An HF model directory from (our parameter -> HF tensor) maps plus `extra` tensors."""
  os.makedirs(directory)
  # Source order, so that each stored array is read once (HF does not care about order).
  order = {path: i for i, path in enumerate(cache.reader.arrays)}
  maps = sorted(maps, key=lambda m: (order[m.ours], m.index or 0))
  by_name = {m.hf: m for m in maps}
  stored = cache.reader.shapes()
  sizes = [(m.hf, int(np.prod(_row_shape(stored, m))) * dtype.itemsize) for m in maps]
  sizes += [(name, value.astype(dtype).nbytes) for name, value in extra.items()]

  def produce(name):
    if name in extra:
      return extra[name].astype(dtype)
    m = by_name[name]
    value = cache.get(m.ours, m.index)
    return value if m.to_hf is None else m.to_hf(value)

  shards.write(directory, sizes, produce, max_shard_size=max_shard_size,
               on_tensor=lambda _, n: progress.update(n), after_shard=release_memory)
  with open(os.path.join(directory, CONFIG_FILE), 'w', encoding='utf-8') as f:
    json.dump(hf_config, f, indent=2)


def _row_shape(stored: dict, m) -> tuple[int, ...]:
  shape = stored.get(m.ours)
  if shape is None:
    raise ExportError(f'the checkpoint has no parameter {naming.join(m.ours)} for {m.hf}')
  return shape if m.index is None else shape[1:]


def publish(staging: str, final: str) -> None:
  """Gives the staging directory ordinary permissions (mkdtemp makes it private) and
  renames it to `final`: the last step of a write that must never look complete early."""
  mask = os.umask(0)
  os.umask(mask)
  for root, dirs, files in os.walk(staging):
    os.chmod(root, 0o777 & ~mask)
    for name in files:
      os.chmod(os.path.join(root, name), 0o666 & ~mask)
  os.rename(staging, final)


def convert(workdir: str, out: str, *, step: int | None = None, dtype: str = 'float32',
            max_shard_size: int | str = DEFAULT_MAX_SHARD_SIZE, hf: bool = True,
            show_progress: bool = True) -> dict:
  """Exports WORKDIR's checkpoint (latest or `step`) into OUT; returns a summary."""
  from tqdm import tqdm
  out = os.path.abspath(os.path.expanduser(out))
  if os.path.exists(out):
    raise ExportError(f'--out={out} exists; remove it or choose another directory')
  limit = shards.parse_size(max_shard_size)
  target = numpy_dtype(dtype)
  reader = CheckpointReader(workdir, step)
  config = ml_collections.ConfigDict(reader.config())
  stored = reader.shapes()
  check_shapes(config, stored)
  tokenizer = os.path.join(reader.workdir, TOKENIZER_FILE)
  if not os.path.exists(tokenizer):
    raise ExportError(f'{tokenizer} is missing: the workdir has no tokenizer')

  entries = naming.plan(config.model, stored.items())
  sizes = [(e.key, int(np.prod(e.shape)) * target.itemsize) for e in entries]
  by_key = {e.key: e for e in entries}
  llm_problem = hf_llm_problem(config) if hf else 'not asked for (hf=False)'
  vision_problem = hf_clip.export_problem(config.model.vit) if hf else 'not asked for'
  total = sum(n for _, n in sizes) * (1 + (llm_problem is None) + (vision_problem is None))

  os.makedirs(os.path.dirname(out), exist_ok=True)
  staging = tempfile.mkdtemp(prefix=f'.{os.path.basename(out)}.partial-',
                             dir=os.path.dirname(out))
  try:
    cache = SourceCache(reader, target, block_bytes=limit // BLOCK_FRACTION)
    with tqdm(total=total, unit='B', unit_scale=True, desc='export',
              disable=not show_progress, dynamic_ncols=True) as progress:
      files = shards.write(
          staging, sizes, lambda key: cache.get(by_key[key].source, by_key[key].index),
          max_shard_size=limit, on_tensor=lambda _, n: progress.update(n),
          after_shard=release_memory)
      if llm_problem is None:
        dec = config.model.decoder
        hf_config = hf_llama.export_config(
            dec, max_position_embeddings=int(config.data.seq_len), bos_token_id=2,
            eos_token_id=3, dtype=dtype)
        llm_maps = [m._replace(ours=('decoder',) + m.ours) for m in hf_llama.tensor_map(dec)]
        _write_hf(os.path.join(staging, 'hf_llm'), hf_config, llm_maps, {}, cache, target,
                  limit, progress)
      if vision_problem is None:
        vit = config.model.vit
        vision_maps = [m._replace(ours=('vit',) + m.ours) for m in hf_clip.tensor_map(vit)]
        identity = {} if vit.final_norm else {
            'post_layernorm.weight': np.ones(vit.width, np.float32),
            'post_layernorm.bias': np.zeros(vit.width, np.float32)}
        _write_hf(os.path.join(staging, 'hf_vision'), hf_clip.export_config(vit, dtype),
                  vision_maps, identity, cache, target, limit, progress)
    shutil.copyfile(tokenizer, os.path.join(staging, TOKENIZER_FILE))
    summary = {
        'format': FORMAT, 'format_version': FORMAT_VERSION, 'step': reader.step,
        'dtype': dtype, 'tokenizer_file': TOKENIZER_FILE,
        'weights': files[0] if len(files) == 1 else shards.index_name('model'),
        'hf_llm': 'hf_llm' if llm_problem is None else None,
        'hf_vision': 'hf_vision' if vision_problem is None else None,
        'hf_llm_missing_because': llm_problem, 'hf_vision_missing_because': vision_problem,
        'model': config.model.to_dict(), 'mm1_config': config.to_dict()}
    # config.json last, then the rename: OUT exists only once it is complete.
    with open(os.path.join(staging, CONFIG_FILE), 'w', encoding='utf-8') as f:
      json.dump(summary, f, indent=2)
    publish(staging, out)
  except BaseException:
    shutil.rmtree(staging, ignore_errors=True)
    raise
  return {'out': out, 'step': reader.step, 'dtype': dtype, 'files': files,
          'hf_llm': llm_problem is None, 'hf_vision': vision_problem is None}


def main(argv) -> None:
  from absl import flags, logging
  del argv
  logging.set_verbosity(logging.WARNING)
  f = flags.FLAGS
  try:
    summary = convert(f.workdir, f.out, step=f.step, dtype=f.dtype,
                      max_shard_size=f.max_shard_size, hf=f.hf)
  except (CheckpointError, ExportError, naming.NamingError, ValueError,
          FileNotFoundError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  print(json.dumps(summary))


def run() -> None:
  from absl import app, flags
  flags.DEFINE_string('workdir', None, 'Training workdir (reads WORKDIR/checkpoints).')
  flags.DEFINE_string('out', None, 'Output directory to create.')
  flags.DEFINE_integer('step', None, 'Checkpoint step (default: the latest).')
  flags.DEFINE_enum('dtype', 'float32', ['float32', 'bfloat16'], 'Tensor dtype written.')
  flags.DEFINE_string('max_shard_size', DEFAULT_MAX_SHARD_SIZE,
                      'Largest safetensors file (e.g. 5GB, 500MB); larger models are sharded.')
  flags.DEFINE_bool('hf', True, 'Also write hf_llm/ and hf_vision/ where they fit exactly.')
  flags.mark_flags_as_required(['workdir', 'out'])
  app.run(main)


if __name__ == '__main__':
  run()
