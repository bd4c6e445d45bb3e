"""MM1's image-resolution ablation: the ViT's input size at a fixed patch size.

Run (tiny scale: 16 to 64 pixels with 8-pixel patches, K = 4 tokens):

    python -m experiments.sweep --sweep=experiments/ablations/resolution.py --workdir=/tmp/res

Expected result (MM1, section 3.2): resolution is the strongest lever after the token
count (224 -> 336 px gives about 3% across tasks at ViT-L/14). `resolution.py:mm1_1b`
runs 224 / 336 / 378 px with ViT-L/14 and the 1.2B decoder.
"""

from experiments import sweep_lib

SIZES = {None: (16, 32, 48, 64), 'smoke': (16, 32, 48, 64), 'mm1_1b': (224, 336, 378)}


def get_sweep(arg=None):
  config = sweep_lib.base_config_path(arg, 'resolution')
  steps = sweep_lib.load_config(config).train.steps
  return sweep_lib.Sweep(
      name='resolution', swept='image size (pixels)', config=config,
      overrides={'eval.every': steps},
      variants=tuple(sweep_lib.Variant(name=f'px{size}', overrides={'model.vit.image_size': size},
                                       x=size) for size in SIZES[arg]))
