"""Prepared sources: round trip per kind, pickling, errors, atomicity of writes."""

import os
import pickle
import shutil

import pytest

from data_pipelines import sources

EXAMPLES = {
    'captions': [{'id': f'c{i}', 'image': b'\x89PNG' + bytes([i]), 'caption': f'caption é {i}'}
                 for i in range(7)],
    'interleaved': [{'id': f'd{i}', 'texts': ['intro', '', 'after ü', ''],
                     'images': [b'', b'\x89PNGa' + bytes([i]), b'', b'\xff\xd8b']}
                    for i in range(5)],
    'text': [{'id': f't{i}', 'text': f'line one\nline {i} 日本'} for i in range(6)],
}


@pytest.mark.parametrize('kind', sources.KINDS)
def test_round_trip(tmp_path, kind):
  out = str(tmp_path / kind)
  assert sources.write_source(kind, iter(EXAMPLES[kind]), out, num_shards=2) == out
  source = sources.open_source(out, kind)
  assert (source.kind, source.path, len(source)) == (kind, out, len(EXAMPLES[kind]))
  assert [source[i] for i in range(len(source))] == EXAMPLES[kind]
  assert source[-1] == EXAMPLES[kind][-1]
  with pytest.raises(IndexError):
    source[len(source)]
  assert sources.open_source(out).kind == kind  # kind found without being told
  clone = pickle.loads(pickle.dumps(source))
  assert clone[1] == EXAMPLES[kind][1] and clone.kind == kind


def test_pickle_before_and_after_use(tmp_path):
  out = str(tmp_path / 'text')
  sources.write_source('text', EXAMPLES['text'], out)
  source = sources.open_source(out)
  assert pickle.loads(pickle.dumps(source))[0] == EXAMPLES['text'][0]  # never opened
  source[0]
  assert pickle.loads(pickle.dumps(source))[2] == EXAMPLES['text'][2]  # handle dropped


def test_missing_path(tmp_path):
  missing = str(tmp_path / 'nowhere')
  with pytest.raises(FileNotFoundError, match='nowhere') as error:
    sources.open_source(missing, 'captions')
  assert 'python -m data_pipelines.prepare' in str(error.value)


def test_kind_mismatch(tmp_path):
  out = str(tmp_path / 'text')
  sources.write_source('text', EXAMPLES['text'], out)
  with pytest.raises(ValueError, match='captions') as error:
    sources.open_source(out, 'captions')
  assert out in str(error.value) and 'text' in str(error.value)


def test_unknown_kind(tmp_path):
  with pytest.raises(ValueError, match='videos'):
    sources.write_source('videos', [], str(tmp_path))


@pytest.mark.parametrize('kind,bad', [
    ('captions', {'id': 'x', 'image': b'', 'caption': 'empty image'}),
    ('captions', {'id': 'x', 'image': b'png', 'caption': 3}),
    ('text', {'id': 'x', 'text': 'hi', 'extra': 1}),
    ('interleaved', {'id': 'x', 'texts': ['a', 'b'], 'images': [b'', b'img']}),
    ('interleaved', {'id': 'x', 'texts': ['a'], 'images': []}),
])
def test_bad_example_rejected_and_nothing_left(tmp_path, kind, bad):
  out = str(tmp_path / 'bad')
  with pytest.raises(ValueError, match="'x'"):
    sources.write_source(kind, [bad], out)
  with pytest.raises(FileNotFoundError):
    sources.open_source(out, kind)


def test_existing_source_not_overwritten(tmp_path):
  out = str(tmp_path / 'text')
  sources.write_source('text', EXAMPLES['text'], out)
  with pytest.raises(FileExistsError, match='text'):
    sources.write_source('text', EXAMPLES['text'][:1], out)
  assert len(sources.open_source(out)) == len(EXAMPLES['text'])


def test_incomplete_write_is_not_a_dataset(tmp_path):
  """What a killed write leaves (TFDS's incomplete.* dir) is never opened."""
  done = str(tmp_path / 'done')
  sources.write_source('captions', EXAMPLES['captions'], done)
  killed = tmp_path / 'killed' / 'mm1_captions'
  killed.mkdir(parents=True)
  shutil.copytree(os.path.join(done, 'mm1_captions', '1.0.0'),
                  killed / 'incomplete.AB12CD_1.0.0')
  with pytest.raises(FileNotFoundError, match='killed'):
    sources.open_source(str(tmp_path / 'killed'), 'captions')
  # A later write succeeds, clears the leftover and is opened.
  sources.write_source('captions', EXAMPLES['captions'][:2], str(tmp_path / 'killed'))
  assert os.listdir(killed) == ['1.0.0']
  assert len(sources.open_source(str(tmp_path / 'killed'))) == 2


def test_generator_failure_leaves_nothing(tmp_path):
  def examples():
    yield EXAMPLES['text'][0]
    raise RuntimeError('source broke')

  out = str(tmp_path / 'text')
  with pytest.raises(RuntimeError, match='source broke'):
    sources.write_source('text', examples(), out)
  with pytest.raises(FileNotFoundError):
    sources.open_source(out)
  assert not [n for n in os.listdir(os.path.join(out, 'mm1_text')) if n != '1.0.0']
