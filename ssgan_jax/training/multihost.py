"""Runs over several processes (hosts): start-up, each process's share of a batch, one writer."""
import re
from typing import Optional

import jax
import numpy as np

from ssgan_jax.config import ConfigError


# explicit: the launch flags say everything (one process without them); auto: also
# jax.distributed.initialize's detection of a cluster (Cloud TPU, SLURM, Open MPI, ...).
DISTRIBUTED_MODES = ('explicit', 'auto')


def check_launch(coordinator_address: Optional[str], num_processes: Optional[int],
                 process_id: Optional[int], distributed: str = 'explicit') -> None:
  """Raises ConfigError for launch settings that cannot start (None: left to detection)."""
  if distributed not in DISTRIBUTED_MODES:
    raise ConfigError('distributed', distributed, f'allowed: {", ".join(DISTRIBUTED_MODES)}')
  if distributed == 'auto':
    if num_processes is not None and num_processes < 1:
      raise ConfigError('num_processes', num_processes, 'must be >= 1')
    if coordinator_address:
      _check_address(coordinator_address)
    return
  if num_processes < 1:
    raise ConfigError('num_processes', num_processes, 'must be >= 1')
  if not 0 <= process_id < num_processes:
    raise ConfigError('process_id', process_id,
                      f'must be in [0, {num_processes - 1}] (--num_processes={num_processes})')
  if num_processes > 1 and not coordinator_address:
    raise ConfigError('coordinator_address', coordinator_address,
                      f'required with --num_processes={num_processes}: host:port of process 0')
  if coordinator_address:
    _check_address(coordinator_address)


def _check_address(coordinator_address: str) -> None:
  match = re.fullmatch(r'(.+):(\d+)', coordinator_address)
  if not match or not 0 < int(match.group(2)) < 65536:
    raise ConfigError('coordinator_address', coordinator_address,
                      'must be host:port with a port in [1, 65535]')


def initialize(coordinator_address: Optional[str], num_processes: Optional[int],
               process_id: Optional[int], distributed: str = 'explicit') -> None:
  """Joins the processes of one run; a single explicit process needs nothing. With 'auto',
  jax.distributed.initialize detects what the given settings (None) leave out."""
  if distributed == 'auto' or num_processes > 1:
    jax.distributed.initialize(coordinator_address, num_processes, process_id)


def local_rows(tree_DxN):
  """This process's devices' rows of arrays laid out over all devices (D_global, ...).

  pmap gives process p the global device positions [p * L, (p + 1) * L) for its L local
  devices, so each process trains on its own slice of the same global batch.
  """
  local = jax.local_device_count()
  start = jax.process_index() * local
  return jax.tree.map(lambda x: np.asarray(x[start:start + local]), tree_DxN)


def is_writer() -> bool:
  """Whether this process writes logs and metrics (process 0 does)."""
  return jax.process_index() == 0
