"""Evaluation tasks: loaders for the released file formats, and the named task registry.

A task is a kind ('caption' or 'vqa'), a file format, and two splits: `eval` (what is
scored) and `support` (where few-shot demonstrations come from). Paths in a split are
relative to the task's `root`. Built-in tasks (BUILTIN_TASKS) use the files as released:

  format          files (keys of a split)            released as (version)
  coco_captions   annotations, images                COCO 2014 captions_*.json; NoCaps v0.1
                                                     nocaps_val_4500_captions.json
  karpathy        file, images, split                Karpathy split dataset_coco.json
                                                     (image = images/filepath/filename;
                                                     split may list several: 'train,restval')
  textcaps        file, images                       TextCaps 0.1 TextCaps_0.1_{train,val}.json
  vqav2           questions, annotations, images,    VQAv2 v2.0 (v2_OpenEnded_mscoco_*_
                  image_pattern                      questions.json, v2_mscoco_*_annotations
                                                     .json); OK-VQA v1.1 (same layout)
  textvqa         file, images, image_pattern        TextVQA 0.5.1 TextVQA_0.5.1_{train,val}.json
  vizwiz          file, images                       VizWiz-VQA (2020 layout) {train,val}.json
  gqa             file, images                       GQA 1.2 balanced questions
                                                     ({testdev,train}_balanced_questions.json)

`image_pattern` is formatted with `image_id` and, for VQAv2, the file's `data_subtype`.
GQA has one answer per question: it is scored as ten identical human answers, which makes
VQA accuracy the exact-match accuracy GQA reports (after VQA answer normalisation).

Built-in synthetic tasks read the synthetic world under `config.data.root`; every other
built-in task reads under `config.eval.data_root`. `config.eval.task_specs.NAME` adds a
task or overrides keys of a built-in one (same layout as BUILTIN_TASKS, optionally with
its own `root` and `template`). Only the standard library is imported here, so that the
config checks can use it.
"""

from __future__ import annotations

import collections
import dataclasses
import json
import os
from collections.abc import Hashable, Mapping
from typing import Any

KINDS = ('caption', 'vqa')

# The keys each format needs in a split (beyond 'images', which all need).
FORMAT_KEYS = {
    'coco_captions': ('annotations',),
    'karpathy': ('file', 'split'),
    'textcaps': ('file',),
    'vqav2': ('questions', 'annotations', 'image_pattern'),
    'textvqa': ('file', 'image_pattern'),
    'vizwiz': ('file',),
    'gqa': ('file',),
}
FORMAT_KIND = {'coco_captions': 'caption', 'karpathy': 'caption', 'textcaps': 'caption',
               'vqav2': 'vqa', 'textvqa': 'vqa', 'vizwiz': 'vqa', 'gqa': 'vqa'}

SYNTHETIC_ROOT = '{data.root}/eval'  # resolved against the config
_COCO_PATTERN = 'COCO_{data_subtype}_{image_id:012d}.jpg'
_KARPATHY_TRAIN = dict(file='coco/dataset_coco.json', images='coco', split='train,restval')

