"""Orbax checkpoints of the train state together with the data iterator's position.

Layout: WORKDIR/checkpoints/<step>/{state,data,config}. `state` holds params, optimizer
state and step (sharded arrays, written asynchronously when `checkpoint.async`); `data`
holds the Grain iterator state of every process, so a resumed run reads exactly the
batches an uninterrupted one would; `config` is the resolved config the step was trained
with. Orbax writes each step into a temporary directory and renames it when complete, so a
save killed half-way is never taken for a checkpoint (`latest_step` skips it).

Arrays are stored in chunks of at most CHUNK_BYTES (TensorStore chunks inside each device's
shard), so a reader that wants one tensor, or one layer of a scanned stack, holds one chunk
at a time (the PyTorch export streams this way) whatever the model size or saving mesh.

The state is restored into whatever layout the caller's abstract state carries: a
checkpoint written under one mesh restores under another (Orbax reshards on read).
"""

from __future__ import annotations

import json
import os

import grain
import jax
import orbax.checkpoint as ocp

CHUNK_BYTES = 64 * 2**20


class Checkpointer:
  """Saves and restores (train state, data iterator) pairs under one directory."""

  def __init__(self, directory: str, *, keep: int, use_async: bool):
    self.directory = os.path.abspath(directory)
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=use_async)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=('state', 'data', 'config'))

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def save(self, step: int, state, data_iterator=None, config=None) -> None:
    """Starts writing `step` (returns once the arrays are copied off the devices)."""
    chunked = jax.tree.map(lambda _: ocp.SaveArgs(chunk_byte_size=CHUNK_BYTES), state)
    items = {'state': ocp.args.StandardSave(state, save_args=chunked)}
    if data_iterator is not None:
      items['data'] = grain.checkpoint.CheckpointSave(data_iterator)
    if config is not None:
      items['config'] = ocp.args.JsonSave(json.loads(config.to_json_best_effort()))
    self._manager.save(step, args=ocp.args.Composite(**items), force=True)

  def restore(self, step: int, abstract_state, data_iterator=None):
    """Restores the state into the layout of `abstract_state` (and the iterator in place)."""
    if step not in self._manager.all_steps():
      raise FileNotFoundError(
          f'no checkpoint for step {step} in {self.directory}; available: {self.all_steps()}')
    items = {'state': ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    return restored['state']

  def wait(self) -> None:
    self._manager.wait_until_finished()

  def close(self) -> None:
    self._manager.wait_until_finished()
    self._manager.close()
