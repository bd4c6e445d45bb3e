"""The JobSet manifest `launch.gke` prints, loaded with yaml and checked field by field
against the JobSet v1alpha2 API it uses; bad values refused."""

import re

import pytest
import yaml

from launch import gke

TRAIN = ['--config=experiments/x.py', '--workdir=gs://b/r']
DNS_LABEL = re.compile(r'[a-z]([-a-z0-9]*[a-z0-9])?')


def _manifest(capsys, *extra, name='mm1-3b'):
  argv = [f'--name={name}', '--tpu-type=v5p-256', '--image=img:1', *TRAIN, *extra]
  assert gke.main(argv) == 0
  return yaml.safe_load(capsys.readouterr().out)


def _pod(manifest):
  (job,) = manifest['spec']['replicatedJobs']
  return job, job['template']['spec'], job['template']['spec']['template']['spec']


def test_multislice_jobset_has_one_job_per_slice_and_one_pod_per_host(capsys):
  manifest = _manifest(capsys, '--slices=2', '--spot', '--max-restarts=5')
  assert manifest['apiVersion'] == 'jobset.x-k8s.io/v1alpha2'
  assert manifest['kind'] == 'JobSet'
  assert manifest['metadata']['name'] == 'mm1-3b'
  assert manifest['spec']['failurePolicy'] == {'maxRestarts': 5}
  job, job_spec, pod = _pod(manifest)
  assert job['name'] == gke.JOB_NAME and job['replicas'] == 2
  assert job_spec['parallelism'] == job_spec['completions'] == 32  # 128 chips, 4 per host
  assert job_spec['backoffLimit'] == 0
  assert pod['restartPolicy'] == 'Never'
  assert pod['nodeSelector'] == {
      'cloud.google.com/gke-tpu-accelerator': 'tpu-v5p-slice',
      'cloud.google.com/gke-tpu-topology': '4x4x8',
      'cloud.google.com/gke-spot': 'true',
  }
  (container,) = pod['containers']
  assert container['image'] == 'img:1'
  assert container['resources'] == {'limits': {'google.com/tpu': 4}}
  assert all(isinstance(p['containerPort'], int) for p in container['ports'])
  env = {e['name']: e for e in container['env']}
  assert all(set(e) in ({'name', 'value'}, {'name', 'valueFrom'}) for e in container['env'])
  assert all(isinstance(e.get('value', ''), str) for e in container['env'])
  assert env['MM1_DISTRIBUTED']['value'] == 'auto'
  assert env['MEGASCALE_NUM_SLICES']['value'] == '2'
  assert env['MEGASCALE_SLICE_ID']['valueFrom']['fieldRef']['fieldPath'] == (
      "metadata.annotations['jobset.sigs.k8s.io/job-index']")
  assert env['MEGASCALE_COORDINATOR_ADDRESS']['value'] == 'mm1-3b-slice-0-0.mm1-3b'


def test_the_container_command_is_the_training_argv_verbatim(capsys):
  workdir = "gs://b/it's a $(run)"
  manifest = _manifest(capsys, f'--workdir={workdir}', '--override', 'data.root=/a b;c')
  (container,) = _pod(manifest)[2]['containers']
  # A list: no shell reads it, so nothing in it needs quoting.
  assert container['command'] == ['python3', '-m', 'mm1_jax.train',
                                  '--config=experiments/x.py', f'--workdir={workdir}',
                                  '--config.data.root=/a b;c']


def test_single_slice_has_no_multislice_environment(capsys):
  job, _, pod = _pod(_manifest(capsys))
  assert job['replicas'] == 1
  assert not any(e['name'].startswith('MEGASCALE') for e in pod['containers'][0]['env'])
  assert 'cloud.google.com/gke-spot' not in pod['nodeSelector']


def test_the_longest_name_still_gives_63_character_pod_names(capsys):
  limit = gke.max_name_length(gke.topology.parse('v5p-256'), 2)
  name = 'a' * limit
  manifest = _manifest(capsys, '--slices=2', name=name)
  job, job_spec, _ = _pod(manifest)
  longest_pod = f'{name}-{job["name"]}-{job["replicas"] - 1}-{job_spec["completions"] - 1}-abcde'
  assert len(longest_pod) == 63 and DNS_LABEL.fullmatch(longest_pod)
  assert gke.main([f'--name={name}a', '--tpu-type=v5p-256', '--slices=2', '--image=i',
                   *TRAIN]) == 2
  assert 'at most' in capsys.readouterr().err


@pytest.mark.parametrize('flag, value', [
    ('--name', 'MM1'),
    ('--name', 'mm1_3b'),
    ('--name', '3b'),
    ('--name', 'mm1-'),
    ('--name', 'mm1\nkind: Pod'),
    ('--image', 'img:1 --privileged'),
    ('--image', 'img:1\n'),
    ('--workdir', 'gs://b/r\x1b]0;x\x07'),
    ('--override', 'a=b\n'),
    ('--tpu-type', 'v9-8'),
    ('--slices', '0'),
    ('--max-restarts', '-1'),
])
def test_bad_values_are_refused_with_one_line_naming_the_flag(capsys, flag, value):
  argv = ['--name=mm1', '--tpu-type=v5p-8', '--image=i:1', *TRAIN, f'{flag}={value}']
  assert gke.main(argv) == 2
  out, err = capsys.readouterr()
  assert out == ''
  (line,) = err.splitlines()
  assert line.startswith(f'error: {flag}')
