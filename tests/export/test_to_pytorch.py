"""to_pytorch / from_pytorch: a tiny checkpoint out to safetensors and Hugging Face formats
and back.

The workdir holds checkpoint 7 of a tiny MM1 (scanned ViT and decoder, CLIP-like ViT)
with every parameter drawn at random, sharded over 8 devices (fsdp): Orbax stores each
array in 8 chunks, which the exporter reads one at a time. Exported, the
round trip JAX -> PyTorch files -> JAX is exact: the same parameter bits and identical
`mm1_jax.load(...).forward` logits on packed rows with images. transformers'
LlamaForCausalLM on OUT/hf_llm gives our logits on text-only rows and CLIPVisionModel on
OUT/hf_vision our image features (max abs diff at most 1e-4, float32). Sharded output
reads back equal; the export streams: its peak memory stays within 2 x (its largest shard
+ its largest stored array) + 8 MiB (benchmarks/export_memory.py, in a subprocess) on a
model over 3 times that size; bad input fails naming the problem and leaves no output
directory.
"""

import json
import os
import shutil
import subprocess
import sys

import jax
import ml_dtypes
import numpy as np
import pytest

torch = pytest.importorskip('torch')
transformers = pytest.importorskip('transformers')
pytest.importorskip('safetensors')

import mm1_jax  # noqa: E402
from experiments import tiny  # noqa: E402
from mm1_jax.export import from_hf, from_pytorch, naming, to_pytorch  # noqa: E402
from mm1_jax.export import safetensors_shards as shards  # noqa: E402
from mm1_jax.export.checkpoint_reader import CheckpointError, CheckpointReader  # noqa: E402
from mm1_jax.models.vit import normalize_pixels  # noqa: E402

TOLERANCE = 1e-4
STEP = 7
ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _config(synthetic_root):
  config = tiny.get_config('smoke')
  config.data.root = synthetic_root
  config.data.synthetic = False
  config.model.vit.update(depth=3, activation='quick_gelu', use_class_token=True,
                          drop_class_token=True, feature_layer=-2, final_norm=False,
                          scan_layers=True)
  config.model.decoder.update(num_layers=2, scan_layers=True)
  config.mesh.update(data=1, fsdp=-1)  # parameters sharded over the 8 devices
  return config


def _write_run(config, workdir: str, seed: int) -> None:
  """WORKDIR with checkpoint STEP of randomly perturbed parameters (no zero bias or unit
  scale that could hide a mapping error)."""
  from mm1_jax.train import trainer
  rng = np.random.default_rng(seed)

  def draw(path, leaf):
    centre = 1.0 if jax.tree_util.keystr(path).endswith("['scale']") else 0.0
    return (centre + rng.normal(0, 0.2, leaf.shape)).astype(np.float32)

  params = jax.tree_util.tree_map_with_path(draw, from_hf._abstract_params(config))
  trainer.prepare_workdir(config, workdir)
  from_hf.save_checkpoint(config, params, os.path.join(workdir, 'checkpoints'), step=STEP)


@pytest.fixture(scope='module')
def run(synthetic_root, tmp_path_factory):
  config = _config(synthetic_root)
  workdir = str(tmp_path_factory.mktemp('export') / 'run')
  _write_run(config, workdir, seed=0)
  return config, workdir


@pytest.fixture(scope='module')
def exported(run, tmp_path_factory):
  _, workdir = run
  out = str(tmp_path_factory.mktemp('export_out') / 'out')
  to_pytorch.convert(workdir, out, show_progress=False)
  return out


@pytest.fixture(scope='module')
def original(run):
  return mm1_jax.load(run[1])


