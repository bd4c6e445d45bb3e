"""The synthetic world: the embedded default data and the test fixture (DESIGN.md 4b).

64x64 pictures of 1-3 coloured shapes on a plain light background, placed in the cells of
a 3x3 grid, and the three training kinds that describe them, each carrying its own skill:
captions ground the pictures, interleaved documents repeat a pattern over 2-4 pictures
(descriptions, `Question: ... Answer: ...` pairs, comparisons), and text-only documents
state the facts of the world (colours, shapes, corners, counting, arithmetic). Evaluation
sets come from their own seed streams, in the public COCO-captions and VQAv2 formats, and
include colour-shape compositions that no training source ever shows or names.

Layout of `generate(out_dir)`:
  captions/ interleaved/ text/        prepared sources (data_pipelines.sources)
  tokenizer/spm.model                 SentencePiece model (vocab_size 512 requested)
  eval/coco/annotations/captions_{val,support}.json, eval/coco/images/*.png
  eval/vqav2/v2_OpenEnded_mscoco_{val,support}_questions.json,
  eval/vqav2/v2_mscoco_{val,support}_annotations.json, eval/vqav2/images/*.png
  world.json                          seed, counts, vocabularies, held-out compositions
  .mm1_synthetic_world                written first: this directory is a synthetic world
  COMPLETE                            written last

Nothing the generator did not write is ever deleted or overwritten. `generate_atomically`
and `ensure` write only into a missing or empty directory or into a synthetic world (one
holding the `.mm1_synthetic_world` marker and nothing but the entries above); any other
directory raises `NotASyntheticWorld`, naming it, before anything is generated, and an
empty path is refused (it would mean the current directory).

The parts live in data_pipelines/synthetic_world/: world.py (scenes and pictures),
language.py (captions, questions, documents, facts), eval_sets.py (COCO and VQAv2 files).
"""

from __future__ import annotations

import contextlib
import errno
import fcntl
import json
import os
import shutil
import tempfile

from tqdm import tqdm

from data_pipelines import sources
from data_pipelines import tokenizer as tokenizer_lib
from data_pipelines.synthetic_world.eval_sets import (
    IMAGE_FILE_PATTERN, write_coco_split, write_json, write_vqa_split)
from data_pipelines.synthetic_world.language import (
    PROMPT_TEMPLATES, caption_examples, interleaved_examples, text_examples)
from data_pipelines.synthetic_world.world import (  # noqa: F401 (NUM_HELD_OUT: public)
    COLOURS, IMAGE_SIZE, NUM_HELD_OUT, POSITIONS, SHAPES, SIZES, Pairs, choose_held_out)

TOKENIZER_VOCAB_SIZE = 512
COMPLETE_MARKER = 'COMPLETE'
# Written first by `generate`: it says that the directory is the generator's own.
OWNER_MARKER = '.mm1_synthetic_world'
GENERATOR = 'data_pipelines.synthetic'
# Every name `generate` writes at the top of its directory; nothing else is the world's.
WORLD_ENTRIES = frozenset({OWNER_MARKER, 'captions', 'interleaved', 'text', 'eval',
                           'tokenizer', 'world.json', COMPLETE_MARKER})

DEFAULT_COUNTS = {
    'captions': 6000,
    'interleaved': 2000,
    'text': 2000,
    'coco_val_images': 200,
    'coco_support_images': 100,
    'vqa_val_questions': 300,
    'vqa_support_questions': 100,
}


def scaled_counts(scale: float) -> dict[str, int]:
  return {name: max(1, round(count * scale)) for name, count in DEFAULT_COUNTS.items()}


class _Recorded:
  """Passes examples through and keeps their texts (for training the tokenizer)."""

  def __init__(self, examples, texts: list):
    self._examples, self._texts = examples, texts

  def __iter__(self):
    for example in self._examples:
      for key in ('caption', 'text'):
        if key in example:
          self._texts.append(example[key])
      self._texts.extend(t for t in example.get('texts', ()) if t)
      yield example


class NotASyntheticWorld(FileExistsError):
  """A directory that holds something the generator did not write; it was left untouched."""


