"""The training loop: set-up, resume, steps, logging, checkpoints, summary.

`train(config, workdir)` is what `python -m mm1_jax.train` runs. Re-running it on the same
workdir resumes from the latest readable checkpoint, data position included (an unreadable
newer one is reported and passed over, see checkpoint.py). The config is first compared
with the one the checkpoint saved (resume_check.py): a change the resume cannot follow is
refused before anything is written to the workdir; config.json and the tokenizer copy are
written only once the restore succeeded, and the allowed changes are printed and recorded
in metrics.jsonl. metrics.jsonl records of steps after the restored one are set aside
(logging_lib.py), so each step is recorded once. A checkpoint save that fails stops the run
at the next step, naming the step and the cause. SIGTERM (a
preemption notice) and `train.max_runtime` make it finish the current step, save, wait for
the save to be durable and return normally. With several processes the stop is agreed
after every step (any process's reason stops all at the same step), since a process that
stopped alone would leave the others waiting in a collective.

Non-finite steps are never applied (see step.py). With `train.on_nonfinite='stop'` each
step's flag is read one step late (so the host does not wait for the device every step)
and the run stops naming the first non-finite step, before any later checkpoint;
with 'skip' they are counted as `nonfinite_steps` in metrics.jsonl.
"""

from __future__ import annotations

import dataclasses
import json
import os
import shutil
import signal
import time

import jax
import jax.numpy as jnp
import numpy as np
from jax.experimental import multihost_utils
from jax.sharding import NamedSharding, PartitionSpec
from tqdm import tqdm

from data_pipelines import grain_pipeline
from data_pipelines import skip_reasons
from mm1_jax import config_lib
from mm1_jax.parallel import mesh as mesh_lib
from mm1_jax.parallel import rules
from mm1_jax.train import checkpoint as checkpoint_lib
from mm1_jax.train import flops as flops_lib
from mm1_jax.train import logging_lib
from mm1_jax.train import optimizer as optimizer_lib
from mm1_jax.train import resume_check
from mm1_jax.train import state as state_lib
from mm1_jax.train import step as step_lib

TOKENIZER_FILE = 'tokenizer.model'


class NonFiniteError(RuntimeError):
  """The loss or gradient norm became NaN/inf and train.on_nonfinite is 'stop'."""


@dataclasses.dataclass
class Summary:
  workdir: str
  steps: int
  start_step: int
  seconds: float
  first_loss: float | None
  final_loss: float | None
  final_source_loss: dict[str, float]
  checkpoints: list[int]
  skipped_records: int
  stopped_early: str | None = None
  nonfinite_steps: int = 0
  final_eval: dict[str, float] = dataclasses.field(default_factory=dict)
  skipped_by_reason: dict[str, int] = dataclasses.field(default_factory=dict)
  dropped_images_by_reason: dict[str, int] = dataclasses.field(default_factory=dict)
  unsaved_checkpoints: list[int] = dataclasses.field(default_factory=list)

  def describe(self) -> str:
    lines = [f'trained steps {self.start_step} -> {self.steps} in {self.seconds:.1f} s'
             + (f' (stopped early: {self.stopped_early})' if self.stopped_early else '')]
    if self.first_loss is not None and self.final_loss is not None:
      lines.append(f'loss: first logged {self.first_loss:.4f}, final {self.final_loss:.4f}')
    for name, value in self.final_source_loss.items():
      lines.append(f'  loss/{name}: {value:.4f}')
    for name, value in sorted(self.final_eval.items()):
      lines.append(f'  {name}: {value:.2f}')
    lines.append(f'skipped data records: {self.skipped_records}' + ''.join(
        f', {slug} {n}' for slug, n in self.skipped_by_reason.items()))
    if self.dropped_images_by_reason:
      lines.append('dropped images: ' + ', '.join(
          f'{slug} {n}' for slug, n in self.dropped_images_by_reason.items()))
    if self.nonfinite_steps:
      lines.append(f'non-finite steps skipped: {self.nonfinite_steps}')
    lines.append(f'checkpoints: {os.path.join(self.workdir, "checkpoints")} steps {self.checkpoints}')
    if self.unsaved_checkpoints:
      lines.append(f'not saved (the step number is held by an unreadable checkpoint): '
                   f'steps {self.unsaved_checkpoints}')
    lines.append(f'metrics: {os.path.join(self.workdir, "metrics.jsonl")}')
    return '\n'.join(lines)


