"""Config mistakes at the entry points end in one line naming the key and exit status 2.

`python -m mm1_jax.train`, `python -m mm1_jax.evaluate` and `python -m data_pipelines.prepare
inspect`: an unknown `--config.KEY`, a value that does not parse, a mesh that does not
divide the devices, a source kind that does not match the data at its path and an empty
(or foreign) data.root. The commands run in-process (their `*_command` functions and
`cli.parse_flags` on a fresh FlagValues); one subprocess per absl command checks the wiring.
"""

import os
import subprocess
import sys

import pytest
from absl import flags
from ml_collections import config_flags

from data_pipelines import prepare
from mm1_jax import cli
from mm1_jax.evaluate import evaluate_command
from mm1_jax.train.__main__ import train_command

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
TINY = os.path.join(REPO, 'experiments', 'tiny.py')


def _one_line_error(capsys, *named) -> str:
  """The command's stderr: exactly one line, `error: ...`, naming each of `named`."""
  err = capsys.readouterr().err
  lines = err.strip().splitlines()
  assert len(lines) == 1 and 'Traceback' not in err, err
  assert all(name in lines[0] for name in named), lines[0]
  return lines[0]


def _exits_2(call, *args, **kwargs):
  with pytest.raises(SystemExit) as exit_info:
    call(*args, **kwargs)
  assert exit_info.value.code == 2


def _user_directory(path):
  path.mkdir(parents=True, exist_ok=True)
  (path / 'notes.txt').write_bytes(b'my own notes\n\x00\xff')
  return path / 'notes.txt'


# ---------------------------------------------------------------------------- flags


@pytest.mark.parametrize('override, named', [
    ('--config.train.stpes=3', ['--config.train.stpes', "config.train has no key 'stpes'",
                                'steps']),
    ('--config.trian.steps=3', ['--config.trian.steps', "config has no key 'trian'"]),
    ('--config.data.sources.captions.kindd=text', ['config.data.sources.captions', 'kindd']),
    ('--config.mesh.data=abc', ['--config.mesh.data=abc']),
    ('--config.train=3', ['--config.train=3']),
])
def test_unknown_key_or_bad_value_on_the_command_line(override, named, monkeypatch, capsys):
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=flag_values)
  argv = ['prog', f'--config={TINY}', override]
  monkeypatch.setattr(sys, 'argv', argv)  # ml_collections reads the overrides from sys.argv
  _exits_2(cli.parse_flags, argv, flag_values)
  assert _one_line_error(capsys, *named).startswith('error: ')


@pytest.mark.parametrize('config, named', [
    ('nope.py', ['--config', 'cannot load the config file', 'nope.py']),
    (f'{TINY}:nope', ['unknown variant', 'nope']),
])
def test_config_file_that_does_not_load(config, named, monkeypatch, capsys):
  flag_values = flags.FlagValues()
  config_flags.DEFINE_config_file('config', None, 'config', flag_values=flag_values)
  argv = ['prog', f'--config={config}']
  monkeypatch.setattr(sys, 'argv', argv)
  _exits_2(cli.parse_flags, argv, flag_values)
  _one_line_error(capsys, *named)


def test_good_flags_parse(monkeypatch):
  flag_values = flags.FlagValues()
  holder = config_flags.DEFINE_config_file('config', None, 'config', flag_values=flag_values)
  argv = ['prog', f'--config={TINY}:smoke', '--config.train.steps=3', 'rest']
  monkeypatch.setattr(sys, 'argv', argv)
  assert cli.parse_flags(argv, flag_values) == ['prog', 'rest']
  assert holder.value.train.steps == 3


@pytest.mark.parametrize('module', ['mm1_jax.train', 'mm1_jax.evaluate'])
def test_the_absl_commands_use_the_one_line_parser(module, tmp_path):
  command = [sys.executable, '-m', module, f'--config={TINY}', f'--workdir={tmp_path}',
             '--config.train.stpes=3']
  result = subprocess.run(command, cwd=REPO, capture_output=True, text=True, timeout=120)
  assert result.returncode == 2
  assert result.stderr.strip().splitlines() == [
      'error: --config.train.stpes: config.train has no key \'stpes\' '
      '(Did you mean "steps" instead of "stpes"?)']


# ---------------------------------------------------------------------------- train


def test_train_mesh_that_does_not_divide_the_devices(smoke_config, tmp_path, capsys):
  smoke_config.mesh.fsdp = 3  # 8 devices
  workdir = tmp_path / 'run'
  _exits_2(train_command, smoke_config, str(workdir))
  _one_line_error(capsys, 'config.mesh', 'fsdp=3', '8 devices')
  assert not workdir.exists()  # checked before anything else


