"""MM1's connector ablation: average pooling, attention pooling, C-Abstractor.

Run (tiny scale, 3 variants):

    python -m experiments.sweep --sweep=experiments/ablations/connector.py --workdir=/tmp/conn

Expected result (MM1, section 3.2): the connector type matters little next to the number
of image tokens and the image resolution; the three rows of results.md should lie close.
"""

from experiments import sweep_lib

KINDS = ('avgpool', 'attnpool', 'c_abstractor')


def get_sweep(arg=None):
  config = sweep_lib.base_config_path(arg, 'connector')
  steps = sweep_lib.load_config(config).train.steps
  return sweep_lib.Sweep(
      name='connector', swept='connector', config=config,
      overrides={'eval.every': steps},
      variants=tuple(sweep_lib.Variant(name=kind, overrides={'model.connector.kind': kind},
                                       x=kind) for kind in KINDS))
