"""`python -m mm1_jax.evaluate` and `evaluate_model`.

The workdir here holds only config.json and the tokenizer: `--step=0` evaluates the initial
parameters (what training starts from), which needs no training run.
"""

import json
import os
import shutil
import subprocess
import sys

import pytest

from experiments import tiny
from mm1_jax import config_lib
from mm1_jax.eval import evaluator
from mm1_jax.eval import settings as settings_lib
from mm1_jax.evaluate import evaluation_config, load_for_evaluation

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TASKS = ('synthetic_coco', 'synthetic_vqav2')


def _small_eval_config(synthetic_root):
  config = tiny.get_config('smoke')
  config.data.root = synthetic_root
  config.data.synthetic = False
  config.eval.num_examples = 4
  config.eval.batch_size = 4
  config.eval.max_new_tokens.caption = 6
  config.eval.max_new_tokens.vqa = 4
  return config


@pytest.fixture(scope='module')
def workdir(tmp_path_factory, synthetic_root):
  directory = tmp_path_factory.mktemp('eval_workdir')
  config = _small_eval_config(synthetic_root)
  (directory / 'config.json').write_text(config.to_json_best_effort(indent=2))
  shutil.copyfile(os.path.join(synthetic_root, 'tokenizer', 'spm.model'),
                  directory / 'tokenizer.model')
  return str(directory)


def test_evaluate_model_returns_one_score_per_task_and_shot(workdir, tmp_path):
  config, module, tokenizer, step = load_for_evaluation(workdir, 0)
  assert step == 0
  scores = evaluator.evaluate_model(config, module, tokenizer, step, str(tmp_path),
                                    tasks=['synthetic_vqav2'], shots=[0, 2],
                                    show_progress=False)
  assert sorted(scores) == ['eval/synthetic_vqav2/0shot', 'eval/synthetic_vqav2/2shot']
  assert all(0.0 <= value <= 100.0 for value in scores.values())
  with open(tmp_path / 'eval' / 'step_0.json') as f:
    report = json.load(f)
  samples = report['tasks']['synthetic_vqav2']['shots']['2']['samples']
  assert {'id', 'image', 'question', 'answers', 'prediction'} <= set(samples[0])


def test_cli_writes_report_table_and_metrics(workdir):
  command = [sys.executable, '-m', 'mm1_jax.evaluate', f'--workdir={workdir}', '--step=0',
             '--shots=0']
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  keys = [f'eval/{task}/0shot' for task in TASKS]
  with open(os.path.join(workdir, 'eval', 'step_0.json')) as f:
    report = json.load(f)
  assert report['step'] == 0 and sorted(report['scores']) == keys
  coco = report['tasks']['synthetic_coco']
  assert coco['metric'] == 'CIDEr' and coco['shots']['0']['num_examples'] == 4
  assert len(coco['shots']['0']['samples'][0]['references']) == 5
  with open(os.path.join(workdir, 'eval', 'step_0.md')) as f:
    table = f.read()
  assert '| task | metric | 0-shot |' in table
  assert '| synthetic_coco | CIDEr |' in table and '| synthetic_vqav2 | VQA accuracy |' in table
  assert table in result.stdout
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    last = json.loads(f.readlines()[-1])
  assert last['step'] == 0 and all(key in last for key in keys)


def test_flag_config_supplies_the_eval_section_and_data_root(synthetic_root):
  workdir_config = _small_eval_config(synthetic_root)
  flag_config = tiny.get_config()
  flag_config.eval.shots = (0, 8)
  flag_config.eval.num_examples = 7
  config = evaluation_config(workdir_config, flag_config)
  assert tuple(config.eval.shots) == (0, 8) and config.eval.num_examples == 7
  assert config.data.root == flag_config.data.root
  assert evaluation_config(workdir_config, None).eval.num_examples == 4


