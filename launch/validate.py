"""What a launcher accepts: every value checked at start-up, one line naming the flag.

A launcher's values end up where something else parses them: a remote shell (`gcloud ...
ssh --command=`), an sbatch `#SBATCH` directive, a Kubernetes object name, a file name. So
before anything is printed or started:

- no value may hold a control character (a newline, a tab, ESC, DEL, ... or a Unicode
  line/paragraph separator or invisible format character): one would inject lines into
  a shell script or a directive, or hide what a printed command really does;
- names have the shape their consumer requires: DNS labels for TPU VM and JobSet names,
  plain names for Slurm partitions, accounts and job names, Slurm's own time formats;
- values that go into an `#SBATCH` directive are checked against the way sbatch splits
  those lines itself (they cannot be shell-quoted, see `sbatch_directive_value`).

A bad value raises `LaunchError` (a ValueError) whose message starts with the flag; the
launchers print it as one `error: ...` line and exit with status 2. Pure Python: `launch/`
runs without JAX.
"""

from __future__ import annotations

import argparse
import collections
import hashlib
import re
import unicodedata
from collections.abc import Iterable

from launch import topology

# Unicode categories refused anywhere: controls (C0, DEL, C1), invisible format characters
# (e.g. U+202E, which reverses how a printed command reads) and line/paragraph separators.
_REFUSED_CATEGORIES = ('Cc', 'Cf', 'Zl', 'Zp')

# RFC 1035 label, as GCE/TPU resource names and Kubernetes object names require.
_DNS_LABEL = re.compile(r'[a-z]([-a-z0-9]*[a-z0-9])?')
DNS_LABEL_MAX = 63

# A Slurm partition, account or job name as this project writes them.
_PLAIN_NAME = re.compile(r'[A-Za-z0-9][A-Za-z0-9_.-]*')

# sbatch --time: "minutes", "minutes:seconds", "hours:minutes:seconds", "days-hours",
# "days-hours:minutes" and "days-hours:minutes:seconds" (the sbatch manual's list).
_SLURM_TIME = re.compile(r'\d+(:\d+){0,2}|\d+-\d+(:\d+){0,2}')

# Characters sbatch's own #SBATCH line splitter treats specially: whitespace ends the value,
# quotes and backslashes are eaten (differently across Slurm versions), '#' starts a comment.
_SBATCH_SPECIAL = re.compile(r'[\s\'"\\#]')


class LaunchError(ValueError):
  """A launcher value that cannot be used; the message names the flag."""


def _refused_character(value: str) -> str | None:
  for char in value:
    if unicodedata.category(char) in _REFUSED_CATEGORIES:
      return f'U+{ord(char):04X}'
  return None


def text(flag: str, value: str) -> str:
  """Refuses control characters (newlines included) in any value; returns the value."""
  bad = _refused_character(value)
  if bad:
    raise LaunchError(f'{flag} {value!r}: contains the control character {bad}; '
                      f'launcher values must be one line of printable text')
  return value


def all_text(args: argparse.Namespace) -> None:
  """Applies `text` to every string (or list of strings) the command line set.

  Flags are named after their destination (`job_name` -> `--job-name`), as every launcher
  here defines them.
  """
  for dest, value in vars(args).items():
    values = value if isinstance(value, (list, tuple)) else [value]
    for item in values:
      if isinstance(item, str):
        text('--' + dest.replace('_', '-'), item)


def dns_label(flag: str, value: str, *, max_length: int = DNS_LABEL_MAX,
              why: str = '') -> str:
  """A lowercase RFC 1035 label: a-z first, then a-z, 0-9 and '-', not ending in '-'."""
  text(flag, value)
  if not _DNS_LABEL.fullmatch(value):
    raise LaunchError(f'{flag} {value!r}: not a DNS label (lowercase letters, digits and '
                      f"'-', starting with a letter and not ending with '-'), e.g. mm1-3b")
  if len(value) > max_length:
    raise LaunchError(f'{flag} {value!r}: {len(value)} characters, at most {max_length} '
                      f'allowed{why}')
  return value


def plain_name(flag: str, value: str) -> str:
  """Letters, digits, '_', '.' and '-' (a Slurm partition, account or job name)."""
  text(flag, value)
  if not _PLAIN_NAME.fullmatch(value):
    raise LaunchError(f"{flag} {value!r}: expected a plain name (letters, digits, '_', '.', "
                      f"'-'; starting with a letter or digit)")
  return value


def name_list(flag: str, value: str) -> str:
  """A comma-separated list of plain names (sbatch --partition takes several)."""
  for name in value.split(','):
    try:
      plain_name(flag, name)
    except LaunchError:
      raise LaunchError(f"{flag} {value!r}: expected plain names separated by ',' "
                        f"(letters, digits, '_', '.', '-'), e.g. gpu or gpu,gpu-long") from None
  return value


def slurm_time(flag: str, value: str) -> str:
  """A time limit in one of the formats sbatch --time documents."""
  text(flag, value)
  if not _SLURM_TIME.fullmatch(value):
    raise LaunchError(f'{flag} {value!r}: not a Slurm time; use minutes, minutes:seconds, '
                      f'hours:minutes:seconds, days-hours, days-hours:minutes or '
                      f'days-hours:minutes:seconds, e.g. 24:00:00 or 2-00:00:00')
  return value


def sbatch_directive_value(flag: str, value: str) -> str:
  """A value that an `#SBATCH --x=VALUE` line carries through sbatch unchanged.

  sbatch splits directive lines itself: whitespace ends a value, quote characters and
  backslashes are consumed (by rules that differ between Slurm versions and that its manual
  does not document) and '#' starts a comment. Such values cannot be expressed reliably,
  so they are refused rather than written.
  """
  text(flag, value)
  match = _SBATCH_SPECIAL.search(value)
  if match:
    raise LaunchError(f'{flag} {value!r}: {match.group()!r} cannot be written in an #SBATCH '
                      f'directive (sbatch splits on whitespace and treats quotes, '
                      f"backslashes and '#' specially); choose a path without it")
  return value


def tpu_type(flag: str, value: str):
  """The parsed `topology.TpuSlice` of an accelerator type, errors naming the flag."""
  text(flag, value)
  try:
    return topology.parse(value)
  except ValueError as e:
    raise LaunchError(f'{flag}: {e}') from None


def at_least(flag: str, value: int, minimum: int) -> int:
  if value < minimum:
    raise LaunchError(f'{flag}={value}: must be >= {minimum}')
  return value


def derive_dns_labels(names: Iterable[str], *, prefix: str,
                      max_length: int = DNS_LABEL_MAX) -> list[str]:
  """Distinct DNS labels `PREFIX-NAME`, one per name (e.g. one TPU VM per sweep variant).

  Lowercases, turns every run of other characters into '-', and where the result is too
  long or two names would collide, shortens it and appends 6 hex digits of the name's hash.
  `prefix` must itself be a DNS label.
  """
  names = list(names)

  def with_hash(label: str, name: str) -> str:
    digest = hashlib.sha256(name.encode()).hexdigest()[:6]
    return f'{label[:max_length - 7].rstrip("-")}-{digest}'

  labels = []
  for name in names:
    label = re.sub(r'[^a-z0-9]+', '-', f'{prefix}-{name}'.lower()).strip('-')
    labels.append(label if len(label) <= max_length else with_hash(label, name))
  counts = collections.Counter(labels)
  return [with_hash(label, name) if counts[label] > 1 else label
          for label, name in zip(labels, names)]
