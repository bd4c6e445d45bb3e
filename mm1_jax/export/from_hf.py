"""Initialise MM1 from pretrained Hugging Face checkpoints, as MM1 did.

    python -m mm1_jax.export.from_hf --config=experiments/mm1_3b.py \\
        --vision=/ckpt/clip-vit-large-patch14-336 --llm=/ckpt/llama --workdir=/runs/mm1_3b

reads a local `CLIPVisionModel` or `CLIPModel` directory (--vision) and a local
`LlamaForCausalLM` directory (--llm), both safetensors, maps them into this model's
parameters (see hf_clip.py, hf_llama.py), initialises the connector freshly (and any part
whose directory is not given), and writes WORKDIR as a training run at step 0: config.json,
the tokenizer, and checkpoint 0 (parameters, fresh optimizer state, data iterator at its
start). `python -m mm1_jax.train --workdir=WORKDIR` continues from it and `mm1_jax.load`
reads it. A checkpoint that does not fit the config fails with an error naming the config
key or the parameter.

The decoder's vocabulary is the checkpoint's: data.tokenizer must be the LLM's tokenizer
(or one of at most its size whose ids mean the same) for the weights to be meaningful.
"""

from __future__ import annotations

import json
import os
import sys

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from mm1_jax.export import hf_clip, hf_io, hf_llama
from mm1_jax.export.hf_io import HFImportError


def _abstract_params(config):
  from mm1_jax.train import state as state_lib
  abstract = nnx.eval_shape(lambda: state_lib.build_model(config, config.seed))
  return nnx.to_pure_dict(nnx.state(abstract, nnx.Param))


def _fresh(config, part: str, seed: int):
  """Freshly initialised parameters of one part of MM1 (only that part is built)."""
  from mm1_jax.models.connectors import make_connector
  from mm1_jax.models.decoder import Decoder
  from mm1_jax.models.vit import ViT
  model = config.model
  build = {'vit': lambda: ViT(model.vit, rngs=nnx.Rngs(seed)),
           'connector': lambda: make_connector(model, rngs=nnx.Rngs(seed)),
           'decoder': lambda: Decoder(model.decoder, rngs=nnx.Rngs(seed), moe_config=(
               model.moe if model.moe.num_experts else None))}[part]
  params = jax.jit(lambda: nnx.to_pure_dict(nnx.state(build(), nnx.Param)))()
  return jax.tree.map(np.asarray, params)


def import_params(config, vision_dir: str | None, llm_dir: str | None) -> dict:
  """The pure parameter dict of MM1(config): ViT from CLIP, decoder from Llama, connector
  (and any part without a directory) freshly initialised."""
  target = _abstract_params(config)
  if vision_dir:
    hf_config, tensors = hf_io.read_directory(vision_dir)
    hf_clip.convert(config.model.vit, hf_config, tensors, target['vit'])
  else:
    target['vit'] = _fresh(config, 'vit', config.seed)
  if llm_dir:
    hf_config, tensors = hf_io.read_directory(llm_dir)
    hf_llama.convert(config.model.decoder, hf_config, tensors, target['decoder'])
  else:
    target['decoder'] = _fresh(config, 'decoder', config.seed)
  target['connector'] = _fresh(config, 'connector', config.seed + 1)
  missing = [jax.tree_util.keystr(path) for path, leaf in
             jax.tree_util.tree_flatten_with_path(target)[0]
             if not isinstance(leaf, np.ndarray)]
  if missing:
    raise HFImportError(f'no checkpoint tensor filled {missing[0]} ({len(missing)} in all)')
  return target


def write_workdir(config, params: dict, workdir: str) -> str:
  """Writes WORKDIR as a training run at step 0 holding `params`."""
  from mm1_jax.train import trainer
  from data_pipelines import grain_pipeline

  checkpoints = os.path.join(os.path.abspath(os.path.expanduser(workdir)), 'checkpoints')
  if os.path.isdir(checkpoints) and os.listdir(checkpoints):
    raise FileExistsError(f'{checkpoints} is not empty; importing would mix two runs')
  workdir, _ = trainer.prepare_workdir(config, workdir)
  iterator = grain_pipeline.make_iterator(config, process_index=jax.process_index(),
                                          process_count=jax.process_count())
  save_checkpoint(config, params, checkpoints, step=0, iterator=iterator)
  return workdir


def save_checkpoint(config, params: dict, checkpoints: str, *, step: int,
                    iterator=None) -> None:
  """Saves checkpoint `step` of a run: `params`, a fresh optimizer state, the config and
  (when given) the data iterator's state, laid out over config.mesh."""
  from mm1_jax.parallel import mesh as mesh_lib
  from mm1_jax.train import checkpoint as checkpoint_lib
  from mm1_jax.train import optimizer as optimizer_lib
  from mm1_jax.train import state as state_lib

  mesh = mesh_lib.make_mesh(config.mesh)
  settings = optimizer_lib.resolve_settings(config, state_lib.count_params(config))
  tx = optimizer_lib.make_optimizer(config, settings)
  layout = state_lib.make_layout(config, mesh, tx)
  params = jax.device_put(params, layout.shardings['params'])
  opt_state = jax.jit(tx.init, out_shardings=layout.shardings['opt_state'])(params)
  state = {'step': jax.device_put(jnp.asarray(step, jnp.int32), layout.shardings['step']),
           'params': params, 'opt_state': opt_state}
  checkpointer = checkpoint_lib.Checkpointer(checkpoints, keep=config.checkpoint.keep,
                                             use_async=False)
  try:
    checkpointer.save(step, state, iterator, config=config)
    checkpointer.wait()
  finally:
    checkpointer.close()


def main(argv) -> None:
  from absl import app, flags, logging
  del argv
  logging.set_verbosity(logging.WARNING)
  flags_ = flags.FLAGS
  try:
    params = import_params(flags_.config, flags_.vision, flags_.llm)
    workdir = write_workdir(flags_.config, params, flags_.workdir)
  except (ValueError, FileNotFoundError, FileExistsError) as e:
    print(f'error: {e}', file=sys.stderr)
    sys.exit(2)
  summary = {'workdir': workdir, 'vision': flags_.vision, 'llm': flags_.llm, 'step': 0}
  print(json.dumps(summary))


def run() -> None:
  from absl import app, flags
  from ml_collections import config_flags
  config_flags.DEFINE_config_file('config', None, 'Experiment config (FILE.py[:variant]).',
                                  lock_config=False)
  flags.DEFINE_string('vision', None, 'HF CLIPVisionModel/CLIPModel directory (safetensors).')
  flags.DEFINE_string('llm', None, 'HF LlamaForCausalLM directory (safetensors).')
  flags.DEFINE_string('workdir', None, 'Training workdir to create at step 0.')
  flags.mark_flags_as_required(['config', 'workdir'])
  app.run(main)


if __name__ == '__main__':
  run()
