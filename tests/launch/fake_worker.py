"""A TPU VM worker played locally: what `gcloud ... ssh --command=X` would run, run here.

`remote_of(gcloud_line)` parses a printed gcloud command (shlex) and returns its --command
string; `FakeWorker` is a home directory with ~/mm1-jax and a `python3` on PATH that
records each training it is asked to run (argv, start and end) instead of training.
Every subprocess has a timeout.
"""

from __future__ import annotations

import os
import shlex
import subprocess
import time

TIMEOUT = 30

# Stands in for `python3 -m mm1_jax.train ...`: prints its argv, records start and end in
# $FAKE_RECORD, and waits while $FAKE_HOLD exists (so a test can try a second start).
_FAKE_PYTHON = '''#!/bin/bash
printf 'start %s\\n' "$*" >> "$FAKE_RECORD"
printf 'training output of %s\\n' "$*"
printf '%s\\0' "$@" > "$FAKE_RECORD.argv.$$"
for _ in $(seq 300); do [ -e "$FAKE_HOLD" ] || break; sleep 0.05; done
printf 'end %s\\n' "$*" >> "$FAKE_RECORD"
exit "${FAKE_STATUS:-0}"
'''


def remote_of(gcloud_argv: list[str]) -> str:
  """The --command string of a parsed gcloud ssh command line."""
  assert gcloud_argv[:5] == ['gcloud', 'compute', 'tpus', 'tpu-vm', 'ssh'], gcloud_argv
  (remote,) = [a.removeprefix('--command=') for a in gcloud_argv if a.startswith('--command=')]
  return remote


def bash_syntax_ok(script: str) -> None:
  """`bash -n`: the script parses."""
  result = subprocess.run(['bash', '-n', '-c', script], capture_output=True, text=True,
                          timeout=TIMEOUT)
  assert result.returncode == 0, result.stderr


def shell_words(script: str) -> list[str]:
  """The words of a shell line, with ; | & < > as words of their own (shlex, posix)."""
  lexer = shlex.shlex(script, posix=True, punctuation_chars=True)
  lexer.whitespace_split = True
  return list(lexer)


def inner_script(remote: str) -> str:
  """The script a remote start command hands to `nohup bash -c SCRIPT`."""
  words = shell_words(remote)
  at = words.index('nohup')
  assert words[at + 1:at + 3] == ['bash', '-c'], words[at:at + 3]
  return words[at + 3]


class FakeWorker:
  """A worker's home directory and environment under `root`."""

  def __init__(self, root):
    self.home = root / 'home'
    (self.home / 'mm1-jax').mkdir(parents=True)
    bin_dir = root / 'bin'
    bin_dir.mkdir()
    python = bin_dir / 'python3'
    python.write_text(_FAKE_PYTHON)
    python.chmod(0o755)
    self.record = root / 'record'
    self.hold = root / 'hold'
    self.env = dict(os.environ, HOME=str(self.home), PATH=f'{bin_dir}:{os.environ["PATH"]}',
                    FAKE_RECORD=str(self.record), FAKE_HOLD=str(self.hold))

  def run(self, remote: str, **env) -> subprocess.CompletedProcess:
    """Runs `remote` as the worker's shell would, with its output captured."""
    return subprocess.run(['bash', '-c', remote], env={**self.env, **env}, capture_output=True,
                          text=True, timeout=TIMEOUT)

  def records(self) -> list[str]:
    return self.record.read_text().splitlines() if self.record.exists() else []

  def trainings_argv(self) -> list[list[str]]:
    """The argv of each fake training, in the order they started."""
    paths = sorted(self.record.parent.glob('record.argv.*'), key=os.path.getmtime)
    return [p.read_bytes().decode().split('\0')[:-1] for p in paths]

  def wait_for(self, predicate, what: str, timeout: float = TIMEOUT) -> None:
    deadline = time.monotonic() + timeout
    while not predicate():
      assert time.monotonic() < deadline, f'timed out waiting for {what}'
      time.sleep(0.05)

  def wait_unlocked(self) -> None:
    """Waits until the background sequence released the worker's lock."""
    lock = self.home / 'mm1-train.lock'

    def free():
      return subprocess.run(['flock', '-n', str(lock), 'true'], timeout=TIMEOUT).returncode == 0
    self.wait_for(free, 'the background trainings to finish')
