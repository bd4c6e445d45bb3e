"""Sweep results: one row per variant -> results.csv, results.md and one plot per task.

A variant's row holds its final per-source losses and the evaluation results its run
logged (`eval/<task>/<k>shot` in metrics.jsonl). Plots put the swept quantity on the
horizontal axis and draw one line per shot count.
"""

from __future__ import annotations

import csv
import json
import os
import re
from collections import defaultdict

from mm1_jax.train import logging_lib

EVAL_KEY = re.compile(r'^eval/(?P<task>[^/]+)/(?P<shots>\d+)shot$')


def read_run(workdir: str) -> dict[str, float]:
  """The last logged value of each loss/ and eval/ metric of a training workdir."""
  path = os.path.join(workdir, logging_lib.METRICS_FILE)
  if not os.path.isfile(path):
    raise FileNotFoundError(f'{path}: the run has no metrics')
  latest: dict[str, float] = {}
  for record in logging_lib.read_steps(workdir).values():  # in step order
    for key, value in record.items():
      if (key == 'loss' or key.startswith(('loss/', 'eval/'))) and isinstance(value, (int, float)):
        latest[key] = float(value)
  return latest


def _atomic_write(path: str, text: str) -> None:
  tmp = f'{path}.tmp-{os.getpid()}'
  with open(tmp, 'w', encoding='utf-8') as f:
    f.write(text)
  os.replace(tmp, path)


def write_tables(rows: list[dict], out_dir: str) -> list[str]:
  """rows: [{'variant', 'x', metric: value, ...}] -> results.csv and results.md."""
  metrics = sorted({k for row in rows for k in row if k not in ('variant', 'x')},
                   key=lambda k: (not k.startswith('eval/'), k))
  columns = ['variant', 'x', *metrics]
  csv_path = os.path.join(out_dir, 'results.csv')
  tmp = f'{csv_path}.tmp-{os.getpid()}'
  with open(tmp, 'w', newline='', encoding='utf-8') as f:
    writer = csv.DictWriter(f, fieldnames=columns)
    writer.writeheader()
    for row in rows:
      writer.writerow({c: row.get(c, '') for c in columns})
  os.replace(tmp, csv_path)

  def cell(value):
    return f'{value:.2f}' if isinstance(value, float) else str(value)

  lines = ['| ' + ' | '.join(columns) + ' |', '|' + '---|' * len(columns)]
  for row in rows:
    lines.append('| ' + ' | '.join(cell(row.get(c, '')) for c in columns) + ' |')
  md_path = os.path.join(out_dir, 'results.md')
  _atomic_write(md_path, '\n'.join(lines) + '\n')
  return [csv_path, md_path]


def plot(rows: list[dict], out_dir: str, swept: str) -> list[str]:
  """One PNG per evaluation task: metric against the swept quantity, a line per shot count."""
  import matplotlib
  matplotlib.use('Agg')
  import matplotlib.pyplot as plt

  by_task: dict[str, dict[int, str]] = defaultdict(dict)
  for row in rows:
    for key in row:
      match = EVAL_KEY.match(key)
      if match:
        by_task[match['task']][int(match['shots'])] = key
  labels = [str(row['x']) for row in rows]
  positions = list(range(len(rows)))
  numeric = all(isinstance(row['x'], (int, float)) for row in rows)
  paths = []
  for task, keys in sorted(by_task.items()):
    fig, ax = plt.subplots(figsize=(7, 4))
    for shots, key in sorted(keys.items()):
      xs = [row['x'] for row in rows] if numeric else positions
      ax.plot(xs, [row.get(key, float('nan')) for row in rows], marker='o',
              label=f'{shots}-shot')
    if not numeric:
      ax.set_xticks(positions, labels, rotation=20, ha='right')
    ax.set_xlabel(swept)
    ax.set_ylabel(task)
    ax.grid(alpha=0.3)
    ax.legend()
    fig.tight_layout()
    path = os.path.join(out_dir, f'eval_{task}.png')
    fig.savefig(path + '.tmp.png', dpi=120)
    plt.close(fig)
    os.replace(path + '.tmp.png', path)
    paths.append(path)
  return paths
