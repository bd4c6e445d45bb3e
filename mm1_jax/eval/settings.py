"""The `config.eval` section, resolved and checked.

    tasks           names of the tasks to run (built-in or defined in task_specs)
    shots           demonstration counts, e.g. (0, 4, 8)
    every           run during training every N steps (0: never; wired by the trainer)
    task_specs      NAME -> task definition (see mm1_jax/eval/tasks.py), added or overriding
    data_root       where the real datasets' files are (relative paths of the specs)
    templates       caption / vqa prompt templates; a task may carry its own `template`
    max_new_tokens  caption / vqa: the length limit of a generated answer
    stop_strings    a generation ends before the first of these (and at eos / <image>)
    num_examples    score only the first N examples of each task (0: all)
    batch_size      prompts decoded together
    seed            draws the demonstrations

A workdir written before a key existed still evaluates: missing keys take the defaults of
`config_lib.base_config()`.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Mapping

from mm1_jax import config_lib
from mm1_jax.eval import prompting
from mm1_jax.eval import tasks as tasks_lib


@dataclasses.dataclass(frozen=True)
class EvalSettings:
  tasks: tuple[str, ...]
  shots: tuple[int, ...]
  templates: dict[str, str]
  max_new_tokens: dict[str, int]
  stop_strings: tuple[str, ...]
  num_examples: int
  batch_size: int
  seed: int


def _plain(value):
  return value.to_dict() if hasattr(value, 'to_dict') else value


def eval_section(config) -> dict:
  """config.eval as a plain dict, with base_config() defaults for missing keys."""
  section = _plain(config_lib.base_config().eval)
  for key, value in _plain(config.get('eval', {})).items():
    if isinstance(value, Mapping) and isinstance(section.get(key), Mapping):
      section[key] = {**section[key], **_plain(value)}
    else:
      section[key] = value
  return section


def _require(cond: bool, key: str, message: str) -> None:
  if not cond:
    raise config_lib.ConfigError(f'config.eval.{key}: {message}')


def _is_int(value) -> bool:
  return isinstance(value, int) and not isinstance(value, bool)


def validate(config) -> None:
  """Raises config_lib.ConfigError naming the first config.eval key that cannot work."""
  section = eval_section(config)
  names = section['tasks']
  _require(isinstance(names, (list, tuple)) and all(isinstance(n, str) for n in names),
           'tasks', f'must be a list of task names, got {names!r}')
  for name in names:
    try:
      spec = tasks_lib.task_spec(name, section['task_specs'])
      tasks_lib.check_spec(name, spec)
      if spec.get('template'):
        kind = spec.get('kind', tasks_lib.FORMAT_KIND[spec['format']])
        prompting.check_template(spec['template'], kind,
                                 f'config.eval.task_specs.{name}.template')
    except (tasks_lib.TaskError, prompting.TemplateError) as error:
      raise config_lib.ConfigError(str(error)) from error
  shots = section['shots']
  _require(isinstance(shots, (list, tuple)) and shots and all(
      _is_int(k) and k >= 0 for k in shots), 'shots',
      f'must be a non-empty list of integers >= 0, got {shots!r}')
  _require(_is_int(section['every']) and section['every'] >= 0, 'every',
           f'must be an integer >= 0 (0: no evaluation during training), got '
           f'{section["every"]!r}')
  for kind in tasks_lib.KINDS:
    template = section['templates'].get(kind)
    _require(isinstance(template, str), f'templates.{kind}', f'must be a string, got '
             f'{template!r}')
    try:
      prompting.check_template(template, kind, f'config.eval.templates.{kind}')
    except prompting.TemplateError as error:
      raise config_lib.ConfigError(str(error)) from error
    limit = section['max_new_tokens'].get(kind)
    _require(_is_int(limit) and limit > 0, f'max_new_tokens.{kind}',
             f'must be a positive integer, got {limit!r}')
  stops = section['stop_strings']
  _require(isinstance(stops, (list, tuple)) and all(isinstance(s, str) and s for s in stops),
           'stop_strings', f'must be a list of non-empty strings, got {stops!r}')
  _require(_is_int(section['num_examples']) and section['num_examples'] >= 0, 'num_examples',
           f'must be an integer >= 0 (0: all), got {section["num_examples"]!r}')
  _require(_is_int(section['batch_size']) and section['batch_size'] > 0, 'batch_size',
           f'must be a positive integer, got {section["batch_size"]!r}')
  _require(_is_int(section['seed']), 'seed', f'must be an integer, got {section["seed"]!r}')


def resolve(config, *, tasks=None, shots=None) -> EvalSettings:
  """Checked settings; `tasks` / `shots` replace the configured ones when given."""
  validate(config)
  section = eval_section(config)
  if tasks is not None:
    section['tasks'] = tuple(tasks)
  if shots is not None:
    section['shots'] = tuple(shots)
  settings = EvalSettings(
      tasks=tuple(section['tasks']), shots=tuple(int(k) for k in section['shots']),
      templates=dict(section['templates']), max_new_tokens=dict(section['max_new_tokens']),
      stop_strings=tuple(section['stop_strings']), num_examples=int(section['num_examples']),
      batch_size=int(section['batch_size']), seed=int(section['seed']))
  if tasks is not None or shots is not None:  # the replacements are checked too
    override = config_lib.base_config()
    override.eval.task_specs = section['task_specs']
    override.eval.tasks = settings.tasks
    override.eval.shots = settings.shots
    validate(override)
  if not settings.tasks:
    raise config_lib.ConfigError('config.eval.tasks: no task to evaluate (known built-in '
                                 f'tasks: {sorted(tasks_lib.BUILTIN_TASKS)})')
  return settings
