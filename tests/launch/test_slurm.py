"""The sbatch script `launch.slurm` prints: parsed as sbatch and bash read it, run with a
stand-in srun, and every injection refused."""

import os
import re
import subprocess
import sys

import pytest

from launch import slurm

TIMEOUT = 30
TRAIN = ['--config=experiments/mm1_1b.py', '--workdir=/shared/r']


def _script(capsys, *argv):
  assert slurm.main([*argv, *TRAIN]) == 0
  return capsys.readouterr().out


def _directives(script):
  """The #SBATCH options as sbatch reads them: each line must be exactly one word after
  #SBATCH, with none of the characters sbatch's own line splitter treats specially."""
  directives = {}
  for line in script.splitlines():
    if line.startswith('#SBATCH'):
      words = line.split()
      assert len(words) == 2 and not re.search(r'[\'"\\#]', words[1]), line
      key, _, value = words[1].partition('=')
      directives[key] = value
  return directives


def _bash_n(script, tmp_path):
  path = tmp_path / 'job.sbatch'
  path.write_text(script)
  subprocess.run(['bash', '-n', str(path)], check=True, timeout=TIMEOUT)
  return path


def test_script_is_valid_bash_with_the_right_counts(capsys, tmp_path):
  script = _script(capsys, '--nodes=4', '--gpus-per-node=8', '--partition=gpu,gpu-long',
                   '--time=2-00:00:00', '--account=proj_1', '--override', 'train.steps=10')
  _bash_n(script, tmp_path)
  directives = _directives(script)
  assert directives['--nodes'] == '4'
  assert directives['--ntasks-per-node'] == '1'
  assert directives['--gpus-per-node'] == '8'
  assert directives['--partition'] == 'gpu,gpu-long'
  assert directives['--time'] == '2-00:00:00'
  assert directives['--account'] == 'proj_1'
  assert directives['--output'] == './%x-%j.out'
  assert 'export MM1_DISTRIBUTED=auto' in script.splitlines()


def test_the_script_runs_the_training_with_every_value_verbatim(capsys, tmp_path):
  """bash runs the script with a stand-in `srun` that records its argv."""
  venv = tmp_path / "my venv $(touch pwned)"
  (venv / 'bin').mkdir(parents=True)
  (venv / 'bin' / 'activate').write_text('export ACTIVATED=yes\n')
  bin_dir = tmp_path / 'bin'
  bin_dir.mkdir()
  (bin_dir / 'srun').write_text('#!/bin/bash\n[ "$ACTIVATED" = yes ] || exit 9\n'
                                'printf "%s\\0" "$@" > "$SRUN_ARGV"\n')
  (bin_dir / 'srun').chmod(0o755)
  workdir = "/shared/it's a `run` $(touch pwned)"
  assert slurm.main(['--nodes=2', f'--venv={venv}', '--config=experiments/mm1_1b.py',
                     f'--workdir={workdir}', '--override', 'data.root=/a b;c']) == 0
  path = _bash_n(capsys.readouterr().out, tmp_path)
  env = dict(os.environ, PATH=f'{bin_dir}:{os.environ["PATH"]}',
             SRUN_ARGV=str(tmp_path / 'argv'))
  subprocess.run(['bash', str(path)], check=True, env=env, cwd=tmp_path, timeout=TIMEOUT)
  argv = (tmp_path / 'argv').read_bytes().decode().split('\0')[:-1]
  assert argv == ['--kill-on-bad-exit=1', 'python', '-m', 'mm1_jax.train',
                  '--config=experiments/mm1_1b.py', f'--workdir={workdir}',
                  '--config.data.root=/a b;c']
  assert not list(tmp_path.rglob('pwned'))


def test_a_percent_in_the_log_dir_is_escaped_for_sbatch(capsys):
  script = _script(capsys, '--nodes=1', '--log-dir=/logs/100%/')
  assert _directives(script)['--output'] == '/logs/100%%/%x-%j.out'


@pytest.mark.parametrize('flag, value', [
    ('--job-name', 'mm1\n#SBATCH --wrap=rm'),
    ('--time', '24:00:00\nrm -rf ~'),
    ('--partition', 'gpu\nrm -rf ~'),
    ('--account', 'a\rb'),
    ('--log-dir', '/logs\n#SBATCH --uid=0'),
    ('--venv', '/v\nrm -rf ~'),
    ('--workdir', '/w\u2028x'),
    ('--config', 'c.py\x00'),
    ('--job-name', 'mm1 jax'),
    ('--job-name', 'a/b'),
    ('--time', '1h'),
    ('--time', '24:00:00 --uid=0'),
    ('--partition', 'gpu long'),
    ('--partition', 'gpu,'),
    ('--account', 'a;b'),
    ('--log-dir', '/my logs'),
    ('--log-dir', '/logs#1'),
    ('--log-dir', '"/logs"'),
    ('--log-dir', ''),
    ('--nodes', '0'),
    ('--cpus-per-task', '0'),
])
def test_bad_values_are_refused_with_one_line_naming_the_flag(capsys, flag, value):
  argv = ['--nodes=2', *TRAIN, f'{flag}={value}']
  assert slurm.main(argv) == 2
  out, err = capsys.readouterr()
  assert out == ''
  (line,) = err.splitlines()
  assert line.startswith(f'error: {flag}')


def test_the_cli_exits_2(tmp_path):
  result = subprocess.run(
      [sys.executable, '-m', 'launch.slurm', '--nodes=1', *TRAIN, '--job-name=a\nb'],
      capture_output=True, text=True, timeout=TIMEOUT,
      cwd=os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
  assert result.returncode == 2 and result.stdout == ''
  assert result.stderr.startswith('error: --job-name') and result.stderr.count('\n') == 1
