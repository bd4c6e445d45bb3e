"""The prepare CLI end to end, in a subprocess."""

import os
import subprocess
import sys

import pytest

from data_pipelines import images
from data_pipelines import prepare
from data_pipelines import sources
from data_pipelines import synthetic

REPO_ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


def _prepare(*args):
  return subprocess.run([sys.executable, '-m', 'data_pipelines.prepare', *args],
                        cwd=REPO_ROOT, capture_output=True, text=True, timeout=120)


def test_synthetic_end_to_end(tmp_path):
  out = str(tmp_path / 'world')
  result = _prepare('synthetic', '--out', out, '--seed', '5', '--scale', '0.01')
  assert result.returncode == 0, result.stderr
  assert synthetic.is_complete(out) and synthetic.read_world(out)['seed'] == 5
  assert len(sources.open_source(os.path.join(out, 'captions'), 'captions')) > 0

  again = _prepare('synthetic', '--out', out, '--scale', '0.01')
  assert again.returncode == 1
  assert '--force' in again.stderr and 'Traceback' not in again.stderr

  forced = _prepare('synthetic', '--out', out, '--seed', '6', '--scale', '0.01', '--force')
  assert forced.returncode == 0, forced.stderr
  assert synthetic.read_world(out)['seed'] == 6
  assert os.listdir(tmp_path) == ['world']  # temporary directories cleaned up


@pytest.mark.parametrize('args,message', [
    (['synthetic', '--out', 'x', '--scale', 'big'], '--scale'),
    (['synthetic', '--out', 'x', '--scale', '0'], '--scale'),
    (['synthetic'], '--out'),
    (['frobnicate'], 'frobnicate'),
])
def test_bad_arguments(args, message, capsys):
  with pytest.raises(SystemExit) as exit_info:
    prepare.main(args)
  assert exit_info.value.code == 2
  assert message in capsys.readouterr().err


def test_bad_argument_subprocess():
  result = _prepare('synthetic', '--out', 'x', '--seed', 'notanumber')
  assert result.returncode == 2
  assert '--seed' in result.stderr and 'Traceback' not in result.stderr


def test_out_is_a_file(tmp_path, capsys):
  path = tmp_path / 'file'
  path.write_text('x')
  assert prepare.main(['synthetic', '--out', str(path), '--scale', '0.01']) == 1
  assert str(path.name) in capsys.readouterr().err


@pytest.mark.parametrize('force', [[], ['--force']])
def test_synthetic_never_replaces_a_users_directory(tmp_path, capsys, force):
  (tmp_path / 'mine').mkdir()
  (tmp_path / 'mine' / 'notes.txt').write_bytes(b'mine\x00')
  assert prepare.main(['synthetic', '--out', str(tmp_path / 'mine'), '--scale', '0.01',
                       *force]) == 1
  assert "'notes.txt'" in capsys.readouterr().err
  assert os.listdir(tmp_path / 'mine') == ['notes.txt']
  assert (tmp_path / 'mine' / 'notes.txt').read_bytes() == b'mine\x00'


def test_synthetic_refuses_an_empty_out(tmp_path, monkeypatch, capsys):
  (tmp_path / 'notes.txt').write_text('mine')
  monkeypatch.chdir(tmp_path)
  assert prepare.main(['synthetic', '--out', '', '--scale', '0.01']) == 1
  assert 'empty path' in capsys.readouterr().err
  assert os.listdir(tmp_path) == ['notes.txt']


_IMPORTER_ARGS = {'webdataset': ['--input', 'x.tar'], 'interleaved': ['--input', 'x.jsonl'],
                  'coco': ['--annotations', 'a.json', '--images', 'dir']}


@pytest.mark.parametrize('command', sorted(_IMPORTER_ARGS))
def test_importers_take_max_image_pixels(command, capsys):
  parse = prepare.build_parser().parse_args
  args = parse([command, *_IMPORTER_ARGS[command], '--out', 'o'])
  assert args.max_image_pixels == images.DEFAULT_MAX_IMAGE_PIXELS
  args = parse([command, *_IMPORTER_ARGS[command], '--out', 'o', '--max-image-pixels', '0'])
  assert args.max_image_pixels == 0  # no bound
  with pytest.raises(SystemExit) as exit_info:
    parse([command, *_IMPORTER_ARGS[command], '--out', 'o', '--max-image-pixels', '-1'])
  assert exit_info.value.code == 2 and '--max-image-pixels' in capsys.readouterr().err
