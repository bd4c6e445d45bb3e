"""Task loaders for the released formats, the synthetic tasks, and the task registry."""

import json
import os

import pytest

from experiments import tiny
from mm1_jax.eval import tasks


def _write(path, obj):
  os.makedirs(os.path.dirname(path), exist_ok=True)
  with open(path, 'w', encoding='utf-8') as f:
    json.dump(obj, f)
  return str(path)


def test_coco_captions_group_references_by_image(tmp_path):
  path = _write(tmp_path / 'captions.json', {
      'images': [{'id': 9, 'file_name': 'b.jpg'}, {'id': 3, 'file_name': 'a.jpg'},
                 {'id': 5, 'file_name': 'no_captions.jpg'}],
      'annotations': [{'id': 1, 'image_id': 3, 'caption': 'a cat'},
                      {'id': 2, 'image_id': 9, 'caption': 'a dog'},
                      {'id': 3, 'image_id': 3, 'caption': 'one cat'}]})
  examples = tasks.load_coco_captions(path, '/img')
  assert [(e.id, e.image, e.references) for e in examples] == [
      (9, '/img/b.jpg', ('a dog',)), (3, '/img/a.jpg', ('a cat', 'one cat'))]


def test_karpathy_split_selects_splits(tmp_path):
  image = lambda i, split: {'filepath': 'val2014', 'filename': f'{i}.jpg', 'imgid': i,
                            'cocoid': 100 + i, 'split': split,
                            'sentences': [{'raw': f'caption {i}', 'tokens': []}]}
  path = _write(tmp_path / 'dataset_coco.json', {
      'dataset': 'coco', 'images': [image(0, 'test'), image(1, 'train'), image(2, 'restval')]})
  test = tasks.load_karpathy(path, '/coco', 'test')
  assert [(e.id, e.image, e.references) for e in test] == [
      (100, '/coco/val2014/0.jpg', ('caption 0',))]
  assert [e.id for e in tasks.load_karpathy(path, '/coco', 'train,restval')] == [101, 102]
  with pytest.raises(tasks.TaskError, match="no image is in split 'val'"):
    tasks.load_karpathy(path, '/coco', 'val')


def test_textcaps(tmp_path):
  path = _write(tmp_path / 'TextCaps_0.1_val.json', {'data': [
      {'image_id': 'x1', 'image_path': 'train/x1.jpg', 'caption_str': 'a sign',
       'reference_strs': ['a sign', 'a stop sign']},
      {'image_id': 'x1', 'image_path': 'train/x1.jpg', 'caption_str': 'a stop sign',
       'reference_strs': ['a sign', 'a stop sign']}]})
  [example] = tasks.load_textcaps(path, '/tc')
  assert (example.id, example.image, example.references) == (
      'x1', '/tc/train/x1.jpg', ('a sign', 'a stop sign'))


def test_vqav2_and_okvqa_layout(tmp_path):
  questions = _write(tmp_path / 'q.json', {'data_subtype': 'val2014', 'questions': [
      {'image_id': 42, 'question': 'What is it?', 'question_id': 420}]})
  annotations = _write(tmp_path / 'a.json', {'annotations': [
      {'question_id': 420, 'image_id': 42, 'multiple_choice_answer': 'cat',
       'answers': [{'answer': 'cat', 'answer_id': i + 1} for i in range(10)]}]})
  [example] = tasks.load_vqav2(questions, annotations, '/coco/val2014',
                               'COCO_{data_subtype}_{image_id:012d}.jpg')
  assert example.image == '/coco/val2014/COCO_val2014_000000000042.jpg'
  assert (example.id, example.question, example.answers) == (420, 'What is it?', ('cat',) * 10)


