"""What a resume may change: the config of a resumed run against the one its checkpoint saved.

A resumed run continues the parameters, optimizer state and data position of a checkpoint.
Some keys define what those are: the shapes and the function of the model, the structure
of the optimizer state, which rows the data stream yields and what a saved position
counts. A change to one of them cannot be followed: the resume is refused, naming the keys
(one line, `ResumeConfigError`, exit 2 through `python -m mm1_jax.train`), before anything
is written to the workdir. Every other change alters how the run goes on (its length and
so its LR schedule, batch size, mixture weights, learning rate, cadences, mesh): it is
allowed, printed, and recorded in metrics.jsonl as
`{"step": N, "config_change": {"train.steps": [old, new], ...}}` at the resumed step N.

`RULES` is the one table: the first rule whose key equals a dotted config key or is a
prefix of it decides. A key missing on one side (a key added to the schema since the
checkpoint was written, or removed) is never refused, only recorded.

`data.shards` is special: 0 means one logical input shard per process, so its effective
value is the process count, and the grain iterator keeps one saved state per process.
  * effective value unchanged, same process count: nothing to say;
  * effective value changed while the new config says 0 (an implicit change: the run was
    restarted on another number of processes): refused, since the row stream would change
    silently;
  * effective value changed by an explicit `data.shards`: allowed and recorded; the saved
    data position cannot carry over to another sharding, so the data stream restarts from
    its beginning (the parameters and optimizer state are restored);
  * effective value unchanged but another process count: refused, since the saved position
    is kept per process and cannot move to another count; resume on the original count,
    or change data.shards explicitly to restart the stream.
"""

from __future__ import annotations

import dataclasses
import json
from typing import Any

from mm1_jax import config_lib

IDENTITY = 'identity'  # refused
RUN = 'run'            # allowed and recorded
SHARDS = 'shards'      # see the module docstring

# (key or key prefix, class, why). First match wins; the last rule catches every key.
RULES: tuple[tuple[str, str, str], ...] = (
    ('model', IDENTITY, 'parameter shapes and the function the model computes'),
    ('train.freeze', IDENTITY, 'the structure of the optimizer state'),
    ('train.lr_scales', IDENTITY, 'the structure of the optimizer state'),
    ('data.backend', IDENTITY, 'the format of the saved data position'),
    ('data.sources', IDENTITY, 'which records the data stream reads'),
    ('data.tokenizer', IDENTITY, 'the token ids (rows of the embedding)'),
    ('data.seed', IDENTITY, 'the shuffle order the saved data position points into'),
    ('data.seq_len', IDENTITY, 'how documents are cut into rows'),
    ('data.max_images', IDENTITY, 'how documents are cut into rows'),
    ('data.packing', IDENTITY, 'how documents are cut into rows'),
    ('data.long_documents', IDENTITY, 'how documents are cut into rows'),
    ('data.min_piece_tokens', IDENTITY, 'how documents are cut into rows'),
    ('data.max_image_pixels', IDENTITY, 'which records are skipped, so what a saved '
     'data position counts'),
    ('data.shards', SHARDS, 'the logical input shards (0: one per process)'),
    ('', RUN, 'how the run goes on: steps and schedule, batch, weights, lr, cadences, mesh'),
)


class ResumeConfigError(config_lib.ConfigError):
  """The config changes a key that a resume cannot follow; the message names the keys."""


@dataclasses.dataclass
class Comparison:
  """The differences between the saved and the new config, classified by `RULES`."""
  refused: dict[str, str]                   # key -> why, for the one-line error
  changes: dict[str, list[Any]]             # key -> [old, new]: allowed, to be recorded
  restart_data: bool = False                # True: do not restore the data position

  def raise_if_refused(self, step: int, checkpoint_dir: str) -> None:
    if self.refused:
      reasons = '; '.join(f'{key} {why}' for key, why in self.refused.items())
      raise ResumeConfigError(
          f'resume from checkpoint {step} refused: {reasons}. Nothing was written; resume '
          f'with the config saved in {checkpoint_dir}/{step}/config, or use a new workdir')

  def describe(self) -> str:
    return ', '.join(f'{key} {_show(old)} -> {_show(new)}'
                     for key, (old, new) in self.changes.items())


def classify(key: str) -> tuple[str, str]:
  """(class, why) of a dotted config key."""
  for pattern, kind, why in RULES:
    if not pattern or key == pattern or key.startswith(pattern + '.'):
      return kind, why
  raise AssertionError('the last rule matches every key')


def flatten(tree: dict[str, Any], prefix: str = '') -> dict[str, Any]:
  """{'a': {'b': 1}} -> {'a.b': 1}; lists (tuples in the config) stay values."""
  flat = {}
  for key, value in tree.items():
    name = f'{prefix}{key}'
    if isinstance(value, dict) and value:
      flat.update(flatten(value, name + '.'))
    else:
      flat[name] = value
  return flat


def effective_shards(shards: int, process_count: int) -> int:
  return int(shards) or int(process_count)


def compare(saved: dict[str, Any], config, *, saved_process_count: int | None,
            process_count: int) -> Comparison:
  """Classifies every difference between `saved` (the checkpoint's config as JSON) and
  `config`. `saved_process_count`: how many processes saved the data position (None:
  unknown, or no data position saved)."""
  old = flatten(saved)
  new = flatten(json.loads(config.to_json_best_effort()))
  result = Comparison(refused={}, changes={})
  for key in sorted(set(old) | set(new)):
    if key not in old or key not in new:
      if old.get(key) != new.get(key):
        result.changes[key] = [old.get(key), new.get(key)]
      continue
    kind, why = classify(key)
    if kind == SHARDS:
      _compare_shards(result, old[key], new[key], saved_process_count, process_count)
    elif old[key] == new[key]:
      continue
    elif kind == IDENTITY:
      result.refused[key] = f'{_show(old[key])} -> {_show(new[key])} ({why})'
    else:
      result.changes[key] = [old[key], new[key]]
  return result


def _compare_shards(result: Comparison, old_raw, new_raw, saved_process_count: int | None,
                    process_count: int) -> None:
  if saved_process_count is None:  # no data position saved: only the raw value can differ
    if old_raw != new_raw:
      result.changes['data.shards'] = [old_raw, new_raw]
      result.restart_data = True
    return
  old = effective_shards(old_raw, saved_process_count)
  new = effective_shards(new_raw, process_count)
  if old != new and not new_raw:
    result.refused['data.shards'] = (
        f'0 (one per process) now means {new} shards but the checkpoint\'s run had {old}: '
        f'the row stream would change silently; resume on {saved_process_count} '
        'processes, or set data.shards explicitly to restart the data stream')
  elif old != new:
    result.changes['data.shards'] = [old, new]
    result.restart_data = True
  elif saved_process_count != process_count:
    result.refused['data.shards'] = (
        f'{new} shards, but the data position was saved by {saved_process_count} processes '
        f'and cannot move to {process_count}; resume on {saved_process_count} processes, '
        'or change data.shards explicitly to restart the data stream')


def _show(value) -> str:
  return json.dumps(value) if isinstance(value, str) else str(value)
