"""Where metrics go: WORKDIR/metrics.jsonl (one JSON object per logged step) and TensorBoard.

Only process 0 writes. Each line is flushed when written, so a killed run keeps every
logged step; a resumed run appends to the same file.
"""

from __future__ import annotations

import json
import math
import os


class MetricWriter:

  def __init__(self, workdir: str, *, tensorboard: bool, enabled: bool = True):
    self.enabled = enabled
    self._jsonl = None
    self._tb = None
    if not enabled:
      return
    self._jsonl = open(os.path.join(workdir, 'metrics.jsonl'), 'a', encoding='utf-8')
    if tensorboard:
      from tensorboardX import SummaryWriter  # imported lazily: optional at inference time
      self._tb = SummaryWriter(os.path.join(workdir, 'tensorboard'))

  def write(self, step: int, metrics: dict[str, float]) -> None:
    if not self.enabled:
      return
    record = {'step': int(step)}
    for key, value in metrics.items():
      value = float(value)
      record[key] = value if math.isfinite(value) else str(value)
    self._jsonl.write(json.dumps(record) + '\n')
    self._jsonl.flush()
    if self._tb is not None:
      for key, value in metrics.items():
        self._tb.add_scalar(key, float(value), global_step=int(step))

  def close(self) -> None:
    if self._jsonl is not None:
      self._jsonl.close()
    if self._tb is not None:
      self._tb.close()
