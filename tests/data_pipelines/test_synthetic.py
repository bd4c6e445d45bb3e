"""The synthetic world: layout, determinism, eval formats, held-out compositions."""

import hashlib
import io
import json
import os
import threading

import numpy as np
import pytest
from PIL import Image

from data_pipelines import sources
from data_pipelines import synthetic
from data_pipelines import tokenizer as tokenizer_lib
from data_pipelines.synthetic_world import world as world_lib

SCALE = 0.02


@pytest.fixture(scope='module')
def world(tmp_path_factory):
  root = str(tmp_path_factory.mktemp('world') / 'synthetic')
  synthetic.generate(root, seed=3, scale=SCALE)
  return root


def _digest(root: str) -> str:
  """Hash of every record and every eval/tokenizer file of a world."""
  digest = hashlib.sha256()
  for kind in sources.KINDS:
    source = sources.open_source(os.path.join(root, kind), kind)
    for i in range(len(source)):
      digest.update(repr(sorted(source[i].items())).encode())
  for directory, _, files in sorted(os.walk(root)):
    if os.sep + 'eval' in directory or directory.endswith('tokenizer'):
      for name in sorted(files):
        with open(os.path.join(directory, name), 'rb') as f:
          digest.update(name.encode() + f.read())
  return digest.hexdigest()


def _load(root, *parts):
  with open(os.path.join(root, *parts), encoding='utf-8') as f:
    return json.load(f)


def test_layout(world):
  for kind in sources.KINDS:
    assert len(sources.open_source(os.path.join(world, kind), kind)) > 0
  for path in ('tokenizer/spm.model', 'world.json', 'COMPLETE', '.mm1_synthetic_world',
               'eval/coco/annotations/captions_val.json',
               'eval/coco/annotations/captions_support.json',
               'eval/vqav2/v2_OpenEnded_mscoco_val_questions.json',
               'eval/vqav2/v2_mscoco_val_annotations.json',
               'eval/vqav2/v2_OpenEnded_mscoco_support_questions.json',
               'eval/vqav2/v2_mscoco_support_annotations.json'):
    assert os.path.isfile(os.path.join(world, path)), path
  assert synthetic.is_complete(world) and synthetic.has_owner_marker(world)
  assert set(os.listdir(world)) == synthetic.WORLD_ENTRIES
  info = synthetic.read_world(world)
  assert info['seed'] == 3
  assert info['counts'] == synthetic.scaled_counts(SCALE)
  assert len(info['held_out']) == synthetic.NUM_HELD_OUT
  assert set(info['shapes']) >= {'circle', 'square', 'triangle'}


def test_counts_match_world_json(world):
  counts = synthetic.read_world(world)['counts']
  for kind in sources.KINDS:
    assert len(sources.open_source(os.path.join(world, kind))) == counts[kind]


def test_deterministic(world, tmp_path):
  again = str(tmp_path / 'again')
  synthetic.generate(again, seed=3, scale=SCALE)
  assert _digest(again) == _digest(world)
  other = str(tmp_path / 'other')
  synthetic.generate(other, seed=4, scale=SCALE)
  assert _digest(other) != _digest(world)


def test_images_are_64px_pngs(world):
  captions = sources.open_source(os.path.join(world, 'captions'))
  image = Image.open(io.BytesIO(captions[0]['image']))
  assert (image.format, image.size, image.mode) == ('PNG', (64, 64), 'RGB')


def test_interleaved_documents_aligned(world):
  documents = sources.open_source(os.path.join(world, 'interleaved'))
  for i in range(len(documents)):
    doc = documents[i]
    assert 2 <= sum(bool(b) for b in doc['images']) <= 4
    assert all(bool(t) != bool(b) for t, b in zip(doc['texts'], doc['images']))


def test_coco_captions_format(world):
  for split in ('val', 'support'):
    coco = _load(world, 'eval', 'coco', 'annotations', f'captions_{split}.json')
    assert {'info', 'images', 'annotations'} <= set(coco)
    image_ids = {image['id'] for image in coco['images']}
    for image in coco['images']:
      assert {'id', 'file_name', 'height', 'width'} <= set(image)
      assert os.path.isfile(os.path.join(world, 'eval', 'coco', 'images', image['file_name']))
    per_image = {}
    for annotation in coco['annotations']:
      assert annotation['image_id'] in image_ids and annotation['caption']
      per_image.setdefault(annotation['image_id'], []).append(annotation['caption'])
    assert set(per_image) == image_ids
    assert all(len(refs) == 5 for refs in per_image.values())
    assert len(set(ann['id'] for ann in coco['annotations'])) == len(coco['annotations'])


