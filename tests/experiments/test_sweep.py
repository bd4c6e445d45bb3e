"""A tiny two-variant sweep end to end: runs, tables, plots, resume, launcher dry-runs."""

import csv
import os
import shlex

import pytest

from experiments import sweep
from experiments import sweep_lib

SWEEP_FILE = '''
from experiments import sweep_lib

def get_sweep(arg=None):
  return sweep_lib.Sweep(
      name='text_share', swept='text share (%)', config='experiments/tiny.py:smoke',
      overrides={{'data.root': {root!r}, 'data.synthetic': False, 'train.steps': 2,
                  'checkpoint.every': 2, 'eval.every': 2}},
      variants=(sweep_lib.Variant('no_text', {{'data.weights.text': 0.0}}, x=0),
                sweep_lib.Variant('half_text', {{'data.weights.text': 0.5}}, x=50)))
'''


@pytest.fixture(scope='module')
def sweep_file(tmp_path_factory, synthetic_root):
  path = tmp_path_factory.mktemp('sweeps') / 'text_share.py'
  path.write_text(SWEEP_FILE.format(root=synthetic_root))
  return str(path)


@pytest.mark.slow
def test_local_sweep_writes_results_and_resumes(sweep_file, tmp_path, capsys):
  workdir = str(tmp_path / 'sweep')
  assert sweep.main([f'--sweep={sweep_file}', f'--workdir={workdir}']) == 0
  with open(os.path.join(workdir, 'results.csv')) as f:
    rows = list(csv.DictReader(f))
  assert [r['variant'] for r in rows] == ['no_text', 'half_text']
  assert all(float(r['loss']) > 0 for r in rows)
  assert rows[0]['loss/text'] == ''  # a source with weight 0 is never trained on
  assert float(rows[1]['loss/text']) > 0
  assert '| no_text | 0 |' in open(os.path.join(workdir, 'results.md')).read()
  for name in ('no_text', 'half_text'):
    assert os.path.exists(os.path.join(workdir, name, sweep.DONE))
  eval_columns = [c for c in rows[0] if c.startswith('eval/')]
  tasks = {c.split('/')[1] for c in eval_columns}
  for task in tasks:
    assert os.path.getsize(os.path.join(workdir, f'eval_{task}.png')) > 0
  before = open(os.path.join(workdir, 'no_text', 'metrics.jsonl')).read()
  capsys.readouterr()
  assert sweep.main([f'--sweep={sweep_file}', f'--workdir={workdir}']) == 0
  assert 'no_text: done, skipped' in capsys.readouterr().out
  assert open(os.path.join(workdir, 'no_text', 'metrics.jsonl')).read() == before


def test_launcher_dry_run_gives_one_job_per_variant(sweep_file, capsys):
  assert sweep.main([f'--sweep={sweep_file}', '--workdir=gs://b/sweep', '--launcher=tpu_vm',
                     '--launcher-args=--name=mm1 --zone=z --type=v5p-64', '--dry-run']) == 0
  lines = capsys.readouterr().out.splitlines()
  assert len(lines) == 2
  argv = shlex.split(lines[1])
  assert argv[1:4] == ['-m', 'launch.tpu_vm', 'run']
  assert '--workdir=gs://b/sweep/half_text' in argv
  assert 'data.weights.text=0.5' in argv


def test_a_typo_in_a_variant_is_named_before_anything_runs(tmp_path, capsys):
  path = tmp_path / 'bad.py'
  path.write_text(
      'from experiments import sweep_lib\n'
      'def get_sweep(arg=None):\n'
      "  return sweep_lib.Sweep(name='b', swept='x', config='experiments/tiny.py',\n"
      "      overrides={}, variants=(sweep_lib.Variant('v', {'data.wieghts.text': 0.1}, x=1),))\n")
  assert sweep.main([f'--sweep={path}', f'--workdir={tmp_path / "w"}']) == 2
  assert 'data.wieghts' in capsys.readouterr().err
  assert not (tmp_path / 'w').exists()


@pytest.mark.parametrize('name', ['mixture', 'connector', 'image_tokens', 'resolution'])
def test_shipped_ablations_load_and_name_real_keys(name):
  loaded = sweep_lib.load_sweep(f'experiments/ablations/{name}.py')
  assert len(loaded.variants) >= 3
  for variant in loaded.variants:
    loaded.config_for(variant)
