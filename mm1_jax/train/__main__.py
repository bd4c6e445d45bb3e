"""`python -m mm1_jax.train --config=experiments/tiny.py --workdir=DIR [--config.a.b=v ...]`.

A config mistake (an unknown --config.KEY, a value that does not parse or cannot work, a
mesh that does not fit the devices, a data.root that is empty or holds files the synthetic
world generator did not write, a source whose kind does not match its data) prints one
line naming the key and exits with status 2, before any data or model work.
"""

from __future__ import annotations

from absl import app, flags, logging
from ml_collections import config_flags

from mm1_jax import cli

_FLAGS = {}  # name -> FlagHolder, filled by define_flags()


def define_flags(flag_values: flags.FlagValues = flags.FLAGS) -> None:
  """Defines the command's flags; `run` calls it, so importing this module defines none
  (tests import `train_command` beside mm1_jax.evaluate, which has flags of the same names)."""
  _FLAGS['config'] = config_flags.DEFINE_config_file(
      'config', None, 'Experiment config file (FILE.py or FILE.py:variant).', lock_config=True,
      flag_values=flag_values)
  _FLAGS['workdir'] = flags.DEFINE_string(
      'workdir', None, 'Directory for checkpoints, metrics and logs.', flag_values=flag_values)
  flags.mark_flags_as_required(['config', 'workdir'], flag_values=flag_values)


def train_command(config, workdir: str) -> None:
  """Trains `config` into `workdir`: start-up checks first; a mistake calls `cli.fail`."""
  # Orbax and TFDS log every step of every save at INFO; the progress bar says enough.
  logging.set_verbosity(logging.WARNING)
  import jax
  from mm1_jax import config_lib
  from mm1_jax.parallel import distributed
  from mm1_jax.parallel import mesh as mesh_lib
  from mm1_jax.train import checkpoint as checkpoint_lib
  from mm1_jax.train import trainer
  distributed.initialize_from_env()
  try:
    config_lib.validate(config)
    mesh_lib.mesh_shape(config.mesh, jax.device_count())  # before any data or model work
    summary = trainer.train(config, workdir)
  except (config_lib.ConfigError, FileNotFoundError, trainer.NonFiniteError,
          checkpoint_lib.UnreadableCheckpointsError, checkpoint_lib.CheckpointSaveError) as e:
    cli.fail(e)
  print(summary.describe())


def main(argv) -> None:
  if len(argv) > 1:
    raise app.UsageError(f'unexpected arguments: {argv[1:]}')
  train_command(_FLAGS['config'].value, _FLAGS['workdir'].value)


def run() -> None:
  """Console-script entry point (`mm1-train`)."""
  define_flags()
  app.run(main, flags_parser=cli.parse_flags)


if __name__ == '__main__':
  run()