def _write_json_atomic(path: str, payload: str) -> None:
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.write(payload)
  os.replace(tmp, path)


def prepare_data(config) -> None:
  """Makes sure the configured data exists (generating the synthetic world if asked) and
  matches the config: `config_lib.check_data`, which raises ConfigError naming the key."""
  config_lib.check_data(config)


def check_tokenizer(config, tokenizer) -> None:
  dec = config.model.decoder
  if tokenizer.vocab_size > dec.vocab_size:
    raise config_lib.ConfigError(
        f'config.model.decoder.vocab_size: {dec.vocab_size} is smaller than the tokenizer '
        f'vocabulary ({tokenizer.vocab_size} pieces, {config.data.tokenizer})')
  if tokenizer.image_token_id != config.model.image_token_id:
    raise config_lib.ConfigError(
        f'config.model.image_token_id: {config.model.image_token_id} but the tokenizer maps '
        f'<image> to {tokenizer.image_token_id}')


def batch_shardings(mesh, example_batch: dict) -> dict:
  """Every batch array is split over its leading (row) dimension along the batch axes."""
  return {key: NamedSharding(mesh, rules.logical_to_spec(('batch',) + (None,) * (value.ndim - 1)))
          for key, value in example_batch.items()}


def check_batch_divides(config, mesh) -> None:
  spec = rules.logical_to_spec(('batch',))
  axes = spec[0] if spec and spec[0] is not None else ()
  axes = (axes,) if isinstance(axes, str) else tuple(axes)
  shards = int(np.prod([mesh.shape[a] for a in axes])) if axes else 1
  micro = config.train.batch_size // config.train.grad_accum
  if micro % shards:
    raise config_lib.ConfigError(
        f'config.train.batch_size: {config.train.batch_size} rows '
        f'({micro} per micro-batch) do not divide over {shards} batch shards of the mesh '
        f'{dict(mesh.shape)}')


def _eval_due(config, step: int) -> bool:
  every = config.eval.every
  return bool(every and config.eval.tasks) and (step % every == 0 or step == config.train.steps)


def _evaluate(config, layout, state, tokenizer, step: int, workdir: str, mesh, *,
              show_progress: bool) -> dict[str, float]:
  """Few-shot evaluation of the current parameters (`eval.tasks` x `eval.shots`)."""
  from mm1_jax.eval import evaluator  # imported only when a run evaluates
  model = state_lib.merge_model(layout.graphdef, state['params'])
  return evaluator.evaluate_model(config, model, tokenizer, step, workdir, mesh=mesh,
                                  show_progress=show_progress)


class _StopFlag:
  """Set by SIGTERM (preemption) or the runtime budget; checked after every step."""

  def __init__(self, max_runtime: float):
    self.reason: str | None = None
    self._deadline = time.monotonic() + max_runtime if max_runtime > 0 else None
    self._previous = None
    try:
      self._previous = signal.signal(signal.SIGTERM, self._on_sigterm)
    except ValueError:  # not the main thread: no signal handling
      pass

  def _on_sigterm(self, signum, frame):
    del signum, frame
    self.reason = 'SIGTERM'

  def check(self) -> str | None:
    if self.reason is None and self._deadline is not None and time.monotonic() > self._deadline:
      self.reason = 'train.max_runtime'
    if jax.process_count() > 1:
      self.reason = self._agreed(self.reason)
    return self.reason

  @staticmethod
  def _agreed(reason: str | None) -> str | None:
    """The first reason any process has (SIGTERM may reach only some of them)."""
    codes = {None: 0, 'SIGTERM': 1, 'train.max_runtime': 2}
    names = {code: name for name, code in codes.items()}
    everyone = multihost_utils.process_allgather(np.int32(codes[reason]))
    stopping = [int(c) for c in np.ravel(everyone) if c]
    return names[min(stopping)] if stopping else None

  def restore(self):
    if self._previous is not None:
      signal.signal(signal.SIGTERM, self._previous)