def test_train_source_kind_mismatch(smoke_config, tmp_path, capsys):
  smoke_config.data.sources.captions.kind = 'text'
  _exits_2(train_command, smoke_config, str(tmp_path / 'run'))
  _one_line_error(capsys, 'config.data.sources.captions.kind', 'holds a source of kind captions')


def test_train_source_path_without_a_source(smoke_config, tmp_path, capsys):
  smoke_config.data.sources.text.path = str(tmp_path)
  _exits_2(train_command, smoke_config, str(tmp_path / 'run'))
  _one_line_error(capsys, 'config.data.sources.text.path', 'No complete text source')


def test_train_empty_data_root_leaves_the_current_directory(smoke_config, tmp_path,
                                                            monkeypatch, capsys):
  notes = _user_directory(tmp_path / 'cwd')
  monkeypatch.chdir(tmp_path / 'cwd')
  smoke_config.data.root, smoke_config.data.synthetic = '', True
  _exits_2(train_command, smoke_config, str(tmp_path / 'run'))
  _one_line_error(capsys, 'config.data.root', 'is empty')
  assert os.listdir(tmp_path / 'cwd') == ['notes.txt']
  assert notes.read_bytes() == b'my own notes\n\x00\xff'


def test_train_never_generates_over_a_users_directory(smoke_config, tmp_path, capsys):
  notes = _user_directory(tmp_path / 'mydata')
  smoke_config.data.root, smoke_config.data.synthetic = str(tmp_path / 'mydata'), True
  _exits_2(train_command, smoke_config, str(tmp_path / 'run'))
  _one_line_error(capsys, 'config.data.root', 'mydata', "'notes.txt'", 'data.synthetic=False')
  assert os.listdir(tmp_path / 'mydata') == ['notes.txt']
  assert notes.read_bytes() == b'my own notes\n\x00\xff'


# ---------------------------------------------------------------------------- evaluate


@pytest.fixture
def eval_workdir(smoke_config, tmp_path):
  """A workdir holding only config.json: the start-up checks come before anything else."""
  workdir = tmp_path / 'eval_run'
  workdir.mkdir()
  (workdir / 'config.json').write_text(smoke_config.to_json_best_effort())
  return str(workdir)


def test_evaluate_empty_data_root(eval_workdir, capsys):
  from experiments import tiny
  flag_config = tiny.get_config()
  flag_config.data.root = ''
  _exits_2(evaluate_command, eval_workdir, flag_config, step=0)
  _one_line_error(capsys, 'config.data.root', 'is empty')


def test_evaluate_never_generates_over_a_users_directory(eval_workdir, tmp_path, capsys):
  from experiments import tiny
  notes = _user_directory(tmp_path / 'mydata')
  flag_config = tiny.get_config()
  flag_config.data.root = str(tmp_path / 'mydata')
  _exits_2(evaluate_command, eval_workdir, flag_config, step=0)
  _one_line_error(capsys, 'config.data.root', "'notes.txt'")
  assert os.listdir(tmp_path / 'mydata') == ['notes.txt']
  assert notes.read_bytes() == b'my own notes\n\x00\xff'


# ---------------------------------------------------------------------------- prepare inspect


def _inspect(tmp_path, *lines: str) -> int:
  config_file = tmp_path / 'inspected.py'
  config_file.write_text('from experiments import tiny\n\n\ndef get_config(arg=None):\n'
                         '  config = tiny.get_config(\'smoke\')\n' +
                         ''.join(f'  {line}\n' for line in lines) + '  return config\n')
  return prepare.main(['inspect', '--config', str(config_file), '--rows', '1'])


def test_inspect_source_kind_mismatch(synthetic_root, tmp_path, capsys):
  assert _inspect(tmp_path, f'config.data.root = {synthetic_root!r}',
                  'config.data.synthetic = False',
                  "config.data.sources.interleaved.kind = 'captions'") == 2
  _one_line_error(capsys, 'inspect: error: config.data.sources.interleaved.kind',
                  'holds a source of kind interleaved')


def test_inspect_empty_data_root(tmp_path, monkeypatch, capsys):
  notes = _user_directory(tmp_path / 'cwd')
  monkeypatch.chdir(tmp_path / 'cwd')
  assert _inspect(tmp_path, "config.data.root = ''") == 2
  _one_line_error(capsys, 'config.data.root', 'is empty')
  assert os.listdir(tmp_path / 'cwd') == ['notes.txt'] and notes.read_bytes().startswith(b'my')


def test_inspect_unknown_key_in_the_config_file(tmp_path, capsys):
  assert _inspect(tmp_path, 'config.lock()', 'config.train.stpes = 3') == 2
  _one_line_error(capsys, 'inspected.py', 'stpes', 'steps')
