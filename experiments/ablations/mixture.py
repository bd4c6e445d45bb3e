"""MM1's data-mixture ablation on the synthetic world: captions / interleaved / text shares.

Run (about 3 minutes per variant on a 2-core laptop, 6 variants):

    python -m experiments.sweep --sweep=experiments/ablations/mixture.py --workdir=/tmp/mix

Expected result (MM1, section 3.3): more caption data helps zero-shot captioning, and
interleaved data is what makes few-shot prompting work; removing text-only data costs
some language quality. On the synthetic world read the results.md table and the
eval_*.png plots for whether the same directions show.

At pod scale, the same variants launch as separate jobs with --launcher=tpu_vm|gke|slurm
(each at `experiments/mm1_1b.py` shapes, as the paper's ablations ran).
"""

from experiments import sweep_lib

# (name, captions %, interleaved %, text %)
MIXES = (
    ('mm1_45_45_10', 45, 45, 10),
    ('captions_only', 100, 0, 0),
    ('interleaved_only', 0, 100, 0),
    ('no_text_50_50_0', 50, 50, 0),
    ('equal_33_33_33', 33, 33, 34),
    ('caption_heavy_80_10_10', 80, 10, 10),
)


def get_sweep(arg=None):
  config = sweep_lib.base_config_path(arg, 'mixture')
  steps = sweep_lib.load_config(config).train.steps
  variants = tuple(
      sweep_lib.Variant(
          name=name,
          overrides={'data.weights.captions': c / 100, 'data.weights.interleaved': i / 100,
                     'data.weights.text': t / 100},
          x=f'{c}/{i}/{t}')
      for name, c, i, t in MIXES)
  return sweep_lib.Sweep(name='mixture', swept='captions / interleaved / text (%)',
                         config=config,
                         overrides={'eval.every': steps},  # evaluate once, at the last step
                         variants=variants)
