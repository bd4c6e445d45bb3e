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

Faults, and what they never cost:
  * Unreadable checkpoints. `restore_latest` tries the newest step first; when it cannot be
    read (garbage or truncated files) it tries the one before, and so on. Once a step has
    been restored, the newer unreadable ones are recorded in
    checkpoints/UNREADABLE_FILE ({"<step>": "<cause>"}): from then on they are not
    checkpoints for this class (not listed, not restored, never garbage-collected by
    `keep`), and their files are left exactly as they are: nothing is deleted or renamed.
    Remove a step's entry from that file to have it tried again. When no step can be read,
    `UnreadableCheckpointsError` lists every step tried with its cause and nothing is
    recorded (a storage outage must not condemn good checkpoints).
  * A step number that is taken. When the run reaches the number of an unreadable step
    again (or any directory of that name exists) that step is not saved: Orbax would
    delete the existing directory to make room. `save` prints one warning and returns
    False; the next save (checkpoint.every later, or at the end) proceeds as usual. If it
    is the run's last step, its final state is not saved; the warning says so.
  * A failed save. An asynchronous save that fails is reported at the first
    `raise_if_save_failed` after the failure (the trainer calls it after every step) and
    at `save`/`wait`, as `CheckpointSaveError` naming the step and the cause, after
    removing the temporary directory Orbax made for that step (only it: Orbax's
    temporary path of that step, once Orbax's writers of the save have stopped).
"""

from __future__ import annotations

import contextlib
import dataclasses
import gc
import json
import logging
import os
import re
import sys
import threading
import time
from typing import Any, Callable

import grain
import jax
import numpy as np
import orbax.checkpoint as ocp
from etils import epath
from jax.experimental import multihost_utils

CHUNK_BYTES = 64 * 2**20
UNREADABLE_FILE = 'unreadable_steps.json'
_WRITERS_TIMEOUT_S = 60.0
_DATA_STATE_FILE = re.compile(r'^process_\d+-of-(\d+)\.json$')  # grain's per-process state


class UnreadableCheckpointsError(RuntimeError):
  """No checkpoint of the directory could be restored; the message lists what was tried."""


class CheckpointSaveError(RuntimeError):
  """A checkpoint could not be written; the message names the step and the cause."""


@dataclasses.dataclass
class Restored:
  step: int
  state: Any
  config: dict | None                 # the config saved with the step (None: none saved)
  unreadable: list[tuple[int, str]]   # newer steps that could not be read, with causes
  data_restored: bool                 # False: the data iterator was left at its start


class _SkippingNameFormat(ocp.step.NameFormat):
  """Orbax's standard step names ("<step>"), blind to the steps recorded as unreadable."""

  def __init__(self, skipped: set[int]):
    self._standard = ocp.step.standard_name_format()
    self._skipped = skipped

  def build_name(self, step: int) -> str:
    return self._standard.build_name(step)

  def find_all(self, base_path):
    return (m for m in self._standard.find_all(base_path) if m.step not in self._skipped)

  def skip(self, steps) -> None:
    self._skipped.update(steps)

  def find_step(self, base_path, step: int):
    if step in self._skipped:
      raise ValueError(f'step {step} is recorded as unreadable in {base_path}/{UNREADABLE_FILE}')
    return self._standard.find_step(base_path, step)


def short_cause(error: BaseException, limit: int = 240) -> str:
  """`Type: first line` of the innermost explicit cause, without TensorStore's spec dump."""
  while error.__cause__ is not None:
    error = error.__cause__
  lines = str(error).strip().splitlines()
  text = lines[0] if lines else ''
  text = text.split(' [tensorstore_spec=')[0]
  text = f'{type(error).__name__}: {text}' if text else type(error).__name__
  return text if len(text) <= limit else text[:limit - 3] + '...'


def _join_orbax_writers(timeout: float) -> None:
  """Waits (up to `timeout` seconds in all) for Orbax's commit threads of a failed save.

  Orbax reports the first failing write while the save's other writers may still be
  running; they would recreate files in a temporary directory removed under them.
  """
  from orbax.checkpoint._src.futures import future as orbax_future
  writer = getattr(orbax_future, '_SignalingThread', None)
  if writer is None:
    return
  deadline = time.monotonic() + timeout
  for thread in threading.enumerate():
    if isinstance(thread, writer) and thread is not threading.current_thread():
      thread.join(max(0.0, deadline - time.monotonic()))


class _DropUnretrievedReadErrors(logging.Filter):

  def filter(self, record: logging.LogRecord) -> bool:
    return 'exception was never retrieved' not in str(record.msg)


@contextlib.contextmanager
def _quiet_abandoned_reads():
  """A restore that fails reports one error, its cause. The concurrent reads it abandoned
  would each print a screenful: asyncio's 'exception was never retrieved' when collected,
  and TensorStore's completion callbacks finding Orbax's event loop closed ('Event loop is
  closed', through sys.unraisablehook). Both are dropped while restoring; nothing else is."""
  quiet = _DropUnretrievedReadErrors()
  asyncio_logger = logging.getLogger('asyncio')
  asyncio_logger.addFilter(quiet)
  previous_hook = sys.unraisablehook

  def hook(unraisable):
    if not (isinstance(unraisable.exc_value, RuntimeError)
            and str(unraisable.exc_value) == 'Event loop is closed'):
      previous_hook(unraisable)

  sys.unraisablehook = hook
  try:
    yield
  finally:
    gc.collect()
    sys.unraisablehook = previous_hook
    asyncio_logger.removeFilter(quiet)


def _everyone(ok: bool) -> bool:
  """True when `ok` holds on every process (each reads its own shards of a checkpoint)."""
  if jax.process_count() == 1:
    return ok
  return bool(np.all(multihost_utils.process_allgather(np.int32(ok))))


class Checkpointer:
  """Saves and restores (train state, data iterator) pairs under one directory."""

  def __init__(self, directory: str, *, keep: int, use_async: bool):
    self.directory = os.path.abspath(directory)
    self._unreadable = self._read_unreadable()
    self._name_format = _SkippingNameFormat(set(self._unreadable))
    options = ocp.CheckpointManagerOptions(
        max_to_keep=keep, create=True, enable_async_checkpointing=use_async,
        step_name_format=self._name_format)
    self._manager = ocp.CheckpointManager(self.directory, options=options,
                                          item_names=('state', 'data', 'config'))
    self._in_flight: int | None = None  # the step being saved
    self._taken_warned: set[int] = set()

  # -- what is there ------------------------------------------------------------------

  def latest_step(self) -> int | None:
    return self._manager.latest_step()

  def all_steps(self) -> list[int]:
    return list(self._manager.all_steps())

  def unreadable_steps(self) -> dict[int, str]:
    """{step: cause} of the steps recorded as unreadable (never restored, never deleted)."""
    return dict(self._unreadable)

  def step_path(self, step: int) -> str:
    return os.path.join(self.directory, self._name_format.build_name(step))

  def saved_config(self, step: int) -> dict | None:
    """The config saved with `step` (None for a checkpoint written without one)."""
    if not os.path.isdir(os.path.join(self.step_path(step), 'config')):
      return None
    restored = self._manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))
    return restored['config']

  def saved_process_count(self, step: int) -> int | None:
    """How many processes saved the data position of `step` (None: none saved)."""
    data_dir = os.path.join(self.step_path(step), 'data')
    if not os.path.isdir(data_dir):
      return None
    counts = {int(m.group(1)) for m in map(_DATA_STATE_FILE.match, os.listdir(data_dir)) if m}
    return counts.pop() if len(counts) == 1 else None

  # -- restoring ----------------------------------------------------------------------

  def restore(self, step: int, abstract_state, data_iterator=None):
    """Restores the state into the layout of `abstract_state` (and the iterator in place)."""
    if step in self._unreadable:
      raise FileNotFoundError(f'checkpoint {step} in {self.directory} is recorded as '
                              f'unreadable ({self._unreadable[step]}); see {UNREADABLE_FILE}')
    if step not in self._manager.all_steps():
      raise FileNotFoundError(
          f'no checkpoint for step {step} in {self.directory}; available: {self.all_steps()}')
    items = {'state': ocp.args.StandardRestore(abstract_state)}
    if data_iterator is not None:
      items['data'] = grain.checkpoint.CheckpointRestore(data_iterator)
    restored = self._manager.restore(step, args=ocp.args.Composite(**items))
    return restored['state']

  def restore_latest(self, abstract_state, data_iterator=None, *,
                     check: Callable[[int, dict, int | None], bool] | None = None
                     ) -> Restored | None:
    """Restores the newest readable step (None when the directory holds no checkpoint).

    check(step, saved_config, saved_process_count) runs before a step's state is read:
    it raises to refuse the resume (the error propagates, nothing is recorded) or returns
    whether to restore the data position. A step whose config, state or data position
    cannot be read is passed over for the one before; see the module docstring.
    """
    candidates = sorted(self.all_steps(), reverse=True)
    if not candidates and self._unreadable:
      raise UnreadableCheckpointsError(
          f'no readable checkpoint in {self.directory}: '
          + ', '.join(f'step {s} ({c})' for s, c in sorted(self._unreadable.items()))
          + f' recorded as unreadable in {UNREADABLE_FILE}; their files are left as they are')
    with _quiet_abandoned_reads():
      return self._restore_newest(candidates, abstract_state, data_iterator, check)

  def _restore_newest(self, candidates, abstract_state, data_iterator, check) -> Restored | None:
    tried: list[tuple[int, str]] = []
    for step in candidates:
      cause, saved = None, None
      try:
        saved = self.saved_config(step)
      except Exception as e:  # noqa: BLE001 - any failure to read makes the step unreadable
        cause = f'config: {short_cause(e)}'
      if not _everyone(cause is None):
        tried.append((step, cause or 'unreadable on another process'))
        continue
      restore_data = data_iterator is not None and os.path.isdir(
          os.path.join(self.step_path(step), 'data'))
      if check is not None and saved is not None:
        restore_data = check(step, saved, self.saved_process_count(step)) and restore_data
      try:
        state = self.restore(step, abstract_state, data_iterator if restore_data else None)
      except Exception as e:  # noqa: BLE001
        cause = short_cause(e)
      if not _everyone(cause is None):
        tried.append((step, cause or 'unreadable on another process'))
        continue
      self._record_unreadable(tried)
      return Restored(step=step, state=state, config=saved, unreadable=tried,
                      data_restored=restore_data)
    if not tried:
      return None
    raise UnreadableCheckpointsError(
        f'no readable checkpoint in {self.directory}: tried '
        + '; '.join(f'step {s} ({c})' for s, c in tried)
        + '. Nothing was changed; the steps are left as they are')

  def _read_unreadable(self) -> dict[int, str]:
    path = os.path.join(self.directory, UNREADABLE_FILE)
    if not os.path.exists(path):
      return {}
    try:
      with open(path, encoding='utf-8') as f:
        return {int(step): str(cause) for step, cause in json.load(f).items()}
    except (ValueError, AttributeError, OSError) as e:
      print(f'warning: {path} is not a readable record of unreadable checkpoints '
            f'({short_cause(e)}); ignoring it')
      return {}

  def _record_unreadable(self, tried: list[tuple[int, str]]) -> None:
    if not tried:
      return
    self._unreadable.update(tried)
    self._name_format.skip(step for step, _ in tried)
    if jax.process_index() == 0:
      path = os.path.join(self.directory, UNREADABLE_FILE)
      tmp = f'{path}.tmp-{os.getpid()}'
      with open(tmp, 'w', encoding='utf-8') as f:
        json.dump({str(s): c for s, c in sorted(self._unreadable.items())}, f, indent=1)
      os.replace(tmp, path)
    self._manager.reload()  # forget them: never listed, never garbage-collected

  # -- saving -------------------------------------------------------------------------

  def save(self, step: int, state, data_iterator=None, config=None) -> bool:
    """Starts writing `step` (returns once the arrays are copied off the devices).

    Returns False, with one warning, when a directory of that step exists (an unreadable
    checkpoint): Orbax would replace it. Raises CheckpointSaveError when this save or the
    previous one failed.
    """
    self.wait()  # the previous save first, as Orbax would, but naming its own step
    path = self.step_path(step)
    if os.path.exists(path):
      if step not in self._taken_warned:
        self._taken_warned.add(step)
        print(f'warning: checkpoint {step} not saved: {path} exists (an unreadable '
              'checkpoint, kept as it is)')
      return False
    chunked = jax.tree.map(lambda _: ocp.SaveArgs(chunk_byte_size=CHUNK_BYTES), state)
    items = {'state': ocp.args.StandardSave(state, save_args=chunked)}
    if data_iterator is not None:
      items['data'] = grain.checkpoint.CheckpointSave(data_iterator)
    if config is not None:
      items['config'] = ocp.args.JsonSave(json.loads(config.to_json_best_effort()))
    self._in_flight = step
    try:
      self._manager.save(step, args=ocp.args.Composite(**items), force=True)
    except Exception as e:  # noqa: BLE001
      raise self._failed(e) from e
    return True

  def raise_if_save_failed(self) -> None:
    """Without waiting: raises CheckpointSaveError if the save in flight has failed (on
    any process: with several, every process calls this at the same point)."""
    error = None
    if self._in_flight is not None and not self._manager.is_saving_in_progress():
      try:
        self.wait()
      except CheckpointSaveError as e:
        error = e
    if not _everyone(error is None):
      raise error or CheckpointSaveError('a checkpoint save failed on another process; '
                                         'its log names the step and the cause')

  def wait(self) -> None:
    """Waits for the save in flight; raises CheckpointSaveError if it failed."""
    try:
      self._manager.wait_until_finished()
    except Exception as e:  # noqa: BLE001
      if self._in_flight is None:
        raise
      raise self._failed(e) from e
    self._in_flight = None

  def close(self) -> None:
    try:
      self.wait()
    finally:
      self._manager.close()

  def _failed(self, error: BaseException) -> CheckpointSaveError:
    """Removes the temporary directory of the failed save in flight; the error to raise."""
    step, self._in_flight = self._in_flight, None
    _join_orbax_writers(timeout=_WRITERS_TIMEOUT_S)
    removed = []
    if jax.process_index() == 0:
      # Orbax writes step N into N.orbax-checkpoint-tmp (replacing an unfinished one of that
      # name) and renames it; on storage without atomic rename (gs://) into N itself, done
      # when it holds commit_success.txt. N did not exist before this save (see `save`).
      final = epath.Path(self.step_path(step))
      for path in (final.parent / (final.name + ocp.step.TMP_DIR_SUFFIX), final):
        if path.exists() and ocp.step.is_path_temporary(path):
          path.rmtree(missing_ok=True)
          removed.append(str(path))
    cleanup = (f'; removed its temporary directory {", ".join(removed)}' if removed
               else '; no temporary directory was left')
    return CheckpointSaveError(
        f'checkpoint {step} could not be written: {short_cause(error)}{cleanup}')
