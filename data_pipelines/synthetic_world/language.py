"""The words of the synthetic world: captions, questions and answers, interleaved
documents over 2-4 pictures, and the text-only facts (colours, shapes, corners, counting,
arithmetic).
"""

from __future__ import annotations

import collections

from tqdm import tqdm

from data_pipelines.synthetic_world.world import (
    COLOURS, CORNERS, NUMBER_WORDS, PLURALS, POSITIONS, SHAPES, SIZES, Pairs, choose,
    draw_png, sample_scene, stream_rng)

# How the evaluation prompts a model; the interleaved documents use the same wording.
PROMPT_TEMPLATES = {'caption': '{caption}', 'vqa': 'Question: {question} Answer: {answer}'}


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


def caption_for(objects, rng) -> str:
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
  caption = choose(rng, templates)
  return caption[0].upper() + caption[1:]


def _count_of(objects, **match) -> int:
  return sum(all(obj[k] == v for k, v in match.items()) for obj in objects)


QUESTION_FAMILIES = ('colour', 'shape', 'count_shape', 'count_all', 'exists',
                     'size_yes_no', 'where', 'size')


def ask_question(objects, rng, pairs: Pairs, focus: int | None = None,
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
      asked = shape if rng.random() < 0.8 else choose(rng, SHAPES)
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
      asked = choose(rng, list(SIZES))
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


def vqa_line(qa: dict) -> str:
  return PROMPT_TEMPLATES['vqa'].format(question=qa['question'], answer=qa['answer'])


# --------------------------------------------------------------------- training examples


def caption_examples(n: int, seed: int, pairs: Pairs):
  rng = stream_rng(seed, 'captions')
  for i in tqdm(range(n), desc='captions', unit='ex', leave=False):
    objects = sample_scene(rng, pairs)
    yield {'id': f'caption-{i:06d}', 'image': draw_png(objects, rng),
           'caption': caption_for(objects, rng)}


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


def _interleaved_document(index: int, rng, pairs: Pairs) -> dict:
  """2-4 images with text that repeats one pattern over them, in order."""
  num_images = int(rng.integers(2, 5))
  scenes = [sample_scene(rng, pairs) for _ in range(num_images)]
  images = [draw_png(objects, rng) for objects in scenes]
  items = []  # (text, image) pairs, exactly one set
  pattern = rng.random()
  if pattern < 0.35:  # descriptions
    if rng.random() < 0.5:
      items.append((choose(rng, _INTROS), b''))
    for objects, image in zip(scenes, images):
      items += [('', image), (caption_for(objects, rng), b'')]
  elif pattern < 0.75:  # question/answer pairs, the same question families throughout
    num_questions = int(rng.integers(1, 3))
    plans = [[QUESTION_FAMILIES[i] for i in rng.permutation(len(QUESTION_FAMILIES))]
             for _ in range(num_questions)]
    for objects, image in zip(scenes, images):
      lines = []
      for families in plans:
        line = vqa_line(ask_question(objects, rng, pairs, families=families))
        if line not in lines:
          lines.append(line)
      items += [('', image), ('\n'.join(lines), b'')]
  else:  # comparisons of consecutive pairs of pictures
    for start in range(0, num_images, 2):
      if start + 1 < num_images:
        items += [('', images[start]), ('', images[start + 1]),
                  (_comparison(scenes[start], scenes[start + 1], rng), b'')]
      else:
        items += [('', images[start]), (caption_for(scenes[start], rng), b'')]
  return {'id': f'document-{index:06d}', 'texts': [t for t, _ in items],
          'images': [b for _, b in items]}


def interleaved_examples(n: int, seed: int, pairs: Pairs):
  rng = stream_rng(seed, 'interleaved')
  for i in tqdm(range(n), desc='interleaved', unit='doc', leave=False):
    yield _interleaved_document(i, rng, pairs)


def _fact_sentences(rng, pairs: Pairs) -> list[str]:
  """A pool of facts about the world; a document is a few of them."""
  colours = [str(c) for c in rng.permutation(list(COLOURS))]
  shapes = [str(s) for s in rng.permutation(list(SHAPES))]
  shape = choose(rng, SHAPES)
  colour = choose(rng, list(COLOURS))
  a, b = (int(v) for v in rng.integers(0, 6, size=2))
  start = int(rng.integers(0, 6))
  counting = ', '.join(NUMBER_WORDS[start:start + 5])
  corners = CORNERS[shape]
  c1, s1 = pairs.sample(rng)
  c2, s2 = pairs.sample(rng, exclude=[(c1, s1)])
  n1, n2 = (int(v) for v in rng.integers(1, 3, size=2))
  group1 = _noun_phrase(n1, c1, s1, 'small', False)
  group2 = _noun_phrase(n2, c2, s2, 'small', False)
  position = choose(rng, POSITIONS)
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


def text_examples(n: int, seed: int, pairs: Pairs):
  rng = stream_rng(seed, 'text')
  for i in tqdm(range(n), desc='text', unit='doc', leave=False):
    paragraphs = []
    for _ in range(int(rng.integers(1, 3))):
      pool = _fact_sentences(rng, pairs)
      picked = rng.permutation(len(pool))[:int(rng.integers(3, 7))]
      paragraphs.append(' '.join(pool[j] for j in picked))
    yield {'id': f'text-{i:06d}', 'text': '\n'.join(paragraphs)}


# -------------------------------------------------------------------------- evaluation