def generate(out_dir: str, seed: int = 0, *, scale: float = 1.0) -> None:
  """Writes the synthetic world into `out_dir` (missing or empty).

  The OWNER_MARKER comes first, COMPLETE last. `scale` multiplies every count (tests use
  small values). Same seed, same files.
  """
  out_dir = _checked_path(out_dir)
  if scale <= 0:
    raise ValueError(f'scale must be positive, got {scale}.')
  if os.path.isdir(out_dir) and os.listdir(out_dir):
    raise FileExistsError(f'{out_dir!r} is not empty; generate into a new directory.')
  os.makedirs(out_dir, exist_ok=True)
  write_json(os.path.join(out_dir, OWNER_MARKER),
             {'generator': GENERATOR, 'seed': seed, 'scale': scale})
  counts = scaled_counts(scale)
  held_out = choose_held_out(seed)
  train_pairs = Pairs(held_out, include_held_out=False)
  eval_pairs = Pairs(held_out, include_held_out=True)
  texts = []
  # Stages: three sources, eval sets, tokenizer, world.json.
  stages = tqdm(total=6, desc='synthetic world', unit='stage')
  for kind, examples in (
      ('captions', caption_examples(counts['captions'], seed, train_pairs)),
      ('interleaved', interleaved_examples(counts['interleaved'], seed, train_pairs)),
      ('text', text_examples(counts['text'], seed, train_pairs))):
    sources.write_source(kind, _Recorded(examples, texts), os.path.join(out_dir, kind))
    stages.update()

  eval_dir = os.path.join(out_dir, 'eval')
  eval_texts = []
  write_coco_split(eval_dir, 'val', counts['coco_val_images'], seed, eval_pairs, True,
              eval_texts)
  write_coco_split(eval_dir, 'support', counts['coco_support_images'], seed, train_pairs,
              False, eval_texts)
  write_vqa_split(eval_dir, 'val', counts['vqa_val_questions'], seed, eval_pairs, True,
             eval_texts)
  write_vqa_split(eval_dir, 'support', counts['vqa_support_questions'], seed, train_pairs,
             False, eval_texts)
  stages.update()

  # The eval texts only add the templates' words to the vocabulary; no model sees them.
  tokenizer = tokenizer_lib.train_tokenizer(
      texts + eval_texts, os.path.join(out_dir, 'tokenizer', 'spm.model'),
      TOKENIZER_VOCAB_SIZE)
  stages.update()

  write_json(os.path.join(out_dir, 'world.json'), {
      'seed': seed,
      'scale': scale,
      'counts': counts,
      'image_size': IMAGE_SIZE,
      'colours': {name: list(rgb) for name, rgb in COLOURS.items()},
      'shapes': list(SHAPES),
      'sizes': dict(SIZES),
      'positions': list(POSITIONS),
      'held_out': [list(pair) for pair in held_out],
      'prompt_templates': PROMPT_TEMPLATES,
      'image_file_pattern': IMAGE_FILE_PATTERN,
      'tokenizer_vocab_size': tokenizer.vocab_size,
  })
  with open(os.path.join(out_dir, COMPLETE_MARKER), 'w') as f:
    f.write('ok\n')
  stages.update()
  stages.close()


def is_complete(root: str) -> bool:
  return os.path.isfile(os.path.join(os.fspath(root), COMPLETE_MARKER))


def read_world(root: str) -> dict:
  """The world.json of a generated root."""
  with open(os.path.join(os.fspath(root), 'world.json'), encoding='utf-8') as f:
    return json.load(f)


def _checked_path(root) -> str:
  root = os.fspath(root)
  if not root.strip():
    raise ValueError('the synthetic world needs a directory, got an empty path (it would '
                     'be the current directory).')
  return root


def has_owner_marker(root: str) -> bool:
  """Whether `root` holds the marker that `generate` writes first (naming this generator)."""
  try:
    with open(os.path.join(os.fspath(root), OWNER_MARKER), encoding='utf-8') as f:
      marker = json.load(f)
  except (OSError, ValueError):
    return False
  return isinstance(marker, dict) and marker.get('generator') == GENERATOR


def check_can_generate_into(root: str) -> bool:
  """Raises unless the world may be written into `root`; returns whether `root` exists.

  Allowed: a missing or empty directory, or a synthetic world (complete or not): the
  OWNER_MARKER and nothing but WORLD_ENTRIES at its top. Anything else raises
  NotASyntheticWorld (or NotADirectoryError), naming it; nothing is changed.
  """
  root = _checked_path(root)
  if not os.path.lexists(root):
    return False
  if not os.path.isdir(root):
    raise NotADirectoryError(f'{root!r} is not a directory; nothing was changed. Generate '
                             'the synthetic world into an empty or missing directory.')
  entries = sorted(os.listdir(root))
  if not entries:
    return True
  if has_owner_marker(root):
    foreign = [name for name in entries if name not in WORLD_ENTRIES]
    what = 'is a synthetic world that also holds {}, which its generator did not write'
  else:
    foreign = entries
    what = f'is not empty and is not a synthetic world (no {OWNER_MARKER} marker): it holds {{}}'
  if foreign:
    shown = ', '.join(repr(name) for name in foreign[:3])
    if len(foreign) > 3:
      shown += f' and {len(foreign) - 3} more'
    raise NotASyntheticWorld(
        f'{root!r} {what.format(shown)}; nothing in it was changed. Generate the synthetic '
        'world into an empty or missing directory.')
  return True


