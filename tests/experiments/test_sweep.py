"""A tiny two-variant sweep end to end: runs, tables, plots, resume; the launcher plans
parsed, and the tpu_vm one run on a fake worker (tests/launch/fake_worker.py)."""

import csv
import os
import shlex
import time

import pytest

from experiments import sweep
from experiments import sweep_launch
from experiments import sweep_lib
from launch import tpu_vm
from tests.launch import fake_worker

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


@pytest.fixture(scope='module')
def launch_sweep_file(tmp_path_factory):
  """The same sweep for launcher plans: they never read the data, so no synthetic world."""
  path = tmp_path_factory.mktemp('launch_sweeps') / 'text_share.py'
  path.write_text(SWEEP_FILE.format(root='/data/none'))
  return str(path)


def _plan(capsys, sweep_file, launcher, launcher_args, *extra):
  """(commands parsed with shlex, follow commands parsed) of a launcher dry run."""
  assert sweep.main([f'--sweep={sweep_file}', '--workdir=gs://b/sweep', f'--launcher={launcher}',
                     f'--launcher-args={launcher_args}', '--dry-run', *extra]) == 0
  out, err = capsys.readouterr()
  follow = [shlex.split(l.removeprefix('follow: ')) for l in err.splitlines()]
  return [shlex.split(line) for line in out.splitlines()], follow


def _train_argv(variant, text_weight):
  return ['-m', 'mm1_jax.train', '--config=experiments/tiny.py:smoke',
          f'--workdir=gs://b/sweep/{variant}', '--config.data.root=/data/none',
          '--config.data.synthetic=False', '--config.train.steps=2', '--config.checkpoint.every=2',
          '--config.eval.every=2', f'--config.data.weights.text={text_weight}']


def test_tpu_vm_runs_the_variants_one_after_another_each_with_its_own_log(
    launch_sweep_file, capsys, tmp_path):
  (cmd,), follow = _plan(capsys, launch_sweep_file, 'tpu_vm',
                         '--name=mm1 --zone=z-a --type=v5p-64')
  assert cmd[:6] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh', 'mm1']
  assert '--worker=all' in cmd
  remote = fake_worker.remote_of(cmd)
  fake_worker.bash_syntax_ok(remote)
  fake_worker.bash_syntax_ok(fake_worker.inner_script(remote))

  worker = fake_worker.FakeWorker(tmp_path)
  worker.hold.touch()  # the trainings last until the hold file goes
  result = worker.run(remote)
  assert result.returncode == 0, result.stderr
  worker.wait_for(lambda: worker.records(), 'the first training to start')
  time.sleep(0.5)
  assert len(worker.records()) == 1  # the second waits for the first
  worker.hold.unlink()
  sweep_log = worker.home / 'mm1-sweeps' / 'text_share' / 'sweep.log'
  worker.wait_for(lambda: '[2/2] half_text: finished' in sweep_log.read_text(),
                  'the sequence to end')
  worker.wait_unlocked()
  # One after another, never two at once, in the sweep's order.
  assert [r.split()[0] for r in worker.records()] == ['start', 'end', 'start', 'end']
  assert worker.trainings_argv() == [_train_argv('no_text', 0.0), _train_argv('half_text', 0.5)]
  for variant in ('no_text', 'half_text'):
    log = (worker.home / 'mm1-sweeps' / 'text_share' / f'{variant}.log').read_text()
    (output,) = [l for l in log.splitlines() if l.startswith('training output of')]
    assert f'--workdir=gs://b/sweep/{variant}' in output

  # The printed follow commands print each log, every line prefixed.
  assert [f[:4] for f in follow] == [['python', '-m', 'launch.tpu_vm', 'logs']] * 3
  assert [a for f in follow for a in f if a.startswith('--log=')] == [
      '--log=mm1-sweeps/text_share/sweep.log', '--log=mm1-sweeps/text_share/no_text.log',
      '--log=mm1-sweeps/text_share/half_text.log']
  assert tpu_vm.main([*follow[1][3:], '--no-follow', '--dry-run']) == 0
  logs_cmds = [shlex.split(l) for l in capsys.readouterr().out.splitlines()]
  assert len(logs_cmds) == 8  # v5p-64: a log on each of its 8 hosts
  lines = worker.run(fake_worker.remote_of(logs_cmds[0])).stdout.splitlines()
  assert lines and all(l.startswith('[mm1/0] ') for l in lines)
  assert any('training output of' in l and 'sweep/no_text' in l for l in lines)

  # Launched again, the finished variants are skipped.
  assert worker.run(remote).returncode == 0
  worker.wait_for(lambda: sweep_log.read_text().count('skipped') == 2, 'the skips')
  assert len(worker.records()) == 4


