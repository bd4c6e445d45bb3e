"""The shell a TPU VM worker runs: trainings started in the background one after another,
and a log followed with every line prefixed.

Everything here builds a one-line string for `gcloud compute tpus tpu-vm ssh
--command=...`, which the worker's login shell runs. Every value in it is shell-quoted;
a path under the home directory is written `~/'...'`, so the home expands and nothing else
does.

- `start_in_background(script, output)` checks that no other training started this way
  holds the worker (the lock file ~/mm1-train.lock; a TPU runs one training at a time),
  then starts `bash -c SCRIPT` detached from the ssh session, its output appended to
  `output`. Nothing is truncated: a log that exists is appended to, after a banner line.
- `sequence_script(trainings)` takes that lock and runs the trainings in order, each
  appending to its own log. A training whose done-marker file holds its exact command
  finished before and is skipped (re-running a sweep resumes it); the first failure stops
  the sequence, since the other workers of a multi-host slice cannot go on without it.
- `follow_command(log, prefix)` prints a log from its start (following it with `tail -F`
  unless follow=False), each line prefixed by `prefix`. A `while read` loop of the shell
  prefixes the lines: it reads a pipe without buffering and prints each line at once (awk
  would not: Ubuntu's mawk buffers its input and holds lines back), and the prefix is a
  quoted printf argument, never a format or an expression, so any prefix is safe.
"""

from __future__ import annotations

import dataclasses
import posixpath
import shlex
from collections.abc import Sequence

REMOTE_DIR = 'mm1-jax'        # the installed source tree, under the home directory
LOCK = 'mm1-train.lock'       # held by a running training; under the home directory
DEFAULT_LOG = 'mm1-train.log'
BUSY_STATUS = 75              # EX_TEMPFAIL: another training holds the worker


@dataclasses.dataclass(frozen=True)
class Training:
  """One training of a sequence.

  Attributes:
    name: what the progress lines call it (a variant name).
    argv: the training command.
    log: file (under the home directory) its output is appended to; None: the output of
      the whole sequence.
    done_marker: file (under the home directory) written with the command once it
      succeeded; a later sequence skips the training while the file holds the same command.
  """
  name: str
  argv: Sequence[str]
  log: str | None = None
  done_marker: str | None = None


def home_path(path: str) -> str:
  """`path` as one shell word: relative paths (or ~/...) under the home directory, quoted."""
  if path.startswith('/'):
    return shlex.quote(path)
  return '~/' + shlex.quote(path.removeprefix('~/'))


def _display(path: str) -> str:
  return path if path.startswith('/') else f'~/{path.removeprefix("~/")}'


def _mkdir_parent(path: str) -> list[str]:
  parent = posixpath.dirname(path)
  return [f'mkdir -p {home_path(parent)}'] if parent else []


def _say(*words: str) -> str:
  """Prints `words` (each one shell word: quoted text or an expansion) on one line.

  printf, not echo: some shells' echo interprets backslashes in the text.
  """
  return f"printf '{' '.join(['%s'] * len(words))}\\n' {' '.join(words)}"


def _now() -> str:
  return '"$(date -u +%Y-%m-%dT%H:%M:%SZ)"'


def _training_steps(training: Training, index: int, total: int) -> str:
  tag = f'[{index}/{total}] {training.name}'
  command = shlex.join(training.argv)
  redirect = f' >> {home_path(training.log)} 2>&1' if training.log else ''
  banner = _say(_now(), shlex.quote(f'{tag}: start: {command}'))
  success = [_say(_now(), shlex.quote(f'{tag}: finished'))]
  if training.done_marker:
    success.insert(0, f'{_say(shlex.quote(command))} > {home_path(training.done_marker)}')
  failed_tail = '"$status"' + shlex.quote('; the later trainings were not started')
  run = (f'{banner}{redirect}; '
         f'if {command}{redirect} < /dev/null; then {"; ".join(success)}; '
         f'else status=$?; '
         f'{_say(_now(), shlex.quote(f"{tag}: failed with exit status"), failed_tail)}; '
         f'exit "$status"; fi')
  steps = [*(_mkdir_parent(training.log) if training.log else []),
           *(_mkdir_parent(training.done_marker) if training.done_marker else [])]
  if training.done_marker:
    skipped = _say(shlex.quote(f'{tag}: done before (its marker '
                                f'{_display(training.done_marker)} holds this command), skipped'))
    steps.append(f'if [ "$(cat {home_path(training.done_marker)} 2>/dev/null)" = '
                 f'{shlex.quote(command)} ]; then {skipped}; else {run}; fi')
  else:
    steps.append(run)
  return '; '.join(steps)


def sequence_script(trainings: Sequence[Training]) -> str:
  """A bash script (one line) that runs `trainings` one after another under the lock."""
  busy = shlex.quote(f'another training holds ~/{LOCK}; not starting')
  steps = [
      f'exec 9>>{home_path(LOCK)}',
      f'flock -n 9 || {{ {_say(busy)} >&2; exit {BUSY_STATUS}; }}',
      f'cd {home_path(REMOTE_DIR)} || exit 1',
      'export MM1_DISTRIBUTED=auto',
  ]
  steps += [_training_steps(t, i, len(trainings)) for i, t in enumerate(trainings, 1)]
  return '; '.join(steps)


def start_in_background(script: str, output: str) -> str:
  """What ssh runs: refuse if the worker is busy, else start `script` detached."""
  hostname = '"$(hostname)"'
  busy = _say(hostname + shlex.quote(f': a training started by launch.tpu_vm is still '
                                     f'running here (it holds ~/{LOCK}); not starting another'))
  started = _say(hostname + shlex.quote(f': started in the background; output in {_display(output)}'))
  steps = [
      f'flock -n {home_path(LOCK)} true || {{ {busy} >&2; exit {BUSY_STATUS}; }}',
      *_mkdir_parent(output),
  ]
  detached = (f'nohup bash -c {shlex.quote(script)} mm1-launch >> {home_path(output)} 2>&1 '
              f'< /dev/null &')
  return '; '.join(steps) + f'; {detached} {started}'


def follow_command(log: str, prefix: str, *, follow: bool = True) -> str:
  """Prints `log` from its first line (and follows it), each line prefixed by `prefix`."""
  tail = ['tail', '-n', '+1', *(['-F'] if follow else [])]
  # `|| [ -n "$line" ]` keeps a last line that has no newline yet.
  return (f'{shlex.join(tail)} {home_path(log)} | '
          f'while IFS= read -r line || [ -n "$line" ]; do '
          f"printf '%s%s\\n' {shlex.quote(prefix)} \"$line\"; done")
