"""Runs one job as several local processes, the way a multi-host job runs on a pod.

    python -m launch.local --processes 2 --devices-per-process 4 -- \
        python -m mm1_jax.train --config=experiments/tiny.py --workdir=/tmp/mm1_2x4

Each process gets MM1_COORDINATOR (127.0.0.1 and a free port), MM1_NUM_PROCESSES and
MM1_PROCESS_ID, which `mm1_jax.parallel.distributed` turns into
`jax.distributed.initialize` over loopback (CPU collectives), and XLA_FLAGS asking for
`--devices-per-process` CPU devices. Process 0's output passes through; the others' lines
are prefixed with their index. SIGTERM and SIGINT are forwarded to every process (so a
preemption test sees what a pod would), and when one process fails the rest are stopped:
a lone survivor would wait forever in a collective. The exit status is the first
failing process's, else 0.

This module imports no JAX: it only starts processes.
"""

from __future__ import annotations

import argparse
import os
import signal
import socket
import subprocess
import sys
import threading
import time

# How long the others get to exit after one process failed, before they are killed.
_GRACE_SECONDS = 10.0


def free_port() -> int:
  with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
    s.bind(('127.0.0.1', 0))
    return s.getsockname()[1]


def process_environment(base: dict[str, str], *, coordinator: str, num_processes: int,
                        process_id: int, devices_per_process: int) -> dict[str, str]:
  """The environment of process `process_id`: the MM1_* variables and the CPU devices."""
  env = dict(base)
  flags = [f for f in env.get('XLA_FLAGS', '').split()
           if not f.startswith('--xla_force_host_platform_device_count')]
  flags.append(f'--xla_force_host_platform_device_count={devices_per_process}')
  env.update(
      XLA_FLAGS=' '.join(flags),
      JAX_PLATFORMS=env.get('JAX_PLATFORMS', 'cpu'),
      MM1_COORDINATOR=coordinator,
      MM1_NUM_PROCESSES=str(num_processes),
      MM1_PROCESS_ID=str(process_id),
  )
  return env


def _relay(stream, prefix: str, out) -> None:
  for line in iter(stream.readline, b''):
    out.buffer.write(prefix.encode() + line)
    out.flush()
  stream.close()


def _start(command: list[str], env: dict[str, str], process_id: int):
  if process_id == 0:
    return subprocess.Popen(command, env=env), []
  proc = subprocess.Popen(command, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
  relays = [threading.Thread(target=_relay, args=(stream, f'[{process_id}] ', out), daemon=True)
            for stream, out in ((proc.stdout, sys.stdout), (proc.stderr, sys.stderr))]
  for relay in relays:
    relay.start()
  return proc, relays


def run(command: list[str], *, processes: int, devices_per_process: int,
        port: int | None = None) -> int:
  """Runs `command` as `processes` joined processes; returns the job's exit status."""
  if processes < 1 or devices_per_process < 1:
    raise ValueError('--processes and --devices-per-process must be at least 1')
  coordinator = f'127.0.0.1:{port or free_port()}'
  started = []
  for process_id in range(processes):
    env = process_environment(os.environ, coordinator=coordinator, num_processes=processes,
                              process_id=process_id, devices_per_process=devices_per_process)
    started.append(_start(command, env, process_id))
  procs = [proc for proc, _ in started]

  def forward(signum, frame):
    del frame
    for proc in procs:
      if proc.poll() is None:
        proc.send_signal(signum)

  previous = {sig: signal.signal(sig, forward) for sig in (signal.SIGTERM, signal.SIGINT)}
  try:
    status = _wait_all(procs)
  finally:
    for sig, handler in previous.items():
      signal.signal(sig, handler)
    for _, relays in started:
      for relay in relays:
        relay.join(timeout=5)
  return status


def _wait_all(procs) -> int:
  """Waits for every process; once one fails, the others get a grace period, then SIGKILL."""
  failed_at = None
  status = 0
  while any(proc.poll() is None for proc in procs):
    for proc in procs:
      code = proc.poll()
      if code not in (None, 0) and failed_at is None:
        failed_at, status = time.monotonic(), code
        for other in procs:
          if other.poll() is None:
            other.terminate()
    if failed_at is not None and time.monotonic() - failed_at > _GRACE_SECONDS:
      for proc in procs:
        if proc.poll() is None:
          proc.kill()
    time.sleep(0.05)
  if status == 0:
    status = next((proc.returncode for proc in procs if proc.returncode), 0)
  return status


def main(argv: list[str] | None = None) -> int:
  parser = argparse.ArgumentParser(
      prog='python -m launch.local',
      description='Run a command as several local processes joined by jax.distributed.')
  parser.add_argument('--processes', type=int, default=2)
  parser.add_argument('--devices-per-process', type=int, default=1)
  parser.add_argument('--port', type=int, default=None,
                      help='coordinator port on 127.0.0.1 (default: a free one)')
  parser.add_argument('command', nargs=argparse.REMAINDER,
                      help='the command to run, after --')
  args = parser.parse_args(argv)
  command = args.command[1:] if args.command[:1] == ['--'] else args.command
  if not command:
    parser.error('no command given (put it after --)')
  return run(command, processes=args.processes, devices_per_process=args.devices_per_process,
             port=args.port)


if __name__ == '__main__':
  sys.exit(main())
