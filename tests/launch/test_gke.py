"""The JobSet manifest `launch.gke` prints."""

import shlex

import yaml

from launch import gke


def _manifest(capsys, *extra):
  argv = ['--name=mm1-3b', '--tpu-type=v5p-256', '--image=img:1', '--config=experiments/x.py',
          '--workdir=gs://b/r', *extra]
  assert gke.main(argv) == 0
  return yaml.safe_load(capsys.readouterr().out)


def test_multislice_jobset_has_one_job_per_slice_and_one_pod_per_host(capsys):
  manifest = _manifest(capsys, '--slices=2')
  assert manifest['kind'] == 'JobSet'
  (job,) = manifest['spec']['replicatedJobs']
  assert job['replicas'] == 2
  spec = job['template']['spec']
  assert spec['parallelism'] == spec['completions'] == 32  # 128 chips, 4 per host
  pod = spec['template']['spec']
  assert pod['nodeSelector']['cloud.google.com/gke-tpu-topology'] == '4x4x8'
  assert pod['nodeSelector']['cloud.google.com/gke-tpu-accelerator'] == 'tpu-v5p-slice'
  (container,) = pod['containers']
  assert container['resources']['limits']['google.com/tpu'] == 4
  env = {e['name']: e for e in container['env']}
  assert env['MM1_DISTRIBUTED']['value'] == 'auto'
  assert env['MEGASCALE_NUM_SLICES']['value'] == '2'
  assert 'job-index' in env['MEGASCALE_SLICE_ID']['valueFrom']['fieldRef']['fieldPath']
  assert env['MEGASCALE_COORDINATOR_ADDRESS']['value'].startswith('mm1-3b-slice-0-0.')
  train = shlex.split(container['command'][-1])
  assert train[:3] == ['python3', '-m', 'mm1_jax.train']
  assert '--workdir=gs://b/r' in train


def test_single_slice_has_no_multislice_environment(capsys):
  manifest = _manifest(capsys)
  (job,) = manifest['spec']['replicatedJobs']
  assert job['replicas'] == 1
  container = job['template']['spec']['template']['spec']['containers'][0]
  assert not any(e['name'].startswith('MEGASCALE') for e in container['env'])


def test_bad_tpu_type_is_named(capsys):
  assert gke.main(['--name=a', '--tpu-type=v9-8', '--image=i', '--config=c',
                   '--workdir=w']) == 2
  assert 'v9-8' in capsys.readouterr().err