@pytest.mark.parametrize('key, value, message', [
    ('shots', (0, -4), 'config.eval.shots'),
    ('tasks', ('synthetic_coco', 'unknown'), "unknown task 'unknown'"),
    ('num_examples', -1, 'config.eval.num_examples'),
    ('stop_strings', ('',), 'config.eval.stop_strings'),
])
def test_bad_eval_settings_fail_at_start_up_naming_the_key(synthetic_root, key, value, message):
  config = _small_eval_config(synthetic_root)
  config.eval[key] = value
  with pytest.raises(config_lib.ConfigError, match=message):
    config_lib.validate(config)


def test_bad_template_and_limits_are_named(synthetic_root):
  config = _small_eval_config(synthetic_root)
  config.eval.templates.vqa = 'Question: {question}'
  with pytest.raises(config_lib.ConfigError, match='config.eval.templates.vqa'):
    settings_lib.validate(config)
  config = _small_eval_config(synthetic_root)
  config.eval.max_new_tokens.caption = 0
  with pytest.raises(config_lib.ConfigError, match='config.eval.max_new_tokens.caption'):
    settings_lib.validate(config)


def test_a_workdir_config_without_the_new_eval_keys_still_resolves(synthetic_root):
  config = _small_eval_config(synthetic_root)
  config.unlock()
  del config.eval['templates']
  del config.eval['stop_strings']
  resolved = settings_lib.resolve(config)
  assert resolved.templates['vqa'] == 'Question: {question} Answer: {answer}'
  assert resolved.stop_strings == ('\n', 'Question:')


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get('MM1_TRAINED_TINY_WORKDIR'),
                    reason='needs the full 300-step model of the README command (minutes of '
                    'training); set MM1_TRAINED_TINY_WORKDIR=DIR after `python -m mm1_jax.train '
                    '--config=experiments/tiny.py --workdir=DIR`. CI runs the 150-step version '
                    'below (test_a_briefly_trained_...)')
def test_the_trained_tiny_model_scores_clearly_above_an_untrained_one():
  from mm1_jax.evaluate import load_for_evaluation
  workdir = os.environ['MM1_TRAINED_TINY_WORKDIR']
  scores = {}
  for step in (None, 0):
    config, module, tokenizer, _ = load_for_evaluation(workdir, step)
    config.eval.num_examples = 100
    scores[step] = evaluator.evaluate_model(config, module, tokenizer, 0, tasks=[
        'synthetic_coco', 'synthetic_vqav2'], shots=[0, 4], show_progress=False)
  trained, untrained = scores[None], scores[0]
  for key in trained:  # CIDEr x 100 and VQA accuracy %, 0 and 4 shots
    assert trained[key] > untrained[key] + 10, (key, trained[key], untrained[key])


@pytest.fixture(scope='module')
def briefly_trained(tmp_path_factory):
  """tiny.py trained for 150 steps (half the README run) on a 30%-scale synthetic world."""
  from data_pipelines import synthetic
  from mm1_jax.train import trainer
  root = str(tmp_path_factory.mktemp('world30') / 'world')
  synthetic.generate(root, seed=0, scale=0.3)
  config = tiny.get_config()
  config.data.root, config.data.synthetic = root, False
  config.train.steps = 150
  config.checkpoint.every = 150
  config.eval.every = 0
  workdir = str(tmp_path_factory.mktemp('briefly_trained'))
  trainer.train(config, workdir, show_progress=False)
  return workdir


@pytest.mark.slow
def test_a_briefly_trained_tiny_model_scores_clearly_above_an_untrained_one(briefly_trained):
  from mm1_jax.evaluate import load_for_evaluation
  scores = {}
  for step in (None, 0):
    config, module, tokenizer, _ = load_for_evaluation(briefly_trained, step)
    config.eval.num_examples = 40
    scores[step] = evaluator.evaluate_model(config, module, tokenizer, 0, tasks=[
        'synthetic_coco', 'synthetic_vqav2'], shots=[0], show_progress=False)
  trained, untrained = scores[None], scores[0]
  assert set(trained) == {'eval/synthetic_coco/0shot', 'eval/synthetic_vqav2/0shot'}
  for key in trained:  # CIDEr x 100 and VQA accuracy in %
    assert trained[key] > untrained[key] + 5, (key, trained[key], untrained[key])
