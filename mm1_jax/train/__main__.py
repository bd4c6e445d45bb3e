"""`python -m mm1_jax.train --config=experiments/tiny.py --workdir=DIR [--config.a.b=v ...]`."""

from __future__ import annotations

import sys

from absl import app, flags, logging
from ml_collections import config_flags

_CONFIG = config_flags.DEFINE_config_file(
    'config', None, 'Experiment config file (FILE.py or FILE.py:variant).', lock_config=True)
_WORKDIR = flags.DEFINE_string('workdir', None, 'Directory for checkpoints, metrics and logs.')
flags.mark_flags_as_required(['config', 'workdir'])


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  # Orbax and TFDS log every step of every save at INFO; the progress bar says enough.
  logging.set_verbosity(logging.WARNING)
  from mm1_jax import config_lib
  from mm1_jax.parallel import distributed
  from mm1_jax.train import checkpoint as checkpoint_lib
  from mm1_jax.train import trainer
  distributed.initialize_from_env()
  try:
    summary = trainer.train(_CONFIG.value, _WORKDIR.value)
  except (config_lib.ConfigError, FileNotFoundError, trainer.NonFiniteError,
          checkpoint_lib.UnreadableCheckpointsError, checkpoint_lib.CheckpointSaveError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  print(summary.describe())


def run() -> None:
  """Console-script entry point (`mm1-train`)."""
  app.run(main)


if __name__ == '__main__':
  run()