class _NonFiniteGuard:
  """Counts non-finite steps and, for 'stop', raises naming the first one.

  A step's flag is read when the next step has been dispatched (`after_dispatch`), so the
  host waits for a step that is already finished instead of stalling the device queue.
  """

  def __init__(self, mode: str):
    self.mode = mode
    self.count = 0
    self._pending: list[tuple[int, jax.Array]] = []

  def after_dispatch(self, step: int, metrics: dict) -> None:
    self._pending.append((step, metrics))
    while len(self._pending) > 1:
      self._read(*self._pending.pop(0))

  def check_all(self) -> None:
    while self._pending:
      self._read(*self._pending.pop(0))

  def _read(self, step: int, metrics: dict) -> None:
    if not int(jax.device_get(metrics['nonfinite'])):
      return
    self.count += 1
    if self.mode == 'stop':
      raise NonFiniteError(
          f'step {step}: non-finite loss or gradient (loss={float(metrics["loss"])}, '
          f'grad_norm={float(metrics["grad_norm"])}); the update was not applied and no '
          f'checkpoint holds it. Set train.on_nonfinite=skip to skip such steps.')


def _window_metrics(window: list[dict], source_names: list[str], seconds: float,
                    tokens_per_step: int, flops_per_step: float, peak: float) -> dict:
  host = jax.device_get(window)
  out = {}
  out['nonfinite_steps'] = float(sum(int(m['nonfinite']) for m in host))
  # Skipped (non-finite) steps do not enter the window's averages.
  applied = [m for m in host if not int(m['nonfinite'])] or host
  tokens = sum(float(m['text_tokens']) for m in applied)
  out['loss'] = sum(float(m['loss']) * float(m['text_tokens']) for m in applied) / max(tokens, 1.0)
  loss_sum = np.sum([m['source_loss_sum'] for m in applied], axis=0)
  source_tokens = np.sum([m['source_tokens'] for m in applied], axis=0)
  rows = np.sum([m['source_rows'] for m in applied], axis=0)
  for i, name in enumerate(source_names):
    # No loss token of a source in the window: no loss/<source>; the data counts
    # (skip_reasons.WindowCounts: data/<source>_rows_without_loss) say why.
    if source_tokens[i] > 0:
      out[f'loss/{name}'] = float(loss_sum[i] / source_tokens[i])
    out[f'data/{name}_fraction'] = float(rows[i] / max(rows.sum(), 1))
  out['grad_norm'] = float(host[-1]['grad_norm'])
  for key in host[-1]['aux']:  # the model's auxiliary values (MoE), window means
    out[key] = float(np.mean([m['aux'][key] for m in host]))
  steps_per_s = len(host) / max(seconds, 1e-9)
  out['tokens_per_s'] = steps_per_s * tokens_per_step
  out['mfu'] = steps_per_s * flops_per_step / peak
  return out


def check_run_inputs(config, workdir: str):
  """Validates the config, makes sure the data exists and loads the tokenizer; writes
  nothing to the workdir. Returns (absolute workdir, tokenizer)."""
  config_lib.validate(config)
  workdir = os.path.abspath(os.path.expanduser(workdir))
  prepare_data(config)
  tokenizer = grain_pipeline.load_tokenizer(config)
  check_tokenizer(config, tokenizer)
  return workdir, tokenizer


def write_run_files(config, workdir: str) -> None:
  """Writes what every run directory holds besides checkpoints: config.json and the
  tokenizer (process 0; each file through a temporary name)."""
  os.makedirs(workdir, exist_ok=True)
  if jax.process_index() != 0:
    return
  _write_json_atomic(os.path.join(workdir, 'config.json'), config.to_json_best_effort(indent=2))
  tokenizer_copy = os.path.join(workdir, TOKENIZER_FILE)
  shutil.copyfile(grain_pipeline.resolve_path(config, config.data.tokenizer),
                  tokenizer_copy + '.tmp')
  os.replace(tokenizer_copy + '.tmp', tokenizer_copy)


def prepare_workdir(config, workdir: str):
  """`check_run_inputs` then `write_run_files`, for a new run directory (the importers).
  Returns (workdir, tokenizer)."""
  workdir, tokenizer = check_run_inputs(config, workdir)
  write_run_files(config, workdir)
  return workdir, tokenizer


