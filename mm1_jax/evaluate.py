"""`python -m mm1_jax.evaluate --workdir=DIR [--config=FILE.py] [--step=N] [--tasks=a,b]
[--shots=0,4,8] [--config.eval.KEY=VALUE ...]`: few-shot evaluation of a trained workdir.

The model (architecture, parameters, tokenizer) always comes from the workdir. The eval
settings and the data root come from --config when it is given, else from the workdir's
own config.json. Writes DIR/eval/step_N.json and DIR/eval/step_N.md (tasks x shots),
appends {'step': N, 'eval/<task>/<k>shot': score, ...} to DIR/metrics.jsonl and prints
the table. Scores: CIDEr x 100 for captioning, VQA accuracy in percent.

A config mistake (an unknown --config.KEY, a value that does not parse or cannot work, a
data.root that is empty or holds files the synthetic world generator did not write) prints
one line naming the key and exits with status 2, before the model is loaded.

Example (the tiny model of the README, on the synthetic evaluation sets):

    python -m mm1_jax.evaluate --config=experiments/tiny.py --workdir=/tmp/mm1_tiny \\
        --shots=0,4
"""

from __future__ import annotations

import os

from absl import app, flags, logging
from ml_collections import config_flags

from mm1_jax import cli

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config (FILE.py or FILE.py:variant); its eval section and '
    'data.root are used. Default: the workdir\'s config.json.', lock_config=False)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Training workdir to evaluate.')
_STEP = flags.DEFINE_integer(
    'step', None, 'Checkpoint step (default: the latest); 0 without a checkpoint 0 means the '
    'initial parameters, those training starts from (the untrained baseline).')
_TASKS = flags.DEFINE_list('tasks', None, 'Tasks to run (default: config.eval.tasks).')
_SHOTS = flags.DEFINE_list('shots', None, 'Shot counts (default: config.eval.shots).')
flags.mark_flags_as_required(['workdir'])


def _parse_shots(values):
  if values is None:
    return None
  try:
    return [int(v) for v in values]
  except ValueError as error:
    raise app.UsageError(f'--shots: expected integers like 0,4,8, got {values}') from error


def load_for_evaluation(workdir: str, step: int | None):
  """(config, MM1 module, tokenizer, step) of the workdir. Step 0 without a checkpoint 0
  gives the initial parameters, those training starts from (train.state.init_state draws
  them from config.seed), and needs only config.json and the tokenizer."""
  import mm1_jax
  from data_pipelines.tokenizer import Tokenizer
  from mm1_jax import api
  from mm1_jax.eval import evaluator
  from mm1_jax.train import trainer
  if step == 0 and not os.path.isdir(os.path.join(workdir, 'checkpoints', '0')):
    from mm1_jax.train import state as state_lib
    config = api.load_config(workdir)
    tokenizer = Tokenizer(os.path.join(workdir, trainer.TOKENIZER_FILE))
    return config, state_lib.build_model(config, config.seed), tokenizer, 0
  loaded = mm1_jax.load(workdir, step=step)
  return loaded.config, evaluator.module_of(loaded), loaded.tokenizer, loaded.step


def evaluation_config(workdir_config, flag_config):
  """The workdir's config with the eval section and data root of `flag_config`."""
  config = workdir_config.copy_and_resolve_references()
  if flag_config is not None:
    config.unlock()
    config.eval = flag_config.eval
    config.data.root = flag_config.data.root
    config.data.synthetic = bool(flag_config.data.get('synthetic', False))
  return config


def evaluate_command(workdir: str, flag_config=None, *, step: int | None = None,
                     tasks=None, shots=None) -> None:
  """Evaluates `workdir`: start-up checks first; a mistake calls `cli.fail`."""
  logging.set_verbosity(logging.WARNING)
  from mm1_jax import api
  from mm1_jax import config_lib
  from mm1_jax.eval import evaluator
  from mm1_jax.eval import tasks as tasks_lib
  from mm1_jax.train import logging_lib

  workdir = os.path.abspath(os.path.expanduser(workdir))
  try:
    config = evaluation_config(api.load_config(workdir), flag_config)
    config_lib.check_data(config, sources=False)  # before the model is loaded
    _, module, tokenizer, step = load_for_evaluation(workdir, step)
    scores = evaluator.evaluate_model(
        config, module, tokenizer, step, workdir, tasks=tasks, shots=_parse_shots(shots))
  except (config_lib.ConfigError, tasks_lib.TaskError, FileNotFoundError) as error:
    cli.fail(error)
  writer = logging_lib.MetricWriter(workdir, tensorboard=False)
  try:
    writer.write(step, scores)
  finally:
    writer.close()
  with open(os.path.join(workdir, 'eval', f'step_{step}.md'), encoding='utf-8') as f:
    print(f.read(), end='')


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  evaluate_command(_WORKDIR.value, _CONFIG.value, step=_STEP.value, tasks=_TASKS.value,
                   shots=_SHOTS.value)


def run() -> None:
  """Console-script entry point (`mm1-evaluate`)."""
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == '__main__':
  run()