def _packed_batch(seed=0):
  """Two rows: two documents packed in row 0 (images in both), one in row 1 with an
  invalid second image slot; padding at the ends."""
  rng = np.random.default_rng(seed)
  image = [4] * 4  # <image> x K
  doc_a = [2, 10, 11] + image + [12, 13]
  doc_b = [2, 20] + image + [21, 22, 23]
  doc_c = [2, 30] + image + [31, 32, 33, 34]
  length = 24
  tokens = np.zeros((2, length), np.int32)
  segments = np.zeros((2, length), np.int32)
  positions = np.zeros((2, length), np.int32)
  for row, docs in enumerate([[doc_a, doc_b], [doc_c]]):
    at = 0
    for segment, doc in enumerate(docs, start=1):
      tokens[row, at:at + len(doc)] = doc
      segments[row, at:at + len(doc)] = segment
      positions[row, at:at + len(doc)] = np.arange(len(doc))
      at += len(doc)
  return dict(tokens=tokens, segment_ids=segments, positions=positions,
              images=rng.integers(0, 256, (2, 2, 32, 32, 3), np.uint8),
              image_valid=np.array([[True, True], [True, False]]))


def _no_partial_left(path: str) -> None:
  parent, name = os.path.split(path)
  assert not os.path.exists(path)
  assert not [n for n in os.listdir(parent) if n.startswith(f'.{name}.partial')]


# ---------------------------------------------------------------------- the export


def test_export_layout(run, exported):
  config, _ = run
  with open(os.path.join(exported, 'config.json')) as f:
    meta = json.load(f)
  assert meta['format'] == to_pytorch.FORMAT and meta['step'] == STEP
  assert meta['model'] == config.model.to_dict()
  assert meta['weights'] == 'model.safetensors' and meta['hf_llm'] == 'hf_llm'
  assert meta['hf_vision'] == 'hf_vision'
  assert os.path.exists(os.path.join(exported, meta['tokenizer_file']))
  reader = CheckpointReader(run[1])
  plan = naming.plan(config.model, reader.shapes().items())
  tensors = shards.Tensors(exported)
  assert sorted(tensors.names()) == sorted(e.key for e in plan)
  for entry in plan:  # every tensor is exactly the stored parameter (row)
    np.testing.assert_array_equal(tensors.get(entry.key),
                                  reader.read(entry.source, entry.index))


def test_round_trip_is_exact(run, exported, original, tmp_path):
  back = str(tmp_path / 'back')
  summary = from_pytorch.restore(exported, back)
  assert summary['step'] == STEP
  before, after = CheckpointReader(run[1]), CheckpointReader(back)
  assert after.step == STEP and before.shapes() == after.shapes()
  for path in before.shapes():
    a, b = before.read(path), after.read(path)
    assert a.dtype == b.dtype and a.tobytes() == b.tobytes(), naming.join(path)
  restored = mm1_jax.load(back)
  batch = _packed_batch()
  logits = original.forward(batch)
  assert np.array_equal(logits, restored.forward(batch))
  assert np.isfinite(logits).all()


def test_hf_llm_matches_decoder(exported, original):
  llama = transformers.LlamaForCausalLM.from_pretrained(
      os.path.join(exported, 'hf_llm')).eval()
  tokens = np.random.default_rng(1).integers(5, 512, (2, 16)).astype(np.int32)
  with torch.no_grad():
    expected = llama(torch.from_numpy(tokens).long()).logits.numpy()
  batch = dict(tokens=tokens, segment_ids=np.ones_like(tokens),
               positions=np.broadcast_to(np.arange(16, dtype=np.int32), tokens.shape),
               images=np.zeros((2, 0, 32, 32, 3), np.uint8),
               image_valid=np.zeros((2, 0), bool))
  error = float(np.max(np.abs(original.forward(batch) - expected)))
  print(f'hf_llm LlamaForCausalLM vs decoder: max abs diff {error:.2e}')
  assert error <= TOLERANCE


