"""Shared test set-up.

Eight fake CPU devices for every test process: XLA_FLAGS must be set before JAX is
imported, so it is done here, at collection time.
"""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')

# Compilation dominates the suite: a persistent cache shared by this run's tests (and the
# subprocesses they start) compiles each distinct program once. A fresh directory per run
# keeps every CI run honest.
import tempfile  # noqa: E402

os.environ.setdefault('JAX_COMPILATION_CACHE_DIR', tempfile.mkdtemp(prefix='mm1-jax-cache-'))
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS', '0.5')
os.environ.setdefault('JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES', '0')

import pytest  # noqa: E402  (after the environment is set)

# Small enough to generate in seconds, big enough for every source to fill many rows.
SYNTHETIC_TEST_SCALE = 0.05


@pytest.fixture(scope='session')
def synthetic_root(tmp_path_factory):
  """A small synthetic world (all sources, tokenizer, eval sets), generated once per run."""
  from data_pipelines import synthetic
  root = str(tmp_path_factory.mktemp('synthetic') / 'world')
  synthetic.generate(root, seed=0, scale=SYNTHETIC_TEST_SCALE)
  return root


@pytest.fixture
def smoke_config(synthetic_root):
  """The tiny config's smoke variant reading the session's synthetic world."""
  from experiments import tiny
  config = tiny.get_config('smoke')
  config.data.root = synthetic_root
  config.data.synthetic = False
  return config


@pytest.fixture(scope='session')
def smoke_run(tmp_path_factory, synthetic_root):
  """(config, workdir, summary) of one finished `tiny.py:smoke` run, shared by the tests."""
  from experiments import tiny
  from mm1_jax.train import trainer
  config = tiny.get_config('smoke')
  config.data.root = synthetic_root
  config.data.synthetic = False
  workdir = str(tmp_path_factory.mktemp('smoke_run'))
  summary = trainer.train(config, workdir, show_progress=False)
  return config, workdir, summary
