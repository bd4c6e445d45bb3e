"""What the absl entry points share: a config mistake ends in one line and exit status 2.

`python -m mm1_jax.train` and `python -m mm1_jax.evaluate` run `app.run(main,
flags_parser=cli.parse_flags)`. absl's own parser prints a flag error over several lines
and exits with 1, and lets the KeyError of an unknown `--config.KEY=` override (raised by
ml_collections deep inside flag parsing) escape as a traceback; a config file that fails to
load surfaces as an OSError at its first use. `parse_flags` turns each into one line that
names the flag or key, `error: ...` on stderr, and exit status 2: the status of every
config mistake (`fail`), also of a ConfigError raised once the command runs.
"""

from __future__ import annotations

import re
import sys
from typing import NoReturn

from absl import flags
from ml_collections.config_flags import config_flags as config_flags_lib

EXIT_CONFIG_ERROR = 2

# `--config.a.b=v`, `-config.a.b v` or `--noconfig.a.b`: (flag name, dotted key).
_OVERRIDE = re.compile(r'^--?(?:no)?([A-Za-z_][\w-]*)\.([^=\s]+)')


def fail(message) -> NoReturn:
  """Prints `error: MESSAGE` (one line) to stderr and exits with EXIT_CONFIG_ERROR."""
  text = ' '.join(str(message).split())  # one line, whatever the message held
  print(f'error: {text}', file=sys.stderr)
  sys.exit(EXIT_CONFIG_ERROR)


def _lines(text) -> list[str]:
  return [line.strip() for line in str(text).splitlines() if line.strip()] or ['']


def _one_line(text) -> str:
  """The first and the last line of a multi-line message (a traceback's last is the error)."""
  lines = _lines(text)
  return lines[0] if len(lines) == 1 else f'{lines[0]} {lines[-1]}'


def _missing_key(error: BaseException) -> tuple[str, str] | None:
  """(key, hint) of ml_collections' KeyError for a missing field, found in `error`'s chain."""
  while error is not None and not isinstance(error, KeyError):
    wrapped = error.args[0] if error.args else None
    error = wrapped if isinstance(wrapped, BaseException) else error.__context__
  if error is None or not error.args:
    return None
  message = error.args[0]
  while isinstance(message, BaseException) and message.args:
    message = message.args[0]
  first, _, rest = str(message).partition('\n')
  return first.strip('\'"'), ' '.join(rest.split())


def _unknown_override(argv, error: BaseException) -> str | None:
  """The one-line message for an override of a key the config does not have, or None."""
  missing = _missing_key(error)
  if missing is None:
    return None
  key, hint = missing
  for arg in argv[1:]:
    match = _OVERRIDE.match(arg)
    if match and key in match.group(2).split('.'):
      flag, path = match.groups()
      parts = path.split('.')
      parent = '.'.join([flag] + parts[:parts.index(key)])
      return (f'--{flag}.{path}: {parent} has no key {key!r}' +
              (f' ({hint})' if hint else ''))
  return None


def _check_config_files_loaded(flag_values: flags.FlagValues) -> None:
  """A config file that failed to load (a missing file) parses as a placeholder that raises
  OSError on first use: fail now, naming the flag."""
  for name in list(flag_values):
    flag = flag_values[name]
    if isinstance(flag.parser, config_flags_lib.ConfigFileFlagParser) and flag.value is not None:
      try:
        flag.value.keys  # pylint: disable=pointless-statement
      except OSError as error:
        fail(f'--{name}: cannot load the config file: {_lines(error)[-1]}')


def parse_flags(argv: list[str], flag_values: flags.FlagValues = flags.FLAGS) -> list[str]:
  """`app.run`'s flags_parser: parses `argv` into `flag_values`; any mistake calls `fail`.

  Returns the arguments that are not flags (with the program name), as absl's does.
  """
  try:
    remaining = flag_values(argv)
  except flags.Error as error:  # a value that does not parse, an unknown flag, a bad config
    fail(_one_line(error))
  except OSError as error:  # a config file that cannot be loaded, with overrides
    fail(f'cannot load the config file: {_lines(error)[-1]}')
  except (KeyError, AttributeError) as error:  # an override of an unknown key
    message = _unknown_override(argv, error)
    if message is None:
      raise
    fail(message)
  _check_config_files_loaded(flag_values)
  return remaining
