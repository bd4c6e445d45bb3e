"""Few-shot prompts: demonstrations from a support split, interleaved with their images.

A prompt is a list of parts (images and strings, as `mm1_jax.load(...).generate` and
`data_pipelines.documents.encode_parts` take them):

    [demo image 1, demo text 1, ..., demo image k, demo text k, query image, query prefix]

The text of a demonstration is the task's template filled in completely; the query gets
the template up to its target placeholder (`{caption}` for captioning, `{answer}` for
VQA), so the model continues with the target. With the default templates this is exactly
how the synthetic interleaved documents are laid out: an image, then its caption or its
`Question: ... Answer: ...` line. A caption demonstration uses the first reference, a VQA
demonstration the majority human answer.

Demonstrations are drawn without replacement, deterministically from (seed, query
index): the same config gives the same prompts, and each query sees its own sample.
"""

from __future__ import annotations

import string
from collections.abc import Mapping, Sequence

import numpy as np

from mm1_jax.eval.tasks import CaptionExample, Example

TARGET_FIELD = {'caption': 'caption', 'vqa': 'answer'}
TEMPLATE_FIELDS = {'caption': {'caption'}, 'vqa': {'question', 'answer'}}
DEFAULT_TEMPLATES = {'caption': '{caption}', 'vqa': 'Question: {question} Answer: {answer}'}


class TemplateError(ValueError):
  """A prompt template cannot be used; the message names it."""


def check_template(template: str, kind: str, where: str = 'template') -> None:
  """Raises TemplateError unless `template` names only its kind's fields and ends with
  the target field (so that the model's continuation is the target)."""
  try:
    fields = [field for _, field, _, _ in string.Formatter().parse(template) if field is not None]
  except ValueError as error:
    raise TemplateError(f'{where}: {template!r} is not a format string ({error})') from error
  unknown = set(fields) - TEMPLATE_FIELDS[kind]
  if unknown:
    raise TemplateError(f'{where}: {template!r} names {sorted(unknown)}; a {kind} template '
                        f'may use {sorted(TEMPLATE_FIELDS[kind])}')
  target = TARGET_FIELD[kind]
  if fields.count(target) != 1 or fields[-1] != target:
    raise TemplateError(f'{where}: {template!r} must end with {{{target}}}, exactly once')
  if not template.rstrip().endswith('{' + target + '}'):
    raise TemplateError(f'{where}: {template!r} must have nothing after {{{target}}}')


def _fields(example: Example, with_target: bool) -> dict[str, str]:
  if isinstance(example, CaptionExample):
    return {'caption': example.references[0] if with_target else ''}
  return {'question': example.question,
          'answer': example.majority_answer if with_target else ''}


def demonstration_text(template: str, example: Example) -> str:
  return template.format(**_fields(example, with_target=True)).strip()


def query_text(template: str, example: Example) -> str:
  """The template up to the target placeholder (trailing spaces removed)."""
  return template.format(**_fields(example, with_target=False)).rstrip()


def sample_demonstrations(support: Sequence[Example], shots: int, *, seed: int,
                          query_index: int) -> list[Example]:
  """`shots` distinct support examples for query number `query_index` (deterministic)."""
  if shots == 0:
    return []
  if shots > len(support):
    raise ValueError(f'{shots} shots need at least {shots} support examples, the support '
                     f'split has {len(support)}')
  rng = np.random.default_rng([seed, query_index])
  return [support[int(i)] for i in rng.choice(len(support), size=shots, replace=False)]


def build_prompt(template: str, demonstrations: Sequence[Example], query: Example,
                 load_image) -> list:
  """The parts of one prompt; `load_image(path)` returns what encode_parts accepts."""
  parts = []
  for demo in demonstrations:
    parts += [load_image(demo.image), demonstration_text(template, demo)]
  parts.append(load_image(query.image))
  prefix = query_text(template, query)
  if prefix:
    parts.append(prefix)
  return parts


def template_for(kind: str, templates: Mapping[str, str] | None,
                 override: str | None = None) -> str:
  """The task's own template, else config.eval.templates[kind], else the default."""
  if override:
    return override
  if templates and templates.get(kind):
    return templates[kind]
  return DEFAULT_TEMPLATES[kind]
