"""Evaluation sets of the synthetic world in the public formats: COCO captions
(annotations JSON + image files) and VQAv2 (questions + annotations with ten human
answers), with held-out colour-shape compositions in the val splits.
"""

from __future__ import annotations

import json
import os

from tqdm import tqdm

from data_pipelines.synthetic_world.language import ask_question, caption_for, vqa_line
from data_pipelines.synthetic_world.world import (
    IMAGE_SIZE, NUMBER_WORDS, Pairs, draw_png, sample_scene, stream_rng)

VQA_QUESTIONS_PER_IMAGE = 3
COCO_REFERENCES_PER_IMAGE = 5
IMAGE_FILE_PATTERN = 'COCO_{split}_{image_id:012d}.png'


def _eval_scenes(n: int, rng, pairs: Pairs, with_held_out: bool):
  """Scenes for an eval split; with_held_out puts a held-out pair in every third one."""
  for i in range(n):
    force = pairs.held_out[(i // 3) % len(pairs.held_out)] if (
        with_held_out and i % 3 == 0) else None
    yield sample_scene(rng, pairs, force_pair=force)


def _write_image(images_dir: str, split: str, image_id: int, png: bytes) -> str:
  file_name = IMAGE_FILE_PATTERN.format(split=split, image_id=image_id)
  with open(os.path.join(images_dir, file_name), 'wb') as f:
    f.write(png)
  return file_name


def write_json(path: str, obj) -> None:
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(obj, f, indent=1)


def _info(description: str, seed: int) -> dict:
  return {'description': description, 'version': '1.0', 'year': 2024,
          'contributor': 'mm1-jax synthetic world', 'seed': seed}


def write_coco_split(eval_dir, split, n_images, seed, pairs, with_held_out, all_texts):
  rng = stream_rng(seed, f'coco_{split}')
  images_dir = os.path.join(eval_dir, 'coco', 'images')
  os.makedirs(images_dir, exist_ok=True)
  images, annotations = [], []
  id_offset = 0 if split == 'val' else 100000
  scenes = _eval_scenes(n_images, rng, pairs, with_held_out)
  for i, objects in enumerate(tqdm(scenes, total=n_images, desc=f'coco {split}',
                                   leave=False)):
    image_id = id_offset + i + 1
    file_name = _write_image(images_dir, split, image_id, draw_png(objects, rng))
    images.append({'id': image_id, 'file_name': file_name, 'height': IMAGE_SIZE,
                   'width': IMAGE_SIZE})
    references = []
    for _ in range(50):  # distinct references; a one-object scene has fewer phrasings
      caption = caption_for(objects, rng)
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
  write_json(os.path.join(eval_dir, 'coco', 'annotations', f'captions_{split}.json'),
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


def write_vqa_split(eval_dir, split, n_questions, seed, pairs, with_held_out, all_texts):
  rng = stream_rng(seed, f'vqa_{split}')
  images_dir = os.path.join(eval_dir, 'vqav2', 'images')
  os.makedirs(images_dir, exist_ok=True)
  n_images = -(-n_questions // VQA_QUESTIONS_PER_IMAGE)
  id_offset = 0 if split == 'val' else 100000
  questions, annotations = [], []
  scenes = _eval_scenes(n_images, rng, pairs, with_held_out)
  for i, objects in enumerate(tqdm(scenes, total=n_images, desc=f'vqav2 {split}',
                                   leave=False)):
    image_id = id_offset + i + 1
    _write_image(images_dir, split, image_id, draw_png(objects, rng))
    asked = set()
    for q in range(VQA_QUESTIONS_PER_IMAGE):
      if len(questions) == n_questions:
        break
      # The first question of a held-out scene is about the held-out object (object 0).
      focus = 0 if (with_held_out and i % 3 == 0 and q == 0) else None
      for _ in range(20):
        qa = ask_question(objects, rng, pairs, focus=focus)
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
      all_texts.append(vqa_line(qa))
  vqa_dir = os.path.join(eval_dir, 'vqav2')
  info = _info(f'synthetic VQAv2-style questions, {split}', seed)
  write_json(os.path.join(vqa_dir, f'v2_OpenEnded_mscoco_{split}_questions.json'),
              {'info': info, 'task_type': 'Open-Ended', 'data_type': 'mscoco',
               'data_subtype': split, 'license': {}, 'questions': questions})
  write_json(os.path.join(vqa_dir, f'v2_mscoco_{split}_annotations.json'),
              {'info': info, 'data_type': 'mscoco', 'data_subtype': split,
               'license': {}, 'annotations': annotations})


# ------------------------------------------------------------------------------ driver
