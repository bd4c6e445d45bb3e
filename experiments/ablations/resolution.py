"""MM1's image-resolution ablation: the ViT's input size at a fixed patch size.

Run (tiny scale: 16 to 64 pixels with 8-pixel patches, K = 4 tokens):

    python -m experiments.sweep --sweep=experiments/ablations/resolution.py --workdir=/tmp/res

Expected result (MM1, section 3.2): resolution is the strongest lever after the token
count (224 -> 336 px gives about 3% across tasks at ViT-L/14).
"""

from experiments import sweep_lib

SIZES = (16, 32, 48, 64)


def get_sweep(arg=None):
  config = 'experiments/tiny.py' + (f':{arg}' if arg else '')
  steps = sweep_lib.load_config(config).train.steps
  return sweep_lib.Sweep(
      name='resolution', swept='image size (pixels)', config=config,
      overrides={'eval.every': steps},
      variants=tuple(sweep_lib.Variant(name=f'px{size}', overrides={'model.vit.image_size': size},
                                       x=size) for size in SIZES))
