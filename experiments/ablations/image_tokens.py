"""MM1's image-token ablation: how many connector tokens K each image becomes.

Run (tiny scale: a 4x4 patch grid pooled to K = 1, 4 or 16 tokens):

    python -m experiments.sweep --sweep=experiments/ablations/image_tokens.py --workdir=/tmp/tok

Expected result (MM1, section 3.2): more image tokens help, most of all for captioning;
MM1 compares 64 and 144 tokens at ViT-L/14 336 px (experiments/mm1_1b.py shapes).
"""

from experiments import sweep_lib

TOKENS = (1, 4, 16)


def get_sweep(arg=None):
  config = 'experiments/tiny.py' + (f':{arg}' if arg else '')
  steps = sweep_lib.load_config(config).train.steps
  return sweep_lib.Sweep(
      name='image_tokens', swept='image tokens per image (K)', config=config,
      overrides={'eval.every': steps},
      variants=tuple(sweep_lib.Variant(name=f'k{k}', overrides={'model.connector.num_tokens': k},
                                       x=k) for k in TOKENS))
