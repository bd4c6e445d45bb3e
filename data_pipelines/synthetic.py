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
  COMPLETE                            written last

The parts live in data_pipelines/synthetic_world/: world.py (scenes and pictures),
language.py (captions, questions, documents, facts), eval_sets.py (COCO and VQAv2 files).
"""

from __future__ import annotations

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


def generate(out_dir: str, seed: int = 0, *, scale: float = 1.0) -> None:
  """Writes the synthetic world into `out_dir` (missing or empty); COMPLETE comes last.

  `scale` multiplies every count (tests use small values). Same seed, same files.
  """
  out_dir = os.fspath(out_dir)
  if scale <= 0:
    raise ValueError(f'scale must be positive, got {scale}.')
  if os.path.isdir(out_dir) and os.listdir(out_dir):
    raise FileExistsError(f'{out_dir!r} is not empty; generate into a new directory.')
  os.makedirs(out_dir, exist_ok=True)
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


def generate_atomically(root: str, seed: int = 0, *, scale: float = 1.0,
                        replace: bool = False) -> str:
  """Generates into a temporary directory beside `root` and renames it into place.

  An existing complete `root` is kept unless `replace`; an incomplete one is replaced.
  Two processes racing both succeed: the loser finds the winner's complete root.
  """
  root = os.path.abspath(os.fspath(root))
  parent = os.path.dirname(root)
  os.makedirs(parent, exist_ok=True)
  tmp_dir = tempfile.mkdtemp(prefix=f'.{os.path.basename(root)}.generating-', dir=parent)
  try:
    generate(tmp_dir, seed, scale=scale)
    if os.path.exists(root) and (replace or not is_complete(root)):
      stale = tempfile.mkdtemp(prefix=f'.{os.path.basename(root)}.stale-', dir=parent)
      os.rename(root, os.path.join(stale, 'old'))
      shutil.rmtree(stale, ignore_errors=True)
    try:
      os.rename(tmp_dir, root)
    except OSError:
      if not is_complete(root):  # someone else's root appeared, but unfinished
        raise
  finally:
    shutil.rmtree(tmp_dir, ignore_errors=True)
  return root


def ensure(root: str, seed: int = 0) -> str:
  """Returns `root`, generating the default world there first if missing or incomplete."""
  root = os.fspath(root)
  if is_complete(root):
    world_seed = read_world(root).get('seed')
    if world_seed != seed:
      raise ValueError(f'{root!r} holds the synthetic world of seed {world_seed}, not '
                       f'{seed}; use another directory or delete it.')
    return root
  print(f'Generating the synthetic world (seed {seed}) into {root} ...', flush=True)
  generate_atomically(root, seed)
  return root
