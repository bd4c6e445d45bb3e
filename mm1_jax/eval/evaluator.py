"""Few-shot evaluation of a model: tasks x shots -> CIDEr / VQA accuracy, and the report.

`evaluate_model(config, model, tokenizer, step, workdir)` is the one entry point, used by
the trainer (config.eval.every) and by `python -m mm1_jax.evaluate`. For each task of
config.eval.tasks and each shot count it builds one prompt per example (see
prompting.py), decodes greedily with the KV cache in batches, scores the answers and
returns {'eval/<task>/<k>shot': score}: CIDEr x 100 for captioning (as papers print it),
VQA accuracy in percent. With a workdir it also writes WORKDIR/eval/step_<N>.json (the
scores plus a few predictions per entry) and WORKDIR/eval/step_<N>.md (a tasks x shots
table); only process 0 writes.
"""

from __future__ import annotations

import functools
import json
import os
from collections.abc import Sequence

import jax
import numpy as np
from tqdm import tqdm

from data_pipelines import documents as documents_lib
from data_pipelines import packing
from mm1_jax.eval import decoding
from mm1_jax.eval import metrics
from mm1_jax.eval import prompting
from mm1_jax.eval import settings as settings_lib
from mm1_jax.eval import tasks as tasks_lib

SAMPLES_PER_ENTRY = 5  # predictions kept in step_N.json per task and shot count
LENGTH_MULTIPLE = 16   # prompts are padded to a multiple of this: fewer compilations
METRIC_NAMES = {'caption': 'CIDEr', 'vqa': 'VQA accuracy'}


def module_of(loaded):
  """The MM1 nnx module inside what `mm1_jax.load(workdir)` returns."""
  return loaded._model  # noqa: SLF001  (the inference API keeps it private)


def metric_key(task: str, shots: int) -> str:
  return f'eval/{task}/{shots}shot'


@functools.lru_cache(maxsize=4096)
def _image_bytes(path: str) -> bytes:
  with open(path, 'rb') as f:
    return f.read()


def _load_image(path: str, task: str) -> bytes:
  try:
    return _image_bytes(path)
  except OSError as error:
    raise tasks_lib.TaskError(f'task {task!r}: cannot read image {path} ({error})') from error


def _encode(parts_list, tokenizer, config) -> list[documents_lib.Document]:
  return [documents_lib.encode_parts(
      parts, tokenizer, image_size=config.model.vit.image_size,
      num_image_tokens=config.model.connector.num_tokens,
      image_token_id=tokenizer.image_token_id, add_bos=True, add_eos=False)
      for parts in parts_list]


def _batches(documents: Sequence, batch_size: int, *, seq_len: int, max_images: int,
             image_token_id: int, pad_id: int):
  """Fixed-shape batches; the last one is filled up with copies of its first row."""
  for start in range(0, len(documents), batch_size):
    chunk = list(documents[start:start + batch_size])
    real = len(chunk)
    chunk += [chunk[0]] * (batch_size - real)
    yield real, packing.rows_from_documents(chunk, image_token_id=image_token_id,
                                            seq_len=seq_len, max_images=max_images,
                                            pad_id=pad_id)