BUILTIN_TASKS: dict[str, dict[str, Any]] = {
    'synthetic_coco': dict(
        format='coco_captions', root=SYNTHETIC_ROOT,
        eval=dict(annotations='coco/annotations/captions_val.json', images='coco/images'),
        support=dict(annotations='coco/annotations/captions_support.json',
                     images='coco/images')),
    'synthetic_vqav2': dict(
        format='vqav2', root=SYNTHETIC_ROOT,
        eval=dict(questions='vqav2/v2_OpenEnded_mscoco_val_questions.json',
                  annotations='vqav2/v2_mscoco_val_annotations.json', images='vqav2/images',
                  image_pattern='COCO_{data_subtype}_{image_id:012d}.png'),
        support=dict(questions='vqav2/v2_OpenEnded_mscoco_support_questions.json',
                     annotations='vqav2/v2_mscoco_support_annotations.json',
                     images='vqav2/images',
                     image_pattern='COCO_{data_subtype}_{image_id:012d}.png')),
    'coco': dict(
        format='karpathy',
        eval=dict(file='coco/dataset_coco.json', images='coco', split='test'),
        support=_KARPATHY_TRAIN),
    'nocaps': dict(
        format='coco_captions',
        eval=dict(annotations='nocaps/nocaps_val_4500_captions.json', images='nocaps/images'),
        support=dict(_KARPATHY_TRAIN, format='karpathy')),
    'textcaps': dict(
        format='textcaps',
        eval=dict(file='textcaps/TextCaps_0.1_val.json', images='textcaps/train_images'),
        support=dict(file='textcaps/TextCaps_0.1_train.json', images='textcaps/train_images')),
    'vqav2': dict(
        format='vqav2',
        eval=dict(questions='vqav2/v2_OpenEnded_mscoco_val2014_questions.json',
                  annotations='vqav2/v2_mscoco_val2014_annotations.json',
                  images='coco/val2014', image_pattern=_COCO_PATTERN),
        support=dict(questions='vqav2/v2_OpenEnded_mscoco_train2014_questions.json',
                     annotations='vqav2/v2_mscoco_train2014_annotations.json',
                     images='coco/train2014', image_pattern=_COCO_PATTERN)),
    'okvqa': dict(
        format='vqav2',
        eval=dict(questions='okvqa/OpenEnded_mscoco_val2014_questions.json',
                  annotations='okvqa/mscoco_val2014_annotations.json',
                  images='coco/val2014', image_pattern=_COCO_PATTERN),
        support=dict(questions='okvqa/OpenEnded_mscoco_train2014_questions.json',
                     annotations='okvqa/mscoco_train2014_annotations.json',
                     images='coco/train2014', image_pattern=_COCO_PATTERN)),
    'textvqa': dict(
        format='textvqa',
        eval=dict(file='textvqa/TextVQA_0.5.1_val.json', images='textvqa/train_images',
                  image_pattern='{image_id}.jpg'),
        support=dict(file='textvqa/TextVQA_0.5.1_train.json', images='textvqa/train_images',
                     image_pattern='{image_id}.jpg')),
    'vizwiz': dict(
        format='vizwiz',
        eval=dict(file='vizwiz/Annotations/val.json', images='vizwiz/val'),
        support=dict(file='vizwiz/Annotations/train.json', images='vizwiz/train')),
    'gqa': dict(
        format='gqa',
        eval=dict(file='gqa/testdev_balanced_questions.json', images='gqa/images'),
        support=dict(file='gqa/train_balanced_questions.json', images='gqa/images')),
}


class TaskError(ValueError):
  """A task's configuration or files are wrong; the message names the task/file/key."""


@dataclasses.dataclass(frozen=True)
class CaptionExample:
  id: Hashable            # the image id
  image: str              # path of the image file
  references: tuple[str, ...]


@dataclasses.dataclass(frozen=True)
class VqaExample:
  id: Hashable            # the question id
  image: str
  question: str
  answers: tuple[str, ...]  # the human answers (ten in VQAv2)

  @property
  def majority_answer(self) -> str:
    """The most frequent human answer (first seen wins a tie): the demonstration's answer."""
    return collections.Counter(self.answers).most_common(1)[0][0]


Example = CaptionExample | VqaExample


# ---------------------------------------------------------------------------- file access


def _read_json(path: str, what: str):
  if not os.path.isfile(path):
    raise TaskError(f'{what}: file {path} does not exist')
  with open(path, encoding='utf-8') as f:
    try:
      return json.load(f)
    except json.JSONDecodeError as error:
      raise TaskError(f'{what}: {path} is not valid JSON ({error})') from error


def _get(record: Mapping, key: str, path: str, where: str):
  if not isinstance(record, Mapping) or key not in record:
    raise TaskError(f'{path}: {where} has no key {key!r}')
  return record[key]