@contextlib.contextmanager
def _generation_lock(directory: str):
  """Serialises the generators of one parent directory (an advisory flock on it).

  Where the file system has no such locks (some network file systems), runs unlocked.
  """
  fd = os.open(directory, os.O_RDONLY)
  try:
    try:
      fcntl.flock(fd, fcntl.LOCK_EX)
    except OSError:
      pass
    yield
  finally:
    os.close(fd)  # releases the lock


def _move_into(new_world: str, root: str) -> None:
  """Replaces the world entries of `root` (empty or a synthetic world) by `new_world`'s.

  COMPLETE goes first and comes back last, so a half-replaced world never looks complete;
  only names in WORLD_ENTRIES are removed, so nothing else can be lost.
  """
  names = sorted(os.listdir(new_world),
                 key=lambda name: (name != OWNER_MARKER, name == COMPLETE_MARKER))
  try:  # the marker first: from here on `root` is the generator's
    os.replace(os.path.join(new_world, names[0]), os.path.join(root, names[0]))
  except OSError as error:
    if error.errno != errno.EXDEV:
      raise
    raise OSError(error.errno, f'cannot move the generated world into {root!r}: it lies on '
                  'another file system than its parent directory; generate into a missing '
                  'directory below it instead') from error
  for name in [COMPLETE_MARKER, *sorted(WORLD_ENTRIES - {OWNER_MARKER, COMPLETE_MARKER})]:
    path = os.path.join(root, name)
    if os.path.isdir(path) and not os.path.islink(path):
      shutil.rmtree(path)
    elif os.path.lexists(path):
      os.remove(path)
  for name in names[1:]:
    os.replace(os.path.join(new_world, name), os.path.join(root, name))


def generate_atomically(root: str, seed: int = 0, *, scale: float = 1.0,
                        replace: bool = False) -> str:
  """Generates into a temporary directory beside `root`, then moves the world into place.

  `root` must be missing or empty or a synthetic world (see `check_can_generate_into`;
  anything else raises before any work). An existing complete `root` is kept unless
  `replace`; an incomplete synthetic world is replaced. A missing `root` appears in one
  rename; into an existing one the entries are moved, COMPLETE last. Generators of the
  same parent directory take turns, so two processes racing both succeed: the later one
  finds the earlier one's complete root.
  """
  root = os.path.abspath(_checked_path(root))
  target = os.path.realpath(root)  # a symlinked root is followed, never replaced
  parent = os.path.dirname(target)
  os.makedirs(parent, exist_ok=True)
  with _generation_lock(parent):
    if is_complete(target) and not replace:
      return root
    check_can_generate_into(target)
    tmp_dir = tempfile.mkdtemp(prefix=f'.{os.path.basename(target)}.generating-', dir=parent)
    try:
      generate(tmp_dir, seed, scale=scale)
      # Checked again: the directory may have changed while the world was generated.
      exists = check_can_generate_into(target)
      if not exists:
        try:
          os.rename(tmp_dir, target)
        except OSError:
          if not is_complete(target):  # another (unlocked) generator's root, unfinished
            raise
      elif replace or not is_complete(target):
        _move_into(tmp_dir, target)
    finally:
      shutil.rmtree(tmp_dir, ignore_errors=True)
  return root


def ensure(root: str, seed: int = 0) -> str:
  """Returns `root`, generating the default world there first unless it is complete.

  Generates only into a missing or empty directory or an incomplete synthetic world;
  any other directory raises NotASyntheticWorld (untouched), an empty path ValueError, a
  complete world of another seed ValueError.
  """
  root = _checked_path(root)
  if not is_complete(root):
    check_can_generate_into(root)  # before announcing (and before any work)
    print(f'Generating the synthetic world (seed {seed}) into {root} ...', flush=True)
    generate_atomically(root, seed)
  world_seed = read_world(root).get('seed')
  if world_seed != seed:
    raise ValueError(f'{root!r} holds the synthetic world of seed {world_seed}, not '
                     f'{seed}; use another directory or delete it.')
  return root