def test_hf_vision_matches_vit(exported, original):
  clip = transformers.CLIPVisionModel.from_pretrained(
      os.path.join(exported, 'hf_vision')).eval()
  images = np.random.default_rng(2).integers(0, 256, (3, 32, 32, 3), np.uint8)
  pixels = torch.from_numpy(np.array(normalize_pixels(images))).permute(0, 3, 1, 2)
  with torch.no_grad():
    hidden = clip(pixel_values=pixels).last_hidden_state.numpy()
  ours = original.image_features(list(images))
  error = float(np.max(np.abs(ours - hidden[:, 1:])))  # drop_class_token
  print(f'hf_vision CLIPVisionModel vs ViT features: max abs diff {error:.2e}')
  assert ours.shape == hidden[:, 1:].shape and error <= TOLERANCE


def test_sharded_and_bfloat16_read_back(run, exported, tmp_path):
  limit = 100_000
  out = str(tmp_path / 'sharded')
  summary = to_pytorch.convert(run[1], out, max_shard_size=limit, show_progress=False)
  with open(os.path.join(out, 'model.safetensors.index.json')) as f:
    index = json.load(f)
  files = sorted(set(index['weight_map'].values()))
  assert len(files) > 2 and files == sorted(summary['files'])
  whole = shards.Tensors(exported)
  sharded = shards.Tensors(out)
  total = 0
  for file in files:
    names = [n for n, f in index['weight_map'].items() if f == file]
    sizes = [whole.get(n).nbytes for n in names]
    assert sum(sizes) <= limit or len(names) == 1, file
    total += sum(sizes)
  assert index['metadata']['total_size'] == total
  for name in whole.names():
    np.testing.assert_array_equal(sharded.get(name), whole.get(name))
  assert os.path.exists(os.path.join(out, 'hf_llm', 'model.safetensors.index.json'))

  half = str(tmp_path / 'bf16')
  to_pytorch.convert(run[1], half, dtype='bfloat16', show_progress=False)
  low = shards.Tensors(half)
  for name in whole.names():
    value = low.get(name)
    assert value.dtype == ml_dtypes.bfloat16
    assert value.tobytes() == whole.get(name).astype(ml_dtypes.bfloat16).tobytes()


# Four unscanned layers of 34 MiB (each stored array one layer's matrix, 8 MiB at most):
# 143 MiB in all, 3.4 x the bound (42 MiB; the ratio depends on shapes only); the
# streaming export peaks at about 35 MiB, one that holds the model at over 200 MiB.
WIDE_DECODER = dict(d_model=1024, num_heads=8, num_kv_heads=2, d_ff=2048, num_layers=4,
                    scan_layers=False)
MIN_TOTAL_OVER_BOUND = 3