def _answer_strings(answers, path: str, where: str) -> tuple[str, ...]:
  if not isinstance(answers, list) or not answers:
    raise TaskError(f'{path}: {where} needs a non-empty list of answers')
  return tuple(a['answer'] if isinstance(a, Mapping) else str(a) for a in answers)


# -------------------------------------------------------------------------------- loaders


def load_coco_captions(annotations: str, images: str) -> list[CaptionExample]:
  """COCO captions JSON ({'images': [{id, file_name}], 'annotations': [{image_id,
  caption}]}): one example per image that has captions, in the file's image order."""
  data = _read_json(annotations, 'coco_captions')
  files = {}
  for i, image in enumerate(_get(data, 'images', annotations, 'the file')):
    files[_get(image, 'id', annotations, f'images[{i}]')] = _get(
        image, 'file_name', annotations, f'images[{i}]')
  captions = collections.defaultdict(list)
  for i, annotation in enumerate(_get(data, 'annotations', annotations, 'the file')):
    image_id = _get(annotation, 'image_id', annotations, f'annotations[{i}]')
    if image_id not in files:
      raise TaskError(f'{annotations}: annotations[{i}] names image {image_id!r}, which is '
                      f'not in its images list')
    captions[image_id].append(_get(annotation, 'caption', annotations, f'annotations[{i}]'))
  return [CaptionExample(image_id, os.path.join(images, files[image_id]),
                         tuple(captions[image_id]))
          for image_id in files if captions[image_id]]


def load_karpathy(file: str, images: str, split: str) -> list[CaptionExample]:
  """Karpathy's dataset_coco.json: images of the named split(s) ('test', 'train,restval')
  with their raw sentences; the id is the COCO id (cocoid) when present."""
  data = _read_json(file, 'karpathy')
  wanted = {s.strip() for s in split.split(',') if s.strip()}
  examples = []
  for i, image in enumerate(_get(data, 'images', file, 'the file')):
    if _get(image, 'split', file, f'images[{i}]') not in wanted:
      continue
    sentences = _get(image, 'sentences', file, f'images[{i}]')
    path = os.path.join(images, image.get('filepath', ''),
                        _get(image, 'filename', file, f'images[{i}]'))
    examples.append(CaptionExample(
        image.get('cocoid', image.get('imgid', i)), path,
        tuple(_get(s, 'raw', file, f'images[{i}].sentences') for s in sentences)))
  if not examples:
    raise TaskError(f'{file}: no image is in split {split!r}')
  return examples


def load_textcaps(file: str, images: str) -> list[CaptionExample]:
  """TextCaps 0.1 ({'data': [{image_id, image_path?, caption_str, reference_strs?}]}): one
  example per image; references from reference_strs, else the image's caption_str's."""
  data = _read_json(file, 'textcaps')
  paths, references = {}, collections.defaultdict(list)
  for i, entry in enumerate(_get(data, 'data', file, 'the file')):
    image_id = _get(entry, 'image_id', file, f'data[{i}]')
    paths.setdefault(image_id, entry.get('image_path') or f'{image_id}.jpg')
    if entry.get('reference_strs'):
      references[image_id] = list(entry['reference_strs'])
    elif 'caption_str' in entry and entry['caption_str'] not in references[image_id]:
      references[image_id].append(entry['caption_str'])
  return [CaptionExample(image_id, os.path.join(images, paths[image_id]),
                         tuple(references[image_id]))
          for image_id in paths if references[image_id]]