def test_textvqa_vizwiz_gqa(tmp_path):
  textvqa = _write(tmp_path / 'TextVQA_0.5.1_val.json', {'data': [
      {'question_id': 1, 'image_id': 'abc', 'question': 'what brand?',
       'answers': ['nike'] * 10}]})
  [t] = tasks.load_textvqa(textvqa, '/tv', '{image_id}.jpg')
  assert (t.id, t.image, t.answers) == (1, '/tv/abc.jpg', ('nike',) * 10)
  vizwiz = _write(tmp_path / 'val.json', [
      {'image': 'VizWiz_val_00000001.jpg', 'question': 'what is this?',
       'answers': [{'answer': 'soup', 'answer_confidence': 'yes'}] * 10,
       'answer_type': 'other', 'answerable': 1}])
  [v] = tasks.load_vizwiz(vizwiz, '/vw')
  assert (v.id, v.image, v.question, v.answers) == (
      'VizWiz_val_00000001.jpg', '/vw/VizWiz_val_00000001.jpg', 'what is this?', ('soup',) * 10)
  gqa = _write(tmp_path / 'testdev_balanced_questions.json', {
      '20': {'imageId': 'n1', 'question': 'Is it red?', 'answer': 'yes', 'fullAnswer': '...'}})
  [g] = tasks.load_gqa(gqa, '/gqa/images')
  assert (g.id, g.image, g.answers) == ('20', '/gqa/images/n1.jpg', ('yes',) * 10)


def test_errors_name_the_file_and_key(tmp_path):
  with pytest.raises(tasks.TaskError, match='does not exist'):
    tasks.load_gqa(str(tmp_path / 'missing.json'), '/x')
  broken = _write(tmp_path / 'broken.json', {'images': [{'id': 1}], 'annotations': []})
  with pytest.raises(tasks.TaskError, match=r"broken.json: images\[0\] has no key 'file_name'"):
    tasks.load_coco_captions(broken, '/x')
  questions = _write(tmp_path / 'q.json', {'questions': [
      {'image_id': 1, 'question': 'q?', 'question_id': 7}]})
  annotations = _write(tmp_path / 'a.json', {'annotations': []})
  with pytest.raises(tasks.TaskError, match='no annotation for question_id 7'):
    tasks.load_vqav2(questions, annotations, '/x', '{image_id}.jpg')


def _config(synthetic_root):
  config = tiny.get_config('smoke')
  config.data.root = synthetic_root
  return config


def test_synthetic_tasks_load_from_the_world(synthetic_root):
  config = _config(synthetic_root)
  coco = tasks.resolve_task('synthetic_coco', config)
  assert coco.kind == 'caption'
  val, support = coco.load('eval'), coco.load('support')
  assert len(val) > 0 and len(support) > 0
  assert all(len(e.references) == 5 and os.path.isfile(e.image) for e in val)
  assert not {e.id for e in val} & {e.id for e in support}
  vqa = tasks.resolve_task('synthetic_vqav2', config)
  questions = vqa.load('eval')
  assert vqa.kind == 'vqa' and all(len(q.answers) == 10 for q in questions)
  assert all(os.path.isfile(q.image) for q in questions)
  assert questions[0].question.endswith('?')


def test_task_specs_add_and_override_tasks(tmp_path):
  config = tiny.get_config('smoke')
  config.eval.data_root = str(tmp_path)
  config.eval.task_specs.mine = dict(
      format='vizwiz', eval=dict(file='v/val.json', images='v/val'),
      support=dict(file='v/train.json', images='v/train'), template='Q: {question} A: {answer}')
  task = tasks.resolve_task('mine', config)
  assert task.kind == 'vqa' and task.template == 'Q: {question} A: {answer}'
  assert task.eval_split['file'] == os.path.join(str(tmp_path), 'v/val.json')
  config.eval.task_specs.coco = dict(eval=dict(split='val'))
  coco = tasks.resolve_task('coco', config)
  assert coco.eval_split['split'] == 'val'
  assert coco.eval_split['file'] == os.path.join(str(tmp_path), 'coco/dataset_coco.json')


def test_registry_errors_name_the_key(tmp_path):
  config = tiny.get_config('smoke')
  with pytest.raises(tasks.TaskError, match="unknown task 'nope'"):
    tasks.resolve_task('nope', config)
  with pytest.raises(tasks.TaskError, match='set config.eval.data_root'):
    tasks.resolve_task('vqav2', config)
  config.eval.task_specs.bad = dict(format='vqav2', eval=dict(questions='q.json'),
                                    support=dict())
  with pytest.raises(tasks.TaskError, match=r'task_specs.bad.eval.annotations: missing'):
    tasks.check_spec('bad', tasks.task_spec('bad', config.eval.task_specs))
