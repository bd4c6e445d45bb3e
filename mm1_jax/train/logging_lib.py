"""Where metrics go: WORKDIR/metrics.jsonl (one JSON object per line) and TensorBoard.

Only process 0 writes. Each line is flushed when written, so a killed run keeps every
logged step. Records: the training metrics of a logged step ({"step": N, "loss": ...}),
evaluation results ({"step": N, "eval/<task>/<k>shot": ...}, from the trainer or
`python -m mm1_jax.evaluate`), and the config changes a resume allowed
({"step": N, "config_change": {"train.steps": [old, new], ...}}, see resume_check.py).

A resumed run continues from checkpoint N, so the records of steps after N (logged by the
attempt that was interrupted, on a timeline no checkpoint holds) would repeat: before it
appends, the trainer moves them to metrics.superseded.jsonl (`set_aside_after`: appended
there, then metrics.jsonl is rewritten through a temporary file and os.replace), so
metrics.jsonl holds each step's records once and nothing logged is lost. TensorBoard
likewise discards the events after N (`purge_step`).

Reading: `read_records` gives every complete line in order (a line cut short by a kill is
left out); `read_steps` merges the records of each step in file order (a later value of a
key wins), which is how every reader should take a step.
"""

from __future__ import annotations

import json
import math
import os
from typing import Any

METRICS_FILE = 'metrics.jsonl'
SUPERSEDED_FILE = 'metrics.superseded.jsonl'


class MetricWriter:

  def __init__(self, workdir: str, *, tensorboard: bool, enabled: bool = True,
               purge_step: int | None = None):
    """purge_step: TensorBoard discards earlier-written events of this step and later."""
    self.enabled = enabled
    self._jsonl = None
    self._tb = None
    if not enabled:
      return
    self._jsonl = open(os.path.join(workdir, METRICS_FILE), 'a', encoding='utf-8')
    if tensorboard:
      from tensorboardX import SummaryWriter  # imported lazily: optional at inference time
      self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'), purge_step=purge_step)

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    record = {'step': int(step)}
    for key, value in metrics.items():
      value = float(value)
      record[key] = value if math.isfinite(value) else str(value)
    self._write_line(record)
    if self._tb is not None:
      for key, value in metrics.items():
        self._tb.add_scalar(key, float(value), global_step=int(step))

  def write_config_change(self, step: int, changes: dict[str, list[Any]]) -> None:
    """{"step": step, "config_change": {key: [old, new]}}: what a resume changed."""
    if self.enabled and changes:
      self._write_line({'step': int(step), 'config_change': changes})

  def _write_line(self, record: dict) -> None:
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()


def _step_of(line: str) -> int | None:
  """The step of a complete record line (None: cut short, unparseable or step-less)."""
  if not line.endswith('\n'):
    return None
  try:
    step = json.loads(line).get('step')
  except (ValueError, AttributeError):
    return None
  return step if isinstance(step, int) else None


def set_aside_after(workdir: str, step: int) -> int:
  """Moves the lines of metrics.jsonl that are not complete records of steps <= `step` to
  metrics.superseded.jsonl; returns how many moved."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return 0
  with open(path, encoding='utf-8') as f:
    lines = f.readlines()
  keep, moved = [], []
  for line in lines:
    line_step = _step_of(line)
    (keep if line_step is not None and line_step <= step else moved).append(line)
  if not moved:
    return 0
  with open(os.path.join(workdir, SUPERSEDED_FILE), 'a', encoding='utf-8') as f:
    f.writelines(line if line.endswith('\n') else line + '\n' for line in moved)
    f.flush()
    os.fsync(f.fileno())
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.writelines(keep)
    f.flush()
    os.fsync(f.fileno())
  os.replace(tmp, path)
  return len(moved)


def read_records(workdir: str) -> list[dict]:
  """Every complete record of WORKDIR/metrics.jsonl, in file order."""
  path = os.path.join(workdir, METRICS_FILE)
  if not os.path.exists(path):
    return []
  records = []
  with open(path, encoding='utf-8') as f:
    for line in f:
      if not line.endswith('\n'):
        continue  # cut short by a kill
      try:
        record = json.loads(line)
      except ValueError:
        continue
      if isinstance(record, dict) and isinstance(record.get('step'), int):
        records.append(record)
  return records


def read_steps(workdir: str) -> dict[int, dict]:
  """{step: the merged records of that step}, in step order (later values win)."""
  steps: dict[int, dict] = {}
  for record in read_records(workdir):
    steps.setdefault(record['step'], {}).update(record)
  return dict(sorted(steps.items()))