def load_vqav2(questions: str, annotations: str, images: str,
               image_pattern: str) -> list[VqaExample]:
  """VQAv2 / OK-VQA: questions JSON + annotations JSON (human answers per question)."""
  question_data = _read_json(questions, 'vqav2 questions')
  annotation_data = _read_json(annotations, 'vqav2 annotations')
  subtype = question_data.get('data_subtype', '')
  answers = {}
  for i, annotation in enumerate(_get(annotation_data, 'annotations', annotations, 'the file')):
    qid = _get(annotation, 'question_id', annotations, f'annotations[{i}]')
    answers[qid] = _answer_strings(_get(annotation, 'answers', annotations,
                                        f'annotations[{i}]'), annotations, f'annotations[{i}]')
  examples = []
  for i, question in enumerate(_get(question_data, 'questions', questions, 'the file')):
    qid = _get(question, 'question_id', questions, f'questions[{i}]')
    if qid not in answers:
      raise TaskError(f'{annotations}: no annotation for question_id {qid!r} of {questions}')
    image_id = _get(question, 'image_id', questions, f'questions[{i}]')
    file_name = image_pattern.format(image_id=image_id, data_subtype=subtype)
    examples.append(VqaExample(qid, os.path.join(images, file_name),
                               _get(question, 'question', questions, f'questions[{i}]'),
                               answers[qid]))
  return examples


def load_textvqa(file: str, images: str, image_pattern: str) -> list[VqaExample]:
  """TextVQA 0.5.1 ({'data': [{question_id, image_id, question, answers: [10 str]}]})."""
  data = _read_json(file, 'textvqa')
  examples = []
  for i, entry in enumerate(_get(data, 'data', file, 'the file')):
    where = f'data[{i}]'
    image_id = _get(entry, 'image_id', file, where)
    examples.append(VqaExample(
        _get(entry, 'question_id', file, where),
        os.path.join(images, image_pattern.format(image_id=image_id)),
        _get(entry, 'question', file, where),
        _answer_strings(_get(entry, 'answers', file, where), file, where)))
  return examples


def load_vizwiz(file: str, images: str) -> list[VqaExample]:
  """VizWiz-VQA ([{image, question, answers: [{answer, answer_confidence}]}]); the image
  file name is the question's id."""
  data = _read_json(file, 'vizwiz')
  if not isinstance(data, list):
    raise TaskError(f'{file}: expected a list of questions (VizWiz layout)')
  examples = []
  for i, entry in enumerate(data):
    image = _get(entry, 'image', file, f'[{i}]')
    examples.append(VqaExample(image, os.path.join(images, image),
                               _get(entry, 'question', file, f'[{i}]'),
                               _answer_strings(_get(entry, 'answers', file, f'[{i}]'), file,
                                               f'[{i}]')))
  return examples


def load_gqa(file: str, images: str) -> list[VqaExample]:
  """GQA ({question_id: {imageId, question, answer}}); one answer scored as ten."""
  data = _read_json(file, 'gqa')
  if not isinstance(data, Mapping):
    raise TaskError(f'{file}: expected an object keyed by question id (GQA layout)')
  examples = []
  for qid, entry in data.items():
    image_id = _get(entry, 'imageId', file, f'question {qid!r}')
    examples.append(VqaExample(qid, os.path.join(images, f'{image_id}.jpg'),
                               _get(entry, 'question', file, f'question {qid!r}'),
                               (_get(entry, 'answer', file, f'question {qid!r}'),) * 10))
  return examples


_LOADERS = {'coco_captions': load_coco_captions, 'karpathy': load_karpathy,
            'textcaps': load_textcaps, 'vqav2': load_vqav2, 'textvqa': load_textvqa,
            'vizwiz': load_vizwiz, 'gqa': load_gqa}


# ------------------------------------------------------------------------------ registry


@dataclasses.dataclass(frozen=True)
class Task:
  """A resolved task: absolute file paths per split; `template` None = the kind's default."""
  name: str
  kind: str
  eval_split: dict[str, Any]
  support_split: dict[str, Any]
  template: str | None = None

  def load(self, split: str) -> list[Example]:
    spec = dict(self.eval_split if split == 'eval' else self.support_split)
    file_format = spec.pop('format')
    try:
      examples = _LOADERS[file_format](**spec)
    except TaskError as error:
      raise TaskError(f'task {self.name!r} ({split} split): {error}') from error
    if not examples:
      raise TaskError(f'task {self.name!r} ({split} split): no examples in {spec}')
    return examples


