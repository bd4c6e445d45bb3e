"""`python -m mm1_jax.aot --config=FILE.py --topology=v5p-512 [--slices=N] [--step=train|decode]
[--json] [--hbm_gib=X] [--config.a.b=v ...]`: compile the real step for a TPU topology on
this host (needs libtpu: the `tpu` extra) and print per-chip memory against HBM, whether
it fits, and the XLA cost model's step time and implied MFU (estimates).

Example:

    python -m mm1_jax.aot --config=experiments/mm1_30b.py --topology=v5p-512
"""

from __future__ import annotations

import json
import os
import sys

# The compile-only TPU client is created explicitly; the default backend stays the CPU.
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

from absl import app, flags, logging  # noqa: E402
from ml_collections import config_flags  # noqa: E402

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file (FILE.py or FILE.py:variant).', lock_config=True)
_TOPOLOGY = flags.DEFINE_string(
    'topology', None, 'TPU slice: an accelerator type (v5p-512, v5e-256, v4-128, v6e-64) '
    'or a chip shape (v5p:4x8x8).')
_SLICES = flags.DEFINE_integer('slices', 1, 'Number of slices (multi-slice over DCN).')
_STEP = flags.DEFINE_enum('step', 'train', ['train', 'decode'], 'Which step to compile.')
_JSON = flags.DEFINE_bool('json', False, 'Print the report as one JSON object.')
_HBM = flags.DEFINE_float('hbm_gib', None, 'HBM per chip to check against (default: the '
                          'chip\'s published HBM).')
_CORRECT = flags.DEFINE_bool('correct_loops', True, 'Estimate the cost with loops unrolled '
                             '(extra small compiles; see mm1_jax/aot/report.py).')
flags.mark_flags_as_required(['config', 'topology'])


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  logging.set_verbosity(logging.WARNING)
  from mm1_jax import config_lib
  from mm1_jax.aot import report as report_lib
  from mm1_jax.parallel import tpu_topology
  config = _CONFIG.value
  progress = lambda message: print(message, file=sys.stderr, flush=True)  # noqa: E731
  try:
    config_lib.validate(config)
    topology = tpu_topology.parse(_TOPOLOGY.value)
    tpu_topology.describe_host_without_tpu(topology)
    report = report_lib.analyse(
        config, config_name=flags.FLAGS['config'].serialize().split('=', 1)[-1],
        topology=topology, slices=_SLICES.value, step=_STEP.value,
        hbm_bytes=None if _HBM.value is None else _HBM.value * 2**30,
        correct_loops=_CORRECT.value, progress=progress)
  except (ValueError, RuntimeError) as e:  # ConfigError and AotError are ValueErrors
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  print(json.dumps(report.as_dict()) if _JSON.value else report_lib.format_report(report))
  sys.exit(0 if report.fits else 1)


def run() -> None:
  app.run(main)


if __name__ == '__main__':
  run()
