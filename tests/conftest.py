"""Shared test set-up.

Eight fake CPU devices for every test process: XLA_FLAGS must be set before JAX is
imported, so it is done here, at collection time.
"""

import os

os.environ.setdefault('XLA_FLAGS', '--xla_force_host_platform_device_count=8')
os.environ.setdefault('JAX_PLATFORMS', 'cpu')