def test_vqa_format(world):
  for split in ('val', 'support'):
    questions = _load(world, 'eval', 'vqav2', f'v2_OpenEnded_mscoco_{split}_questions.json')
    annotations = _load(world, 'eval', 'vqav2', f'v2_mscoco_{split}_annotations.json')
    assert questions['task_type'] == 'Open-Ended' and questions['data_type'] == 'mscoco'
    assert questions['data_subtype'] == annotations['data_subtype'] == split
    by_id = {q['question_id']: q for q in questions['questions']}
    assert len(by_id) == len(questions['questions']) == len(annotations['annotations'])
    pattern = synthetic.read_world(world)['image_file_pattern']
    for annotation in annotations['annotations']:
      question = by_id[annotation['question_id']]
      assert question['image_id'] == annotation['image_id'] and question['question']
      assert annotation['answer_type'] in ('yes/no', 'number', 'other')
      assert annotation['question_type'] and annotation['multiple_choice_answer']
      assert len(annotation['answers']) == 10
      assert {tuple(sorted(a)) for a in annotation['answers']} == {
          ('answer', 'answer_confidence', 'answer_id')}
      file_name = pattern.format(split=split, image_id=annotation['image_id'])
      assert os.path.isfile(os.path.join(world, 'eval', 'vqav2', 'images', file_name))


def test_held_out_never_in_training(world):
  held_out = synthetic.read_world(world)['held_out']
  phrases = [f'{colour} {shape}' for colour, shape in held_out]
  texts = []
  for kind, keys in (('captions', ['caption']), ('text', ['text'])):
    source = sources.open_source(os.path.join(world, kind))
    texts += [source[i][key] for i in range(len(source)) for key in keys]
  documents = sources.open_source(os.path.join(world, 'interleaved'))
  texts += [t for i in range(len(documents)) for t in documents[i]['texts']]
  lowered = '\n'.join(texts).lower()
  assert not [phrase for phrase in phrases if phrase in lowered]
  # ... while the eval captions do show them.
  coco = _load(world, 'eval', 'coco', 'annotations', 'captions_val.json')
  eval_text = ' '.join(a['caption'] for a in coco['annotations']).lower()
  assert any(phrase in eval_text for phrase in phrases)


def test_held_out_scenes_never_sampled_for_training():
  held_out = synthetic.choose_held_out(0)
  pairs = world_lib.Pairs(held_out, include_held_out=False)
  rng = np.random.default_rng(0)
  for _ in range(2000):
    for obj in world_lib.sample_scene(rng, pairs):
      assert (obj['colour'], obj['shape']) not in held_out


def test_tokenizer_trained_on_the_world(world):
  tok = tokenizer_lib.Tokenizer(os.path.join(world, 'tokenizer', 'spm.model'))
  assert tok.vocab_size <= synthetic.TOKENIZER_VOCAB_SIZE
  text = 'Question: what colour is the circle? Answer: red'
  assert tok.decode(tok.encode(text)) == text


def test_generate_refuses_non_empty_dir(tmp_path):
  (tmp_path / 'file').write_text('x')
  with pytest.raises(FileExistsError):
    synthetic.generate(str(tmp_path), scale=SCALE)


@pytest.fixture
def small_generate(monkeypatch):
  """Counts the worlds generated (at the test scale) through `synthetic.generate`."""
  calls = []
  real_generate = synthetic.generate

  def generate(out_dir, seed=0, *, scale=1.0):
    calls.append(out_dir)
    real_generate(out_dir, seed, scale=SCALE)

  monkeypatch.setattr(synthetic, 'generate', generate)
  return calls