def _restore_or_init(config, checkpointer, layout, tx, iterator):
  """(state, Restored or None, resume_check.Comparison or None): the newest readable
  checkpoint, once its saved config allows the resume (else raises), or a fresh state."""
  comparisons = []

  def check(step: int, saved: dict, saved_process_count: int | None) -> bool:
    comparison = resume_check.compare(saved, config, saved_process_count=saved_process_count,
                                      process_count=jax.process_count())
    comparison.raise_if_refused(step, checkpointer.directory)
    comparisons.append(comparison)
    return not comparison.restart_data

  restored = checkpointer.restore_latest(layout.abstract, iterator, check=check)
  if restored is None:
    return state_lib.init_state(config, layout, tx), None, None
  return restored.state, restored, comparisons[-1] if comparisons else None


def _report_resume(checkpointer, restored, comparison, is_main: bool) -> None:
  if not is_main:
    return
  for step, cause in restored.unreadable:
    print(f'warning: checkpoint {step} is unreadable ({cause}); restored {restored.step} '
          f'instead. {checkpointer.step_path(step)} is left as it is and recorded in '
          f'{checkpointer.directory}/{checkpoint_lib.UNREADABLE_FILE}')
  for step, cause in sorted(checkpointer.unreadable_steps().items()):
    if step > restored.step and step not in dict(restored.unreadable):
      print(f'note: checkpoint {step} passed over: recorded as unreadable ({cause})')
  print(f'Resuming from {checkpointer.directory}/{restored.step}')
  if comparison is not None and comparison.changes:
    print(f'config changes since checkpoint {restored.step} (recorded in metrics.jsonl): '
          f'{comparison.describe()}')
  if comparison is not None and comparison.restart_data:
    print('data.shards changed: the data stream restarts from its beginning')
  elif not restored.data_restored:
    print(f'checkpoint {restored.step} holds no data position: the data stream starts '
          'from its beginning')


