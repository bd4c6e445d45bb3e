"""MM1's image-token ablation: how many connector tokens K each image becomes.

Run (tiny scale: a 4x4 patch grid pooled to K = 1, 4 or 16 tokens):

    python -m experiments.sweep --sweep=experiments/ablations/image_tokens.py --workdir=/tmp/tok

Expected result (MM1, section 3.2): more image tokens help, most of all for captioning.
`image_tokens.py:mm1_1b` runs MM1's own comparison, 64 vs 144 C-Abstractor tokens at
ViT-L/14 336 px with the 1.2B decoder.
"""

from experiments import sweep_lib

TOKENS = {None: (1, 4, 16), 'smoke': (1, 4, 16), 'mm1_1b': (64, 144)}


def get_sweep(arg=None):
  config = sweep_lib.base_config_path(arg, 'image_tokens')
  steps = sweep_lib.load_config(config).train.steps
  return sweep_lib.Sweep(
      name='image_tokens', swept='image tokens per image (K)', config=config,
      overrides={'eval.every': steps},
      variants=tuple(sweep_lib.Variant(name=f'k{k}', overrides={'model.connector.num_tokens': k},
                                       x=k) for k in TOKENS[arg]))