def test_peak_memory_within_bound(synthetic_root, tmp_path):
  """peak RSS - baseline <= 2 x (largest shard + largest stored array) + 8 MiB, measured in
  a subprocess (benchmarks/export_memory.py), on a model so much larger than that bound
  that an export holding it whole could not pass."""
  config = _config(synthetic_root)
  config.model.decoder.update(WIDE_DECODER)
  workdir, out = str(tmp_path / 'run'), str(tmp_path / 'out')
  _write_run(config, workdir, seed=1)
  result = subprocess.run(
      [sys.executable, os.path.join(ROOT, 'benchmarks', 'export_memory.py'),
       f'--workdir={workdir}', f'--out={out}', '--max_shard_size=10MB'],
      cwd=ROOT, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  figures = json.loads(result.stdout.strip().splitlines()[-1])
  print('export memory:', {k: v for k, v in figures.items() if k != 'files'})
  assert len(figures['files']) > 1
  assert figures['model_bytes'] >= MIN_TOTAL_OVER_BOUND * figures['bound']
  assert figures['peak_minus_baseline'] <= figures['bound']


# ---------------------------------------------------------------------- bad input


def test_missing_step_lists_the_available_ones(run, tmp_path):
  out = str(tmp_path / 'out')
  with pytest.raises(CheckpointError, match=rf'step 99 .*available steps: \[{STEP}\]'):
    to_pytorch.convert(run[1], out, step=99, show_progress=False)
  _no_partial_left(out)
  result = subprocess.run(
      [sys.executable, '-m', 'mm1_jax.export.to_pytorch', f'--workdir={run[1]}',
       f'--out={out}', '--step=99'], cwd=ROOT, capture_output=True, text=True, timeout=300)
  assert result.returncode == 2 and f'available steps: [{STEP}]' in result.stderr
  _no_partial_left(out)
  with pytest.raises(CheckpointError, match='checkpoints does not exist'):
    to_pytorch.convert(str(tmp_path), out, show_progress=False)


def test_failed_export_leaves_no_output(run, exported, tmp_path, monkeypatch):
  with pytest.raises(to_pytorch.ExportError, match='exists'):
    to_pytorch.convert(run[1], exported, show_progress=False)
  calls = []
  read = CheckpointReader.read

  def failing_read(self, path, rows=None):
    calls.append(path)
    if len(calls) > 5:
      raise OSError('disk went away')
    return read(self, path, rows)

  monkeypatch.setattr(CheckpointReader, 'read', failing_read)
  out = str(tmp_path / 'out')
  with pytest.raises(OSError, match='disk went away'):
    to_pytorch.convert(run[1], out, max_shard_size=50_000, show_progress=False)
  _no_partial_left(out)


def _copy(exported, tmp_path, name):
  path = str(tmp_path / name)
  shutil.copytree(exported, path)
  return path


def test_damaged_exports_name_the_problem(run, exported, tmp_path):
  sharded = str(tmp_path / 'sharded')
  to_pytorch.convert(run[1], sharded, max_shard_size=100_000, hf=False, show_progress=False)
  workdir = str(tmp_path / 'back')

  files = sorted(f for f in os.listdir(sharded) if f.endswith('.safetensors'))
  victim = os.path.join(sharded, files[1])
  with open(victim, 'rb') as f:
    data = f.read()
  with open(victim, 'wb') as f:
    f.write(data[:len(data) // 2])
  with pytest.raises(shards.SafetensorsError, match=os.path.basename(victim) + '.*truncated'):
    from_pytorch.restore(sharded, workdir)
  _no_partial_left(workdir)

  os.remove(victim)
  with pytest.raises(shards.SafetensorsError, match=os.path.basename(victim) + ' is missing'):
    from_pytorch.restore(sharded, workdir)
  _no_partial_left(workdir)

  mismatched = _copy(exported, tmp_path, 'mismatched')
  with open(os.path.join(mismatched, 'config.json')) as f:
    meta = json.load(f)
  meta['mm1_config']['model']['decoder']['d_ff'] = 256
  with open(os.path.join(mismatched, 'config.json'), 'w') as f:
    json.dump(meta, f)
  with pytest.raises(from_pytorch.RestoreError,
                     match=r"tensor 'decoder\.layers\.0\.mlp\.\w+\.kernel' has shape "
                           r"\((384, 128|128, 384)\) .* needs \((256, 128|128, 256)\)"):
    from_pytorch.restore(mismatched, workdir)
  _no_partial_left(workdir)

  unfinished = _copy(exported, tmp_path, 'unfinished')
  os.remove(os.path.join(unfinished, 'config.json'))
  with pytest.raises(FileNotFoundError, match='config.json is missing'):
    from_pytorch.restore(unfinished, workdir)
  _no_partial_left(workdir)


def test_checkpoint_that_does_not_fit_its_config(run, tmp_path):
  workdir = str(tmp_path / 'run')
  shutil.copytree(run[1], workdir)
  stored = os.path.join(workdir, 'checkpoints', str(STEP), 'config', 'metadata')
  with open(stored) as f:
    config = json.load(f)
  config['model']['decoder']['d_ff'] = 256
  with open(stored, 'w') as f:
    json.dump(config, f)
  out = str(tmp_path / 'out')
  with pytest.raises(to_pytorch.ExportError,
                     match=r'parameter decoder\.layers\.mlp\.\w+\.kernel: the checkpoint holds '
                           r'shape \(2, \d+, \d+\), the config needs \(2, \d+, \d+\)'):
    to_pytorch.convert(workdir, out, show_progress=False)
  _no_partial_left(out)