def _round_up(value: int, multiple: int) -> int:
  return -(-value // multiple) * multiple


def generate_answers(config, model, tokenizer, prompts: Sequence[Sequence], *, kind: str,
                     settings: settings_lib.EvalSettings, mesh=None, desc: str = '',
                     show_progress: bool = True) -> list[str]:
  """Greedy answers (cached decoding) to prompts (lists of images and strings)."""
  docs = _encode(prompts, tokenizer, config)
  seq_len = _round_up(max(len(d.tokens) for d in docs), LENGTH_MULTIPLE)
  max_images = max(1, max(d.num_images for d in docs))
  stop = decoding.StopConditions(token_ids=(tokenizer.eos_id, tokenizer.image_token_id),
                                 strings=settings.stop_strings)
  batch_size = settings.batch_size
  if mesh is not None:  # rows must divide over the batch shards
    shards = int(np.prod([mesh.shape[a] for a in ('data', 'fsdp') if a in mesh.shape]))
    batch_size = _round_up(batch_size, shards)
  answers = []
  progress = tqdm(total=len(docs), desc=desc, unit='ex', leave=False,
                  disable=not show_progress)
  for real, batch in _batches(docs, batch_size, seq_len=seq_len, max_images=max_images,
                              image_token_id=tokenizer.image_token_id,
                              pad_id=tokenizer.pad_id):
    generation = decoding.greedy_generate(
        model, batch, tokenizer, max_new_tokens=settings.max_new_tokens[kind], stop=stop,
        mesh=mesh)
    answers += [text.strip() for text in generation.texts[:real]]
    progress.update(real)
  progress.close()
  return answers


def _score(kind: str, examples: Sequence[tasks_lib.Example], answers: Sequence[str]) -> float:
  predictions = {example.id: answer for example, answer in zip(examples, answers)}
  if kind == 'caption':
    references = {example.id: list(example.references) for example in examples}
    return 100.0 * metrics.cider(references, predictions)
  return metrics.vqa_accuracy(predictions, {e.id: list(e.answers) for e in examples})


def _sample_record(example, answer: str) -> dict:
  record = {'id': example.id, 'image': example.image, 'prediction': answer}
  if isinstance(example, tasks_lib.CaptionExample):
    record['references'] = list(example.references)
  else:
    record['question'] = example.question
    record['answers'] = list(example.answers)
  return record


def evaluate_task(config, model, tokenizer, task: tasks_lib.Task, shots: Sequence[int], *,
                  settings: settings_lib.EvalSettings, mesh=None,
                  show_progress: bool = True) -> dict[int, dict]:
  """{shots: {'score', 'num_examples', 'samples'}} for one task."""
  examples = task.load('eval')
  if settings.num_examples:
    examples = examples[:settings.num_examples]
  support = task.load('support') if any(shots) else []
  template = prompting.template_for(task.kind, settings.templates, task.template)
  load_image = functools.partial(_load_image, task=task.name)
  results = {}
  for k in shots:
    prompts = [prompting.build_prompt(
        template, prompting.sample_demonstrations(support, k, seed=settings.seed,
                                                  query_index=i), example, load_image)
        for i, example in enumerate(examples)]
    answers = generate_answers(config, model, tokenizer, prompts, kind=task.kind,
                               settings=settings, mesh=mesh, desc=f'{task.name} {k}-shot',
                               show_progress=show_progress)
    results[k] = {'score': _score(task.kind, examples, answers),
                  'num_examples': len(examples),
                  'samples': [_sample_record(e, a) for e, a in
                              zip(examples[:SAMPLES_PER_ENTRY], answers)]}
  return results


def markdown_table(scores: dict[str, float], task_kinds: dict[str, str],
                   shots: Sequence[int], step: int) -> str:
  """A tasks x shots table of the scores."""
  lines = [f'Few-shot evaluation at step {step}', '',
           '| task | metric | ' + ' | '.join(f'{k}-shot' for k in shots) + ' |',
           '|---|---|' + '---:|' * len(shots)]
  for task, kind in task_kinds.items():
    cells = [f'{scores[metric_key(task, k)]:.1f}' if metric_key(task, k) in scores else '-'
             for k in shots]
    lines.append(f'| {task} | {METRIC_NAMES[kind]} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(lines) + '\n'


def _write_report(workdir: str, step: int, scores: dict, details: dict, task_kinds: dict,
                  shots: Sequence[int]) -> None:
  directory = os.path.join(workdir, 'eval')
  os.makedirs(directory, exist_ok=True)
  report = {'step': int(step), 'scores': scores, 'tasks': details}
  for name, text in ((f'step_{step}.json', json.dumps(report, indent=1, default=str)),
                     (f'step_{step}.md', markdown_table(scores, task_kinds, shots, step))):
    path = os.path.join(directory, name)
    with open(path + '.tmp', 'w', encoding='utf-8') as f:
      f.write(text)
    os.replace(path + '.tmp', path)


def evaluate_model(config, model, tokenizer, step: int, workdir: str | None = None, *,
                   tasks: Sequence[str] | None = None, shots: Sequence[int] | None = None,
                   mesh=None, show_progress: bool = True) -> dict[str, float]:
  """Scores `model` (an MM1 nnx module) on config.eval's tasks and shots.

  Returns {'eval/<task>/<k>shot': score} (CIDEr x 100 or VQA accuracy %). With `workdir`,
  writes WORKDIR/eval/step_<step>.json and .md (process 0). `tasks`/`shots` replace the
  configured lists. `mesh` (the training mesh) splits the prompt rows over its batch axes;
  pass it whenever the parameters are sharded, and always with several processes (each
  builds the same prompts and feeds its own devices' rows).
  """
  settings = settings_lib.resolve(config, tasks=tasks, shots=shots)
  scores, details, task_kinds = {}, {}, {}
  for name in settings.tasks:
    task = tasks_lib.resolve_task(name, config)
    task_kinds[name] = task.kind
    results = evaluate_task(config, model, tokenizer, task, settings.shots, settings=settings,
                            mesh=mesh, show_progress=show_progress)
    details[name] = {'kind': task.kind, 'metric': METRIC_NAMES[task.kind],
                     'shots': {str(k): v for k, v in results.items()}}
    for k, result in results.items():
      scores[metric_key(name, k)] = float(result['score'])
  if workdir is not None and jax.process_index() == 0:
    _write_report(workdir, step, scores, details, task_kinds, settings.shots)
  return scores