def train(config, workdir: str, *, show_progress: bool = True) -> Summary:
  workdir, tokenizer = check_run_inputs(config, workdir)
  is_main = jax.process_index() == 0
  source_names = grain_pipeline.source_names(config)

  mesh = mesh_lib.make_mesh(config.mesh)
  check_batch_divides(config, mesh)
  # Abstract shapes are built outside the mesh context: parameters carry logical names,
  # which only the rules turn into mesh axes. The parameter count (for 'mm1_law') comes
  # from an abstract model: nothing allocated.
  num_params = state_lib.count_params(config)
  settings = optimizer_lib.resolve_settings(config, num_params)
  tx = optimizer_lib.make_optimizer(config, settings)
  schedule = optimizer_lib.make_schedule(settings)
  layout = state_lib.make_layout(config, mesh, tx)

  checkpointer = checkpoint_lib.Checkpointer(
      os.path.join(workdir, 'checkpoints'), keep=config.checkpoint.keep,
      use_async=bool(config.checkpoint['async']))
  iterator = grain_pipeline.make_iterator(
      config, process_index=jax.process_index(), process_count=jax.process_count())
  try:
    state, restored, comparison = _restore_or_init(config, checkpointer, layout, tx, iterator)
  except BaseException:
    checkpointer.close()
    raise
  start_step = int(jax.device_get(state['step']))
  # Only now does the run write to the workdir.
  write_run_files(config, workdir)
  if restored is not None:
    _report_resume(checkpointer, restored, comparison, is_main)
  if is_main:  # records of steps no checkpoint holds (an attempt killed before saving them)
    moved = logging_lib.set_aside_after(workdir, start_step)
    if moved:
      print(f'{moved} metrics.jsonl records after step {start_step} moved to '
            f'{logging_lib.SUPERSEDED_FILE}')

  # Per process: this process's step share of the FLOPs over its own devices' peak
  # (measured outside the job's mesh: it runs on this process's devices only).
  peak, peak_source = flops_lib.peak_flops()
  with jax.set_mesh(mesh):
    writer = logging_lib.MetricWriter(
        workdir, tensorboard=config.log.tensorboard, enabled=is_main,
        purge_step=start_step + 1)
    if comparison is not None:
      writer.write_config_change(start_step, comparison.changes)
    total_peak = peak * jax.process_count()
    tokens_per_step = config.train.batch_size * config.data.seq_len
    if is_main:
      print(f'mm1-jax: {num_params / 1e6:.2f}M parameters, peak lr {settings.peak_lr:.3g}, '
            f'weight decay {settings.weight_decay:.3g}, mesh {dict(mesh.shape)}, '
            f'sources {source_names}, MFU against {peak_source}')

    train_step = None
    stop = _StopFlag(config.train.max_runtime)
    nonfinite_guard = _NonFiniteGuard(config.train.on_nonfinite)
    window, window_images = [], 0.0
    data_counts = skip_reasons.WindowCounts(source_names)  # skips, drops, rows without loss
    final_eval: dict[str, float] = {}
    first_loss = final_loss = None
    final_source_loss: dict[str, float] = {}
    unsaved: list[int] = []
    window_start = time.perf_counter()
    run_start = time.perf_counter()
    step = start_step
    progress = tqdm(total=config.train.steps, initial=start_step, desc='train', unit='step',
                    disable=not (show_progress and is_main), dynamic_ncols=True)
    try:
      while step < config.train.steps:
        checkpointer.raise_if_save_failed()  # a failed save stops the run here, not later
        local_batch = next(iterator)
        data_counts.add(local_batch)  # pops the count keys: they stay on the host
        window_images += float(np.sum(local_batch['image_valid'])) * jax.process_count()
        if train_step is None:
          shardings = batch_shardings(mesh, local_batch)
          train_step = step_lib.jit_train_step(config, layout, shardings, tx, len(source_names))
        batch = {k: jax.make_array_from_process_local_data(shardings[k], v)
                 for k, v in local_batch.items()}
        state, metrics = train_step(state, batch)
        step += 1
        nonfinite_guard.after_dispatch(step, metrics)
        window.append(metrics)
        progress.update(1)

        if step == start_step + 1 or step % config.log.every == 0 or step == config.train.steps:
          nonfinite_guard.check_all()
          seconds = time.perf_counter() - window_start
          flops_per_step = flops_lib.train_flops_per_step(
              config, num_images=window_images / len(window))
          logged = _window_metrics(window, source_names, seconds, tokens_per_step,
                                   flops_per_step, total_peak)
          logged['lr'] = float(schedule(step - 1))
          logged.update(data_counts.metrics())
          writer.write(step, logged)
          if first_loss is None:
            first_loss = logged['loss']
          final_loss = logged['loss']
          final_source_loss = {k[len('loss/'):]: v for k, v in logged.items()
                               if k.startswith('loss/')}
          progress.set_postfix(loss=f'{logged["loss"]:.3f}',
                               tok_s=f'{logged["tokens_per_s"]:.0f}')
          window, window_images = [], 0.0
          window_start = time.perf_counter()

        reason = stop.check()
        if (config.checkpoint.every and step % config.checkpoint.every == 0) or reason \
            or step == config.train.steps:
          nonfinite_guard.check_all()  # 'stop' never leaves a checkpoint after a bad step
          if not checkpointer.save(step, state, iterator, config):
            unsaved.append(step)
            if is_main and (reason or step == config.train.steps):
              print(f'warning: the run ends at step {step} without a checkpoint of it; the '
                    f'latest is {checkpointer.latest_step()}')
        if _eval_due(config, step) and not reason:
          results = _evaluate(config, layout, state, tokenizer, step, workdir, mesh,
                              show_progress=show_progress and is_main)
          writer.write(step, results)
          final_eval = results
        if reason:
          break
      checkpointer.wait()  # durable before returning (and before exit 0 on SIGTERM)
    finally:
      progress.close()
      stop.restore()
      checkpointer.close()
      writer.close()

  return Summary(workdir=workdir, steps=step, start_step=start_step,
                 seconds=time.perf_counter() - run_start, first_loss=first_loss,
                 final_loss=final_loss, final_source_loss=final_source_loss,
                 checkpoints=checkpointer.all_steps(),
                 skipped_records=int(data_counts.total_skipped.sum()),
                 skipped_by_reason=skip_reasons.as_dict(data_counts.total_skipped),
                 dropped_images_by_reason=skip_reasons.as_dict(data_counts.total_dropped),
                 stopped_early=stop.reason, nonfinite_steps=nonfinite_guard.count,
                 final_eval=final_eval, unsaved_checkpoints=unsaved)
