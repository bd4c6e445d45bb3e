"""GKE: a Kubernetes JobSet that trains mm1-jax on one or more TPU slices.

    python -m launch.gke --name=mm1-3b --tpu-type=v5p-256 --slices=2 \
        --image=REGISTRY/mm1-jax:TAG --config=experiments/mm1_3b.py \
        --workdir=gs://bucket/mm1_3b > jobset.yaml
    kubectl apply -f jobset.yaml

One replicated job per slice, one pod per TPU host (requesting all of its chips), every
pod running the same training command. `jax.distributed.initialize()` finds its peers from
the JobSet's pod names; across slices the TPU runtime's multislice layer (megascale) is
pointed at the first pod of the first slice. The image must contain mm1-jax installed with
the `tpu` extra.

The container runs the training command as an argument list (no shell reads it). Every
value is checked first, and a bad one is a one-line error naming the flag (exit status 2):
no value may hold a newline or other control character; --name is a DNS label short
enough for the names JobSet derives from it (jobs NAME-slice-J, pods
NAME-slice-J-P-xxxxx, at most 63 characters each); --image holds no whitespace.
"""

from __future__ import annotations

import argparse
import sys
from collections.abc import Sequence

import yaml

from launch import command, topology, validate

JOB_NAME = 'slice'
COORDINATOR_PORT = 8080
# Kubernetes appends '-' and 5 random characters to a job's pod names.
_POD_SUFFIX = '-xxxxx'


def max_name_length(tpu: topology.TpuSlice, slices: int) -> int:
  """The longest JobSet name whose longest pod name is still a 63-character DNS label."""
  longest_pod = f'-{JOB_NAME}-{slices - 1}-{tpu.hosts - 1}{_POD_SUFFIX}'
  return validate.DNS_LABEL_MAX - len(longest_pod)


def check(args: argparse.Namespace) -> None:
  """Every value, before the manifest is built; raises ValueError naming the flag."""
  validate.all_text(args)
  validate.at_least('--slices', args.slices, 1)
  validate.at_least('--max-restarts', args.max_restarts, 0)
  tpu = validate.tpu_type('--tpu-type', args.tpu_type)
  validate.dns_label('--name', args.name, max_length=max_name_length(tpu, args.slices),
                     why=f' for {args.slices} slice(s) of {tpu.hosts} host(s) (pods are named '
                         f'NAME-{JOB_NAME}-J-P-xxxxx, at most 63 characters)')
  if not args.image or any(c.isspace() for c in args.image):
    raise validate.LaunchError(f'--image {args.image!r}: expected an image reference without '
                               f'whitespace, e.g. us-docker.pkg.dev/PROJECT/REPO/mm1-jax:TAG')


def _env(name: str, slices: int) -> list[dict]:
  env = [{'name': 'MM1_DISTRIBUTED', 'value': 'auto'},
         {'name': 'JAX_PLATFORMS', 'value': 'tpu'}]
  if slices > 1:
    env += [
        {'name': 'MEGASCALE_NUM_SLICES', 'value': str(slices)},
        {'name': 'MEGASCALE_SLICE_ID', 'valueFrom': {'fieldRef': {
            'fieldPath': "metadata.annotations['jobset.sigs.k8s.io/job-index']"}}},
        # Pods of a JobSet are reachable as NAME-JOB-JOBINDEX-PODINDEX.NAME.
        {'name': 'MEGASCALE_COORDINATOR_ADDRESS', 'value': f'{name}-{JOB_NAME}-0-0.{name}'},
    ]
  return env


def jobset(args: argparse.Namespace) -> dict:
  tpu = topology.parse(args.tpu_type)
  container = {
      'name': 'train',
      'image': args.image,
      'command': command.train_argv(args.config, args.workdir, args.override, python='python3'),
      'env': _env(args.name, args.slices),
      'ports': [{'containerPort': 8471}, {'containerPort': COORDINATOR_PORT}],
      'resources': {'limits': {'google.com/tpu': tpu.chips_per_host}},
  }
  pod_spec = {
      'restartPolicy': 'Never',
      'hostNetwork': True,
      'dnsPolicy': 'ClusterFirstWithHostNet',
      'nodeSelector': {
          'cloud.google.com/gke-tpu-accelerator': tpu.gke_accelerator,
          'cloud.google.com/gke-tpu-topology': tpu.topology,
      },
      'containers': [container],
  }
  if args.spot:
    pod_spec['nodeSelector']['cloud.google.com/gke-spot'] = 'true'
  return {
      'apiVersion': 'jobset.x-k8s.io/v1alpha2',
      'kind': 'JobSet',
      'metadata': {
          'name': args.name,
          # One slice per node pool: the pods of a slice land on the same physical slice.
          'annotations': {'alpha.jobset.sigs.k8s.io/exclusive-topology':
                          'cloud.google.com/gke-nodepool'},
      },
      'spec': {
          'failurePolicy': {'maxRestarts': args.max_restarts},
          'replicatedJobs': [{
              'name': JOB_NAME,
              'replicas': args.slices,
              'template': {'spec': {
                  'parallelism': tpu.hosts,
                  'completions': tpu.hosts,
                  'backoffLimit': 0,
                  'template': {'spec': pod_spec},
              }},
          }],
      },
  }


def build_parser() -> argparse.ArgumentParser:
  parser = argparse.ArgumentParser(prog='python -m launch.gke', description=__doc__,
                                   formatter_class=argparse.RawDescriptionHelpFormatter)
  parser.add_argument('--name', required=True, help='JobSet name (a DNS label)')
  parser.add_argument('--tpu-type', required=True, help='slice type, e.g. v5p-256')
  parser.add_argument('--slices', type=int, default=1)
  parser.add_argument('--image', required=True, help='container image with mm1-jax[tpu]')
  parser.add_argument('--max-restarts', type=int, default=3,
                      help='JobSet restarts (a restart resumes from the latest checkpoint)')
  parser.add_argument('--spot', action='store_true')
  command.add_train_arguments(parser)
  return parser


def render(argv: Sequence[str]) -> str:
  """The JobSet YAML for a command line; raises ValueError (naming the flag) on bad values."""
  args = build_parser().parse_args(argv)
  check(args)
  return yaml.safe_dump(jobset(args), sort_keys=False)


def main(argv: Sequence[str] | None = None) -> int:
  try:
    manifest = render(sys.argv[1:] if argv is None else argv)
  except ValueError as e:
    print(f'error: {e}', file=sys.stderr)
    return 2
  sys.stdout.write(manifest)
  return 0


if __name__ == '__main__':
  sys.exit(main())
