"""mm1-jax: MM1-style multimodal LLM pretraining in JAX/Flax NNX.

`mm1_jax.load(workdir)` returns a trained model ready for inference (see `mm1_jax.api`).
"""

__version__ = '0.1.0'


def load(workdir: str, step: int | None = None):
  """Loads the model of a training workdir; see `mm1_jax.api.Model`."""
  from mm1_jax import api  # imported lazily: `import mm1_jax` stays cheap
  return api.load(workdir, step=step)
