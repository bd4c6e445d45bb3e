"""metrics.jsonl after a resume holds each step once (later attempts' records of steps past
the checkpoint are set aside, not lost), and readers merge the records of a step."""

import json

from mm1_jax.train import logging_lib


def _write(path, records, tail=''):
  path.write_text(''.join(json.dumps(r) + '\n' for r in records) + tail)


def test_resume_sets_aside_the_steps_after_the_checkpoint(tmp_path):
  first_attempt = [{'step': s, 'loss': 10.0 - s} for s in range(1, 8)]
  evaluated = {'step': 3, 'eval/coco/0shot': 12.5}
  _write(tmp_path / 'metrics.jsonl', first_attempt[:3] + [evaluated] + first_attempt[3:],
         tail='{"step": 8, "lo')  # the line a kill cut short
  assert logging_lib.set_aside_after(str(tmp_path), 6) == 2  # step 7 and the cut line
  writer = logging_lib.MetricWriter(str(tmp_path), tensorboard=False)
  writer.write_config_change(6, {'train.steps': [8, 10]})
  writer.write(7, {'loss': 2.5})
  writer.close()

  records = logging_lib.read_records(str(tmp_path))
  assert [r['step'] for r in records if 'loss' in r] == [1, 2, 3, 4, 5, 6, 7]
  steps = logging_lib.read_steps(str(tmp_path))
  assert steps[3] == {'step': 3, 'loss': 7.0, 'eval/coco/0shot': 12.5}
  assert steps[6] == {'step': 6, 'loss': 4.0, 'config_change': {'train.steps': [8, 10]}}
  assert steps[7]['loss'] == 2.5
  moved = (tmp_path / logging_lib.SUPERSEDED_FILE).read_text().splitlines()
  assert json.loads(moved[0]) == first_attempt[6] and moved[1] == '{"step": 8, "lo'


def test_nothing_to_set_aside_leaves_the_file_alone(tmp_path):
  _write(tmp_path / 'metrics.jsonl', [{'step': 1, 'loss': 1.0}])
  before = (tmp_path / 'metrics.jsonl').stat()
  assert logging_lib.set_aside_after(str(tmp_path), 1) == 0
  assert (tmp_path / 'metrics.jsonl').stat().st_ino == before.st_ino
  assert not (tmp_path / logging_lib.SUPERSEDED_FILE).exists()
  assert logging_lib.set_aside_after(str(tmp_path / 'absent'), 0) == 0
