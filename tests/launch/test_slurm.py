"""The sbatch script `launch.slurm` prints."""

import re
import shlex
import subprocess

from launch import slurm


def test_script_is_valid_bash_with_the_right_counts(capsys, tmp_path):
  assert slurm.main(['--nodes=4', '--gpus-per-node=8', '--partition=gpu',
                     '--config=experiments/mm1_1b.py', '--workdir=/shared/r',
                     '--override', 'train.steps=10']) == 0
  script = capsys.readouterr().out
  path = tmp_path / 'job.sbatch'
  path.write_text(script)
  subprocess.run(['bash', '-n', str(path)], check=True)
  directives = dict(re.findall(r'^#SBATCH --([\w-]+)=(\S+)$', script, re.MULTILINE))
  assert directives['nodes'] == '4'
  assert directives['ntasks-per-node'] == '1'
  assert directives['gpus-per-node'] == '8'
  assert directives['partition'] == 'gpu'
  (srun,) = [l for l in script.splitlines() if l.startswith('srun ')]
  argv = shlex.split(srun)
  assert argv[argv.index('python'):] == [
      'python', '-m', 'mm1_jax.train', '--config=experiments/mm1_1b.py', '--workdir=/shared/r',
      '--config.train.steps=10']
  assert 'export MM1_DISTRIBUTED=auto' in script


def test_bad_node_count_fails(capsys):
  assert slurm.main(['--nodes=0', '--config=c', '--workdir=w']) == 2
  assert '--nodes' in capsys.readouterr().err