def _plain(value):
  """ConfigDicts (and FrozenConfigDicts) to plain dicts, recursively."""
  if hasattr(value, 'to_dict'):
    value = value.to_dict()
  if isinstance(value, Mapping):
    return {k: _plain(v) for k, v in value.items()}
  return value


def _merge(base: dict, override: Mapping) -> dict:
  merged = dict(base)
  for key, value in override.items():
    if isinstance(value, Mapping) and isinstance(merged.get(key), Mapping):
      merged[key] = _merge(merged[key], value)
    else:
      merged[key] = value
  return merged


def task_spec(name: str, task_specs: Mapping | None = None) -> dict[str, Any]:
  """The built-in spec of `name` with `task_specs[name]` merged over it."""
  overrides = _plain(task_specs or {})
  if name not in BUILTIN_TASKS and name not in overrides:
    raise TaskError(f'config.eval.tasks: unknown task {name!r}; known: '
                    f'{sorted(set(BUILTIN_TASKS) | set(overrides))} (add one under '
                    f'config.eval.task_specs.{name})')
  return _merge(BUILTIN_TASKS.get(name, {}), overrides.get(name, {}))


def check_spec(name: str, spec: Mapping[str, Any]) -> None:
  """Raises TaskError naming the key of `config.eval.task_specs.<name>` that is wrong."""
  where = f'config.eval.task_specs.{name}'
  file_format = spec.get('format')
  if file_format not in FORMAT_KEYS:
    raise TaskError(f'{where}.format: {file_format!r} is not one of {sorted(FORMAT_KEYS)}')
  kind = spec.get('kind', FORMAT_KIND[file_format])
  if kind not in KINDS:
    raise TaskError(f'{where}.kind: {kind!r} is not one of {KINDS}')
  for split in ('eval', 'support'):
    if not isinstance(spec.get(split), Mapping):
      raise TaskError(f'{where}.{split}: missing (a dict of the split\'s files)')
    split_format = spec[split].get('format', file_format)
    if split_format not in FORMAT_KEYS:
      raise TaskError(f'{where}.{split}.format: {split_format!r} is not one of '
                      f'{sorted(FORMAT_KEYS)}')
    if FORMAT_KIND[split_format] != kind:
      raise TaskError(f'{where}.{split}.format: {split_format!r} holds {FORMAT_KIND[split_format]}'
                      f' data but the task is a {kind} task')
    for key in FORMAT_KEYS[split_format] + ('images',):
      if not spec[split].get(key):
        raise TaskError(f'{where}.{split}.{key}: missing (format {split_format!r} needs '
                        f'{FORMAT_KEYS[split_format] + ("images",)})')


def _resolve_paths(split: Mapping, file_format: str, root: str) -> dict[str, Any]:
  resolved = {'format': split.get('format', file_format)}
  for key in FORMAT_KEYS[resolved['format']] + ('images',):
    value = split[key]
    if key in ('annotations', 'questions', 'file', 'images'):
      value = os.path.join(root, os.path.expanduser(value))
    resolved[key] = value
  return resolved


def resolve_task(name: str, config) -> Task:
  """The task `name` of `config` (built-in or from config.eval.task_specs), paths resolved."""
  spec = task_spec(name, config.eval.get('task_specs'))
  check_spec(name, spec)
  root = spec.get('root') or config.eval.get('data_root', '')
  if root == SYNTHETIC_ROOT:
    root = os.path.join(os.path.expanduser(config.data.root), 'eval')
  if not root:
    raise TaskError(f'task {name!r}: no data directory; set config.eval.data_root (or '
                    f'config.eval.task_specs.{name}.root)')
  root = os.path.expanduser(root)
  file_format = spec['format']
  return Task(name=name, kind=spec.get('kind', FORMAT_KIND[file_format]),
              eval_split=_resolve_paths(spec['eval'], file_format, root),
              support_split=_resolve_paths(spec['support'], file_format, root),
              template=spec.get('template'))
