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
"""

import collections
import io
import json
import os
import shutil
import tempfile

import numpy as np
from PIL import Image, ImageDraw
from tqdm import tqdm

from data_pipelines import sources
from data_pipelines import tokenizer as tokenizer_lib

IMAGE_SIZE = 64
TOKENIZER_VOCAB_SIZE = 512
COMPLETE_MARKER = 'COMPLETE'

COLOURS = {
    'red': (220, 40, 40),
    'green': (40, 160, 60),
    'blue': (40, 80, 220),
    'yellow': (235, 200, 30),
    'purple': (140, 60, 180),
    'orange': (245, 135, 30),
    'black': (30, 30, 30),
    'pink': (245, 130, 200),
}
SHAPES = ('circle', 'square', 'triangle', 'diamond', 'cross')
PLURALS = {'circle': 'circles', 'square': 'squares', 'triangle': 'triangles',
           'diamond': 'diamonds', 'cross': 'crosses'}
SIZES = {'small': 7, 'large': 10}  # radius in pixels at 64x64 (about 7 / 10 px at 32x32)
# The 3x3 grid, row-major: cell index = 3 * row + column.
POSITIONS = ('top left', 'top', 'top right', 'left', 'centre', 'right',
             'bottom left', 'bottom', 'bottom right')
NUMBER_WORDS = ('zero', 'one', 'two', 'three', 'four', 'five', 'six', 'seven', 'eight',
                'nine', 'ten', 'eleven', 'twelve')
CORNERS = {'circle': 0, 'square': 4, 'triangle': 3, 'diamond': 4, 'cross': 12}
NUM_HELD_OUT = 4

DEFAULT_COUNTS = {
    'captions': 6000,
    'interleaved': 2000,
    'text': 2000,
    'coco_val_images': 200,
    'coco_support_images': 100,
    'vqa_val_questions': 300,
    'vqa_support_questions': 100,
}
VQA_QUESTIONS_PER_IMAGE = 3
COCO_REFERENCES_PER_IMAGE = 5
# How the evaluation prompts a model; the interleaved documents use the same wording.
PROMPT_TEMPLATES = {'caption': '{caption}', 'vqa': 'Question: {question} Answer: {answer}'}
IMAGE_FILE_PATTERN = 'COCO_{split}_{image_id:012d}.png'

# Independent random streams, so that each part is reproducible on its own.
_STREAMS = {'held_out': 0, 'captions': 1, 'interleaved': 2, 'text': 3,
            'coco_val': 10, 'coco_support': 11, 'vqa_val': 12, 'vqa_support': 13}


def _rng(seed: int, stream: str) -> np.random.Generator:
  return np.random.default_rng([seed, _STREAMS[stream]])


def _choice(rng, options):
  return options[int(rng.integers(len(options)))]


# ----------------------------------------------------------------------------- the world


def choose_held_out(seed: int) -> list[tuple[str, str]]:
  """Colour-shape pairs kept out of every training source (distinct colours and shapes)."""
  rng = _rng(seed, 'held_out')
  colours = rng.permutation(list(COLOURS))[:NUM_HELD_OUT]
  shapes = rng.permutation(list(SHAPES))[:NUM_HELD_OUT]
  return sorted((str(c), str(s)) for c, s in zip(colours, shapes))


class _Pairs:
  """Which colour-shape pairs a split may draw."""

  def __init__(self, held_out, include_held_out: bool):
    held_out = set(map(tuple, held_out))
    self.held_out = sorted(held_out)
    self.allowed = [(c, s) for c in COLOURS for s in SHAPES
                    if include_held_out or (c, s) not in held_out]

  def sample(self, rng, exclude=()):
    options = [p for p in self.allowed if p not in exclude]
    return _choice(rng, options)


def _sample_scene(rng, pairs: _Pairs, force_pair=None) -> list[dict]:
  """1-3 objects in distinct grid cells. Objects that share colour and shape form a group
  of the same size ("two red circles"); otherwise every colour-shape pair is unique."""
  kind = rng.random()
  if kind < 0.4:
    group_sizes = [1]
  elif kind < 0.7:
    group_sizes = [1] * int(rng.integers(2, 4))
  elif kind < 0.85:
    group_sizes = [int(rng.integers(2, 4))]
  else:
    group_sizes = [2, 1]
  cells = rng.permutation(9)[:sum(group_sizes)]
  objects, used_pairs, next_cell = [], [], 0
  for group_index, count in enumerate(group_sizes):
    if group_index == 0 and force_pair is not None:
      pair = tuple(force_pair)
    else:
      pair = pairs.sample(rng, exclude=used_pairs)
    used_pairs.append(pair)
    size = _choice(rng, list(SIZES))
    for _ in range(count):
      objects.append({'colour': pair[0], 'shape': pair[1], 'size': size,
                      'cell': int(cells[next_cell])})
      next_cell += 1
  return objects


def _draw(objects: list[dict], rng) -> bytes:
  """The scene as PNG bytes (deterministic for a given rng state)."""
  background = tuple(int(v) for v in 255 - rng.integers(0, 18, size=3))
  image = Image.new('RGB', (IMAGE_SIZE, IMAGE_SIZE), background)
  draw = ImageDraw.Draw(image)
  cell_size = IMAGE_SIZE / 3
  for obj in objects:
    row, column = divmod(obj['cell'], 3)
    jitter = rng.integers(-1, 2, size=2)
    cx = (column + 0.5) * cell_size + jitter[0]
    cy = (row + 0.5) * cell_size + jitter[1]
    r = SIZES[obj['size']]
    fill = tuple(int(np.clip(v + rng.integers(-12, 13), 0, 255))
                 for v in COLOURS[obj['colour']])
    shape = obj['shape']
    if shape == 'circle':
      draw.ellipse([cx - r, cy - r, cx + r, cy + r], fill=fill)
    elif shape == 'square':
      h = 0.85 * r
      draw.rectangle([cx - h, cy - h, cx + h, cy + h], fill=fill)
    elif shape == 'triangle':
      draw.polygon([(cx, cy - r), (cx + r, cy + 0.8 * r), (cx - r, cy + 0.8 * r)], fill=fill)
    elif shape == 'diamond':
      draw.polygon([(cx, cy - r), (cx + r, cy), (cx, cy + r), (cx - r, cy)], fill=fill)
    else:  # cross
      w = max(2.0, 0.35 * r)
      draw.rectangle([cx - r, cy - w, cx + r, cy + w], fill=fill)
      draw.rectangle([cx - w, cy - r, cx + w, cy + r], fill=fill)
  buffer = io.BytesIO()
  image.save(buffer, format='PNG')
  return buffer.getvalue()


# ------------------------------------------------------------------------------ language


def _article(word: str) -> str:
  return 'an' if word[0] in 'aeiou' else 'a'


def _groups(objects):
  """[(count, colour, shape, size, cells)] in first-appearance order."""
  grouped = collections.OrderedDict()
  for obj in objects:
    grouped.setdefault((obj['colour'], obj['shape'], obj['size']), []).append(obj['cell'])
  return [(len(cells), c, s, z, cells) for (c, s, z), cells in grouped.items()]


def _position_phrase(cells) -> str:
  """Where a group is: 'in the top left', 'on the left', 'at the top', or ''."""
  if len(cells) == 1:
    name = POSITIONS[cells[0]]
    if name in ('left', 'right'):
      return f'on the {name}'
    if name in ('top', 'bottom'):
      return f'at the {name}'
    return f'in the {name}'
  rows = {cell // 3 for cell in cells}
  columns = {cell % 3 for cell in cells}
  if rows == {0}:
    return 'at the top'
  if rows == {2}:
    return 'at the bottom'
  if columns == {0}:
    return 'on the left'
  if columns == {2}:
    return 'on the right'
  return ''


def _noun_phrase(count, colour, shape, size, with_size: bool) -> str:
  adjectives = f'{size} {colour}' if with_size else colour
  if count == 1:
    return f'{_article(adjectives)} {adjectives} {shape}'
  return f'{NUMBER_WORDS[count]} {adjectives} {PLURALS[shape]}'


def _join(items) -> str:
  if len(items) == 1:
    return items[0]
  return ', '.join(items[:-1]) + ' and ' + items[-1]


def _shape_count_phrase(n: int) -> str:
  return f'{NUMBER_WORDS[n]} shape' + ('' if n == 1 else 's')


def _caption(objects, rng) -> str:
  """One of many grounded descriptions of a scene."""
  groups = _groups(objects)
  with_size = rng.random() < 0.5
  with_position = rng.random() < 0.5
  parts = []
  for count, colour, shape, size, cells in groups:
    phrase = _noun_phrase(count, colour, shape, size, with_size)
    position = _position_phrase(cells) if with_position else ''
    parts.append(f'{phrase} {position}' if position else phrase)
  listing = _join(parts)
  n = len(objects)
  verb = 'is' if groups[0][0] == 1 else 'are'
  templates = (
      f'{listing}.',
      f'there {verb} {listing}.',
      f'a picture of {listing}.',
      f'an image with {listing}.',
      f'{listing} on a light background.',
      f'this picture shows {listing}.',
      f'{_shape_count_phrase(n)}: {listing}.',
      f'{listing}, drawn on a plain background.',
      f'a drawing of {listing}.',
      f'we can see {listing}.',
  )
  caption = _choice(rng, templates)
  return caption[0].upper() + caption[1:]


def _count_of(objects, **match) -> int:
  return sum(all(obj[k] == v for k, v in match.items()) for obj in objects)


QUESTION_FAMILIES = ('colour', 'shape', 'count_shape', 'count_all', 'exists',
                     'size_yes_no', 'where', 'size')


def _question(objects, rng, pairs: _Pairs, focus: int | None = None,
              families=None) -> dict:
  """A VQA question about the scene: question, answer, question_type, answer_type.

  `focus` asks, where the drawn family allows, about that object. `families` is the
  order in which question families are tried (random if None); the first that applies
  to the scene is asked.
  """
  if families is None:
    families = [QUESTION_FAMILIES[i] for i in rng.permutation(len(QUESTION_FAMILIES))]
  obj = objects[focus] if focus is not None else objects[int(rng.integers(len(objects)))]
  colour, shape, size = obj['colour'], obj['shape'], obj['size']
  unique = _count_of(objects, colour=colour, shape=shape) == 1
  for family in families:
    if family == 'colour':
      if len({o['colour'] for o in objects if o['shape'] == shape}) != 1:
        continue
      if _count_of(objects, shape=shape) == 1:
        question = f'what colour is the {shape}?'
      else:
        question = f'what colour are the {PLURALS[shape]}?'
      return dict(question=question, answer=colour, question_type='what colour is the',
                  answer_type='other')
    if family == 'shape':
      if len({o['shape'] for o in objects if o['colour'] == colour}) != 1:
        continue
      if _count_of(objects, colour=colour) == 1:
        question = f'what shape is the {colour} object?'
      else:
        question = f'what shape are the {colour} objects?'
      return dict(question=question, answer=shape, question_type='what shape is the',
                  answer_type='other')
    if family == 'count_shape':
      asked = shape if rng.random() < 0.8 else _choice(rng, SHAPES)
      return dict(question=f'how many {PLURALS[asked]} are there?',
                  answer=str(_count_of(objects, shape=asked)), question_type='how many',
                  answer_type='number')
    if family == 'count_all':
      return dict(question='how many shapes are there?', answer=str(len(objects)),
                  question_type='how many', answer_type='number')
    if family == 'exists':
      present = {(o['colour'], o['shape']) for o in objects}
      if focus is not None or rng.random() < 0.5:
        asked, answer = (colour, shape), 'yes'
      else:
        asked, answer = pairs.sample(rng, exclude=present), 'no'
      return dict(question=f'is there {_article(asked[0])} {asked[0]} {asked[1]}?',
                  answer=answer, question_type='is there a', answer_type='yes/no')
    if not unique:
      continue
    if family == 'size_yes_no':
      asked = _choice(rng, list(SIZES))
      return dict(question=f'is the {colour} {shape} {asked}?',
                  answer='yes' if asked == size else 'no', question_type='is the',
                  answer_type='yes/no')
    if family == 'where':
      return dict(question=f'where is the {colour} {shape}?',
                  answer=POSITIONS[obj['cell']], question_type='where is the',
                  answer_type='other')
    if family == 'size':
      return dict(question=f'what size is the {colour} {shape}?', answer=size,
                  question_type='what size is the', answer_type='other')
  raise AssertionError('count_all always applies')


def _vqa_line(qa: dict) -> str:
  return PROMPT_TEMPLATES['vqa'].format(question=qa['question'], answer=qa['answer'])


# --------------------------------------------------------------------- training examples


def _caption_examples(n: int, seed: int, pairs: _Pairs):
  rng = _rng(seed, 'captions')
  for i in tqdm(range(n), desc='captions', unit='ex', leave=False):
    objects = _sample_scene(rng, pairs)
    yield {'id': f'caption-{i:06d}', 'image': _draw(objects, rng),
           'caption': _caption(objects, rng)}


_INTROS = ('Some pictures of shapes.', 'Look at these pictures.', 'A few drawings.',
           'Here are some pictures.', 'Pictures and what they show.')


def _describe_briefly(objects) -> str:
  return _join([_noun_phrase(c, col, s, z, False) for c, col, s, z, _ in _groups(objects)])


def _comparison(first, second, rng) -> str:
  n1, n2 = len(first), len(second)
  sentences = [
      f'In the first picture there is {_describe_briefly(first)}; in the second there is '
      f'{_describe_briefly(second)}.',
      f'The first picture has {_shape_count_phrase(n1)} and the second picture has '
      f'{_shape_count_phrase(n2)}.',
  ]
  if n1 == n2:
    sentences.append('Both pictures have the same number of shapes.')
  else:
    sentences.append(f'The {"first" if n1 > n2 else "second"} picture has more shapes.')
  common = sorted({o['shape'] for o in first} & {o['shape'] for o in second})
  if common:
    sentences.append(f'Both pictures have {_article(common[0])} {common[0]}.')
  else:
    sentences.append('The two pictures have no shape in common.')
  common_colours = sorted({o['colour'] for o in first} & {o['colour'] for o in second})
  if common_colours:
    sentences.append(f'There is something {common_colours[0]} in both pictures.')
  picked = rng.permutation(len(sentences))[:2]
  return ' '.join(sentences[i] for i in sorted(picked))


def _interleaved_document(index: int, rng, pairs: _Pairs) -> dict:
  """2-4 images with text that repeats one pattern over them, in order."""
  num_images = int(rng.integers(2, 5))
  scenes = [_sample_scene(rng, pairs) for _ in range(num_images)]
  images = [_draw(objects, rng) for objects in scenes]
  items = []  # (text, image) pairs, exactly one set
  pattern = rng.random()
  if pattern < 0.35:  # descriptions
    if rng.random() < 0.5:
      items.append((_choice(rng, _INTROS), b''))
    for objects, image in zip(scenes, images):
      items += [('', image), (_caption(objects, rng), b'')]
  elif pattern < 0.75:  # question/answer pairs, the same question families throughout
    num_questions = int(rng.integers(1, 3))
    plans = [[QUESTION_FAMILIES[i] for i in rng.permutation(len(QUESTION_FAMILIES))]
             for _ in range(num_questions)]
    for objects, image in zip(scenes, images):
      lines = []
      for families in plans:
        line = _vqa_line(_question(objects, rng, pairs, families=families))
        if line not in lines:
          lines.append(line)
      items += [('', image), ('\n'.join(lines), b'')]
  else:  # comparisons of consecutive pairs of pictures
    for start in range(0, num_images, 2):
      if start + 1 < num_images:
        items += [('', images[start]), ('', images[start + 1]),
                  (_comparison(scenes[start], scenes[start + 1], rng), b'')]
      else:
        items += [('', images[start]), (_caption(scenes[start], rng), b'')]
  return {'id': f'document-{index:06d}', 'texts': [t for t, _ in items],
          'images': [b for _, b in items]}


def _interleaved_examples(n: int, seed: int, pairs: _Pairs):
  rng = _rng(seed, 'interleaved')
  for i in tqdm(range(n), desc='interleaved', unit='doc', leave=False):
    yield _interleaved_document(i, rng, pairs)


def _fact_sentences(rng, pairs: _Pairs) -> list[str]:
  """A pool of facts about the world; a document is a few of them."""
  colours = [str(c) for c in rng.permutation(list(COLOURS))]
  shapes = [str(s) for s in rng.permutation(list(SHAPES))]
  shape = _choice(rng, SHAPES)
  colour = _choice(rng, list(COLOURS))
  a, b = (int(v) for v in rng.integers(0, 6, size=2))
  start = int(rng.integers(0, 6))
  counting = ', '.join(NUMBER_WORDS[start:start + 5])
  corners = CORNERS[shape]
  c1, s1 = pairs.sample(rng)
  c2, s2 = pairs.sample(rng, exclude=[(c1, s1)])
  n1, n2 = (int(v) for v in rng.integers(1, 3, size=2))
  group1 = _noun_phrase(n1, c1, s1, 'small', False)
  group2 = _noun_phrase(n2, c2, s2, 'small', False)
  position = _choice(rng, POSITIONS)
  return [
      f'There are {NUMBER_WORDS[len(COLOURS)]} colours: {_join(colours)}.',
      f'The shapes are {_join([PLURALS[s] for s in shapes])}.',
      f'{colour.capitalize()} is a colour and {_article(shape)} {shape} is a shape.',
      f'{_article(shape).capitalize()} {shape} has '
      f'{"no" if corners == 0 else NUMBER_WORDS[corners]} corners.',
      f'Question: how many corners does {_article(shape)} {shape} have? Answer: {corners}',
      'A square has four sides of the same length.',
      'A triangle has three sides and three corners.',
      'A circle is round and has no corners.',
      'A diamond looks like a square standing on one corner.',
      'A cross is made of two bars and has four arms.',
      f'Counting: {counting}.',
      f'After {NUMBER_WORDS[start]} comes {NUMBER_WORDS[start + 1]}.',
      f'{NUMBER_WORDS[a].capitalize()} plus {NUMBER_WORDS[b]} is {NUMBER_WORDS[a + b]}.',
      f'{a} + {b} = {a + b}.',
      f'Question: what is {a} plus {b}? Answer: {a + b}',
      f'A picture with {group1} and {group2} has {_shape_count_phrase(n1 + n2)}.',
      f'If a picture shows {group1} and you add {group2}, it shows '
      f'{NUMBER_WORDS[n1 + n2]} shapes in all.',
      f'Question: a picture has {group1} and {group2}. How many shapes are there? '
      f'Answer: {n1 + n2}',
      f'{_noun_phrase(1, c1, s1, "small", True).capitalize()} and '
      f'{_noun_phrase(1, c1, s1, "large", True)} have the same colour.',
      f'A large {s1} is bigger than a small {s1}.',
      f'The {position} is one of the nine places in a picture.',
      'The top left is above the bottom left, and left is the opposite of right.',
      'The centre is in the middle of the picture.',
      'Every picture has a plain light background and one, two or three shapes.',
  ]


def _text_examples(n: int, seed: int, pairs: _Pairs):
  rng = _rng(seed, 'text')
  for i in tqdm(range(n), desc='text', unit='doc', leave=False):
    paragraphs = []
    for _ in range(int(rng.integers(1, 3))):
      pool = _fact_sentences(rng, pairs)
      picked = rng.permutation(len(pool))[:int(rng.integers(3, 7))]
      paragraphs.append(' '.join(pool[j] for j in picked))
    yield {'id': f'text-{i:06d}', 'text': '\n'.join(paragraphs)}


# -------------------------------------------------------------------------- evaluation


def _eval_scenes(n: int, rng, pairs: _Pairs, with_held_out: bool):
  """Scenes for an eval split; with_held_out puts a held-out pair in every third one."""
  for i in range(n):
    force = pairs.held_out[(i // 3) % len(pairs.held_out)] if (
        with_held_out and i % 3 == 0) else None
    yield _sample_scene(rng, pairs, force_pair=force)


def _write_image(images_dir: str, split: str, image_id: int, png: bytes) -> str:
  file_name = IMAGE_FILE_PATTERN.format(split=split, image_id=image_id)
  with open(os.path.join(images_dir, file_name), 'wb') as f:
    f.write(png)
  return file_name


def _write_json(path: str, obj) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(obj, f, indent=1)


def _info(description: str, seed: int) -> dict:
  return {'description': description, 'version': '1.0', 'year': 2024,
          'contributor': 'mm1-jax synthetic world', 'seed': seed}


def _coco_split(eval_dir, split, n_images, seed, pairs, with_held_out, all_texts):
  rng = _rng(seed, f'coco_{split}')
  images_dir = os.path.join(eval_dir, 'coco', 'images')
  os.makedirs(images_dir, exist_ok=True)
  images, annotations = [], []
  id_offset = 0 if split == 'val' else 100000
  scenes = _eval_scenes(n_images, rng, pairs, with_held_out)
  for i, objects in enumerate(tqdm(scenes, total=n_images, desc=f'coco {split}',
                                   leave=False)):
    image_id = id_offset + i + 1
    file_name = _write_image(images_dir, split, image_id, _draw(objects, rng))
    images.append({'id': image_id, 'file_name': file_name, 'height': IMAGE_SIZE,
                   'width': IMAGE_SIZE})
    references = []
    for _ in range(50):  # distinct references; a one-object scene has fewer phrasings
      caption = _caption(objects, rng)
      if caption not in references:
        references.append(caption)
      if len(references) == COCO_REFERENCES_PER_IMAGE:
        break
    while len(references) < COCO_REFERENCES_PER_IMAGE:
      references.append(references[len(references) % len(references)])
    for caption in references:
      annotations.append({'id': len(annotations) + 1 + id_offset, 'image_id': image_id,
                          'caption': caption})
      all_texts.append(caption)
  _write_json(os.path.join(eval_dir, 'coco', 'annotations', f'captions_{split}.json'),
              {'info': _info(f'synthetic COCO-style captions, {split}', seed),
               'licenses': [], 'images': images, 'annotations': annotations})


_ANSWER_VARIANTS = {
    'left': 'on the left', 'right': 'on the right', 'top': 'at the top',
    'bottom': 'at the bottom', 'centre': 'center', 'top left': 'upper left',
    'top right': 'upper right', 'bottom left': 'lower left', 'bottom right': 'lower right',
    'large': 'big', 'small': 'little', 'diamond': 'rhombus', 'cross': 'plus',
    'circle': 'round', 'square': 'box', 'triangle': 'pyramid',
    'red': 'orange', 'orange': 'red', 'pink': 'purple', 'purple': 'pink',
    'yellow': 'orange', 'green': 'dark green', 'blue': 'dark blue', 'black': 'dark',
}


def _human_answers(qa: dict, rng) -> list[dict]:
  """Ten annotator answers that mostly agree, with realistic variation."""
  answer = qa['answer']
  answers = [answer] * 10
  if qa['answer_type'] == 'number':
    if rng.random() < 0.4:  # some annotators spell the number out
      for j in rng.permutation(10)[:int(rng.integers(1, 4))]:
        answers[j] = NUMBER_WORDS[int(answer)]
    if rng.random() < 0.1:
      answers[int(rng.integers(10))] = str(int(answer) + 1)
  elif qa['answer_type'] == 'yes/no':
    if rng.random() < 0.1:
      answers[int(rng.integers(10))] = 'no' if answer == 'yes' else 'yes'
  elif rng.random() < 0.3 and answer in _ANSWER_VARIANTS:
    for j in rng.permutation(10)[:int(rng.integers(1, 4))]:
      answers[j] = _ANSWER_VARIANTS[answer]
  return [{'answer': a, 'answer_confidence': 'yes' if a == answer else 'maybe',
           'answer_id': j + 1} for j, a in enumerate(answers)]


def _vqa_split(eval_dir, split, n_questions, seed, pairs, with_held_out, all_texts):
  rng = _rng(seed, f'vqa_{split}')
  images_dir = os.path.join(eval_dir, 'vqav2', 'images')
  os.makedirs(images_dir, exist_ok=True)
  n_images = -(-n_questions // VQA_QUESTIONS_PER_IMAGE)
  id_offset = 0 if split == 'val' else 100000
  questions, annotations = [], []
  scenes = _eval_scenes(n_images, rng, pairs, with_held_out)
  for i, objects in enumerate(tqdm(scenes, total=n_images, desc=f'vqav2 {split}',
                                   leave=False)):
    image_id = id_offset + i + 1
    _write_image(images_dir, split, image_id, _draw(objects, rng))
    asked = set()
    for q in range(VQA_QUESTIONS_PER_IMAGE):
      if len(questions) == n_questions:
        break
      # The first question of a held-out scene is about the held-out object (object 0).
      focus = 0 if (with_held_out and i % 3 == 0 and q == 0) else None
      for _ in range(20):
        qa = _question(objects, rng, pairs, focus=focus)
        if qa['question'] not in asked:
          break
      asked.add(qa['question'])
      question_id = image_id * 10 + q
      questions.append({'image_id': image_id, 'question': qa['question'],
                        'question_id': question_id})
      annotations.append({
          'question_id': question_id, 'image_id': image_id,
          'question_type': qa['question_type'], 'answer_type': qa['answer_type'],
          'multiple_choice_answer': qa['answer'], 'answers': _human_answers(qa, rng)})
      all_texts.append(_vqa_line(qa))
  vqa_dir = os.path.join(eval_dir, 'vqav2')
  info = _info(f'synthetic VQAv2-style questions, {split}', seed)
  _write_json(os.path.join(vqa_dir, f'v2_OpenEnded_mscoco_{split}_questions.json'),
              {'info': info, 'task_type': 'Open-Ended', 'data_type': 'mscoco',
               'data_subtype': split, 'license': {}, 'questions': questions})
  _write_json(os.path.join(vqa_dir, f'v2_mscoco_{split}_annotations.json'),
              {'info': info, 'data_type': 'mscoco', 'data_subtype': split,
               'license': {}, 'annotations': annotations})


# ------------------------------------------------------------------------------ driver


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
  train_pairs = _Pairs(held_out, include_held_out=False)
  eval_pairs = _Pairs(held_out, include_held_out=True)
  texts = []
  # Stages: three sources, eval sets, tokenizer, world.json.
  stages = tqdm(total=6, desc='synthetic world', unit='stage')
  for kind, examples in (
      ('captions', _caption_examples(counts['captions'], seed, train_pairs)),
      ('interleaved', _interleaved_examples(counts['interleaved'], seed, train_pairs)),
      ('text', _text_examples(counts['text'], seed, train_pairs))):
    sources.write_source(kind, _Recorded(examples, texts), os.path.join(out_dir, kind))
    stages.update()

  eval_dir = os.path.join(out_dir, 'eval')
  eval_texts = []
  _coco_split(eval_dir, 'val', counts['coco_val_images'], seed, eval_pairs, True,
              eval_texts)
  _coco_split(eval_dir, 'support', counts['coco_support_images'], seed, train_pairs,
              False, eval_texts)
  _vqa_split(eval_dir, 'val', counts['vqa_val_questions'], seed, eval_pairs, True,
             eval_texts)
  _vqa_split(eval_dir, 'support', counts['vqa_support_questions'], seed, train_pairs,
             False, eval_texts)
  stages.update()

  # The eval texts only add the templates' words to the vocabulary; no model sees them.
  tokenizer = tokenizer_lib.train_tokenizer(
      texts + eval_texts, os.path.join(out_dir, 'tokenizer', 'spm.model'),
      TOKENIZER_VOCAB_SIZE)
  stages.update()

  _write_json(os.path.join(out_dir, 'world.json'), {
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