def test_ensure_generates_once_and_replaces_incomplete(tmp_path, small_generate, capsys):
  root = str(tmp_path / 'cache' / 'synthetic')
  os.makedirs(os.path.join(root, 'captions'))
  # What a killed `generate` leaves: its marker first, some entries, no COMPLETE.
  with open(os.path.join(root, synthetic.OWNER_MARKER), 'w') as f:
    json.dump({'generator': synthetic.GENERATOR, 'seed': 1}, f)
  (tmp_path / 'cache' / 'synthetic' / 'captions' / 'half-written').write_text('x')
  assert synthetic.ensure(root, seed=1) == root
  assert synthetic.is_complete(root) and synthetic.has_owner_marker(root)
  assert not os.path.exists(os.path.join(root, 'captions', 'half-written'))
  printed = capsys.readouterr().out
  assert 'Generating' in printed and root in printed
  assert synthetic.ensure(root, seed=1) == root
  assert len(small_generate) == 1
  assert sorted(os.listdir(tmp_path / 'cache')) == ['synthetic']  # no temp dirs left
  with pytest.raises(ValueError, match='seed'):
    synthetic.ensure(root, seed=2)


def test_ensure_fills_an_empty_directory_in_place(tmp_path, small_generate):
  root = tmp_path / 'empty'
  root.mkdir()
  inode = root.stat().st_ino
  synthetic.ensure(str(root), seed=0)
  assert synthetic.is_complete(root) and root.stat().st_ino == inode
  assert os.listdir(tmp_path) == ['empty']


def _snapshot(directory) -> dict:
  """{relative path: bytes} of every file below `directory`."""
  files = {}
  for parent, _, names in os.walk(directory):
    for name in names:
      path = os.path.join(parent, name)
      with open(path, 'rb') as f:
        files[os.path.relpath(path, directory)] = f.read()
  return files


def _user_directory(path):
  """A directory of the user's own: a source-like tree and a notes file."""
  (path / 'captions').mkdir(parents=True)
  (path / 'captions' / 'shard-0.tar').write_bytes(bytes(range(256)) * 4)
  (path / 'notes.txt').write_text('my own notes\n')
  return _snapshot(path)


@pytest.mark.parametrize('call', [
    lambda root: synthetic.ensure(root),
    lambda root: synthetic.generate_atomically(root),
    lambda root: synthetic.generate_atomically(root, replace=True),
])
def test_a_directory_with_user_files_is_refused_untouched(tmp_path, small_generate, call):
  root = tmp_path / 'mydata'
  before = _user_directory(root)
  with pytest.raises(synthetic.NotASyntheticWorld, match=r"mydata.*'captions', 'notes\.txt'"):
    call(str(root))
  assert _snapshot(root) == before  # every file still there, byte for byte
  assert sorted(os.listdir(root)) == ['captions', 'notes.txt']
  assert os.listdir(tmp_path) == ['mydata'] and not small_generate


def test_a_synthetic_world_holding_a_user_file_is_refused(tmp_path, small_generate):
  root = tmp_path / 'world'
  root.mkdir()
  with open(root / synthetic.OWNER_MARKER, 'w') as f:
    json.dump({'generator': synthetic.GENERATOR}, f)
  (root / 'mine.txt').write_text('mine')
  with pytest.raises(synthetic.NotASyntheticWorld, match="also holds 'mine.txt'"):
    synthetic.ensure(str(root))
  assert (root / 'mine.txt').read_text() == 'mine' and not small_generate


def test_an_empty_root_is_refused_and_the_current_directory_untouched(
    tmp_path, monkeypatch, small_generate):
  before = _user_directory(tmp_path)
  monkeypatch.chdir(tmp_path)
  for call in (synthetic.ensure, synthetic.generate_atomically):
    for root in ('', '  '):
      with pytest.raises(ValueError, match='empty path'):
        call(root)
  assert _snapshot(tmp_path) == before and not small_generate
  assert sorted(os.listdir(tmp_path)) == ['captions', 'notes.txt']


def test_racing_generators_both_succeed(tmp_path):
  root = str(tmp_path / 'synthetic')
  results, errors = [], []

  def worker():
    try:
      results.append(synthetic.generate_atomically(root, seed=2, scale=0.01))
    except Exception as error:  # pylint: disable=broad-except
      errors.append(error)

  threads = [threading.Thread(target=worker) for _ in range(2)]
  for thread in threads:
    thread.start()
  for thread in threads:
    thread.join()
  assert not errors and results == [root, root]
  assert synthetic.is_complete(root)
  assert os.listdir(tmp_path) == ['synthetic']
