"""Multi-host start-up: join the processes of one job before any JAX computation.

On TPU VMs, GKE and Slurm, `jax.distributed.initialize()` discovers its peers by itself;
`MM1_DISTRIBUTED=auto` asks for exactly that. For local multi-process runs (and tests),
`launch.local` sets MM1_COORDINATOR (host:port), MM1_NUM_PROCESSES and MM1_PROCESS_ID, and
the processes talk over loopback with CPU collectives (gloo).
"""

from __future__ import annotations

import os

import jax


def initialize_from_env() -> bool:
  """Initialises jax.distributed when the environment asks for it; True if it did."""
  mode = os.environ.get('MM1_DISTRIBUTED', '')
  coordinator = os.environ.get('MM1_COORDINATOR')
  if coordinator:
    if jax.config.jax_platforms in (None, '', 'cpu') or os.environ.get('JAX_PLATFORMS') == 'cpu':
      jax.config.update('jax_cpu_collectives_implementation', 'gloo')
    jax.distributed.initialize(
        coordinator_address=coordinator,
        num_processes=int(os.environ['MM1_NUM_PROCESSES']),
        process_id=int(os.environ['MM1_PROCESS_ID']))
    return True
  if mode == 'auto':
    jax.distributed.initialize()
    return True
  return False