def test_a_failing_variant_stops_the_sequence(launch_sweep_file, capsys, tmp_path):
  (cmd,), _ = _plan(capsys, launch_sweep_file, 'tpu_vm', '--name=mm1 --zone=z-a --type=v5p-8')
  worker = fake_worker.FakeWorker(tmp_path)
  assert worker.run(fake_worker.remote_of(cmd), FAKE_STATUS='3').returncode == 0
  sweep_log = worker.home / 'mm1-sweeps' / 'text_share' / 'sweep.log'
  worker.wait_for(lambda: 'failed' in sweep_log.read_text(), 'the failure')
  worker.wait_unlocked()
  assert '[1/2] no_text: failed with exit status 3' in sweep_log.read_text()
  assert len(worker.records()) == 2  # half_text never started
  assert not (worker.home / 'mm1-sweeps' / 'text_share' / 'no_text.done').exists()


def test_tpu_vm_per_variant_starts_one_variant_on_each_vm(launch_sweep_file, capsys):
  cmds, follow = _plan(capsys, launch_sweep_file, 'tpu_vm',
                       '--name=mm1 --zone=z-a --type=v5p-64', '--vm-per-variant')
  assert [c[5] for c in cmds] == ['mm1-no-text', 'mm1-half-text']
  for cmd, variant in zip(cmds, ('no_text', 'half_text')):
    script = fake_worker.inner_script(fake_worker.remote_of(cmd))
    fake_worker.bash_syntax_ok(script)
    words = fake_worker.shell_words(script)
    starts = [i for i, w in enumerate(words) if w == 'python3']
    assert len(starts) == 1 and f'--workdir=gs://b/sweep/{variant}' in words
  assert [f[4] for f in follow] == ['--name=mm1-no-text', '--name=mm1-half-text']


def test_gke_and_slurm_jobs_are_built_and_named_per_variant(launch_sweep_file, capsys):
  cmds, _ = _plan(capsys, launch_sweep_file, 'gke', '--tpu-type=v5p-64 --image=i:1')
  assert [c[:3] for c in cmds] == [['python', '-m', 'launch.gke']] * 2
  assert [a for c in cmds for a in c if a.startswith('--name=')] == [
      '--name=text-share-no-text', '--name=text-share-half-text']
  cmds, _ = _plan(capsys, launch_sweep_file, 'slurm', '--nodes=2 --partition=gpu')
  assert [a for c in cmds for a in c if a.startswith('--job-name=')] == [
      '--job-name=text_share-no_text', '--job-name=text_share-half_text']
  assert all(c[c.index('--override') + 1] == 'data.root=/data/none' for c in cmds)


@pytest.mark.parametrize('launcher, launcher_args, flag', [
    ('slurm', '--nodes=2 --time=1h', '--time'),
    ('slurm', "--nodes=2 '--log-dir=/my logs'", '--log-dir'),
    ('gke', '--tpu-type=v5p-64 --image=i:1 --slices=0', '--slices'),
    ('tpu_vm', '--name=MM1 --zone=z-a --type=v5p-8', '--name'),
    ('tpu_vm', '--name=mm1 --zone=z-a --type=v5p-8 --log=x.log', '--launcher-args --log'),
    ('tpu_vm', "--name='mm1", '--launcher-args'),
])
def test_a_bad_launcher_value_is_one_line_before_anything_runs(launch_sweep_file, capsys,
                                                               launcher, launcher_args, flag):
  assert sweep.main([f'--sweep={launch_sweep_file}', '--workdir=gs://b/s',
                     f'--launcher={launcher}', f'--launcher-args={launcher_args}']) == 2
  out, err = capsys.readouterr()
  assert out == ''
  (line,) = err.splitlines()
  assert line.startswith(f'error: {flag}')


def test_manifests_are_submitted_but_never_overwritten(launch_sweep_file, capsys, tmp_path,
                                                       monkeypatch):
  submitted = []
  monkeypatch.setattr(sweep_launch.subprocess, 'call', lambda cmd: submitted.append(cmd) or 0)
  monkeypatch.chdir(tmp_path)
  argv = [f'--sweep={launch_sweep_file}', '--workdir=/shared/s', '--launcher=slurm',
          '--launcher-args=--nodes=1']
  jobs = tmp_path / 'sweep_text_share_jobs'
  jobs.mkdir()
  (jobs / 'half_text.sbatch').write_text('#!/bin/bash\n# mine\n')
  assert sweep.main(argv) == 2
  assert 'half_text.sbatch: exists with other contents' in capsys.readouterr().err
  assert (jobs / 'half_text.sbatch').read_text() == '#!/bin/bash\n# mine\n'
  assert submitted == [] and not (jobs / 'no_text.sbatch').exists()

  (jobs / 'half_text.sbatch').unlink()
  assert sweep.main(argv) == 0
  assert submitted == [['sbatch', os.path.join('sweep_text_share_jobs', f'{v}.sbatch')]
                       for v in ('no_text', 'half_text')]
  assert '--workdir=/shared/s/half_text' in (jobs / 'half_text.sbatch').read_text()
  assert sweep.main(argv) == 0  # the same manifests again: submitted again, files kept


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
