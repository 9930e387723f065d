"""Data-parallel train steps: pmap or shard_map, several steps per dispatch, data on device.

Both backends run the same per-device step with pmap's layout: every argument and result
has a leading axis with one entry per device (the state replicated, batches sharded) and
collectives name the same axis, so replication, prefetching and evaluation are shared.
"""
import functools
from typing import Callable, Iterator, Optional, Sequence

from absl import logging
import flax.jax_utils
import jax
import numpy as np

from ssgan_jax.data import input_pipeline
from ssgan_jax.training import multihost
from ssgan_jax.config import Config

# The per-device step differentiates through collectives (G's batch norm and feature
# matching average over devices). Without replication checking, shard_map transposes them
# as pmap does, so per-device gradients, after their lax.pmean, are the global ones.
try:
  _shard_map = functools.partial(jax.shard_map, check_vma=False)
except AttributeError:  # older jax has it only in jax.experimental
  from jax.experimental import shard_map as _experimental  # pylint: disable=g-import-not-at-top
  _shard_map = functools.partial(_experimental.shard_map, check_rep=False)

# The largest share of a device's memory the train images may take when kept on it.
DEVICE_DATA_FRACTION = 0.25


def distribute(per_device_fn: Callable, mode: str, devices: Optional[Sequence[jax.Device]],
               axis_name: str, donate_argnums: tuple = ()) -> Callable:
  """`per_device_fn` run on every device over the arguments' leading device axis.

  mode: `pmap`, or `shard_map` (the same program under jit over a 1-D mesh whose axis is
  `axis_name`; each device gets its block without the device axis, as under pmap).
  devices: None for all devices of all processes.
  """
  if mode == 'pmap':
    return jax.pmap(per_device_fn, axis_name=axis_name, devices=devices,
                    donate_argnums=donate_argnums)
  sharding = stacked_sharding(devices or jax.devices(), axis_name)

  def device_block(*args):
    results = per_device_fn(*jax.tree.map(lambda x: x[0], args))
    return jax.tree.map(lambda x: x[None], results)

  return jax.jit(_shard_map(device_block, mesh=sharding.mesh, in_specs=sharding.spec,
                            out_specs=sharding.spec),
                 donate_argnums=donate_argnums)


def stacked_sharding(devices: Sequence[jax.Device], axis_name: str) -> jax.sharding.Sharding:
  """The leading axis split over `devices`: how `distribute`'s results are laid out."""
  mesh = jax.sharding.Mesh(np.asarray(devices), (axis_name,))
  return jax.sharding.NamedSharding(mesh, jax.sharding.PartitionSpec(axis_name))


def replicate(tree, sharding: jax.sharding.Sharding):
  """A copy of the host `tree` for every device of `sharding`, stacked on a leading axis.

  Laid out as the step's results are, so that feeding results back in does not compile the
  step a second time. This process places the copies on its own devices.
  """
  num_devices = len(sharding.device_set)

  def put(x):
    x = np.asarray(x)[None]
    return jax.make_array_from_single_device_arrays(
        (num_devices, *x.shape[1:]), sharding,
        [jax.device_put(x, d) for d in sharding.addressable_devices])

  return jax.tree.map(put, tree)


def scan_steps(step_fn: Callable, gather: bool) -> Callable:
  """(state, chunk[, arrays]) -> (state, metrics of each step): one `step_fn` per entry
  of the chunk's leading axis, in a lax.scan. With `gather` the chunk holds batch indices
  (input_pipeline.train_indices) into `arrays`, and each batch is gathered on the device.
  """
  def steps(state, chunk, arrays=None):
    def one_step(state, item):
      return step_fn(state, input_pipeline.gather_batch(arrays, item) if gather else item)
    return jax.lax.scan(one_step, state, chunk)
  return steps


def fits_on_device(num_bytes: int, device: jax.Device) -> bool:
  """Whether `num_bytes` take at most DEVICE_DATA_FRACTION of the device's memory.

  Devices that do not report their memory (CPU) share the host's, and always fit.
  """
  stats = device.memory_stats() or {}
  limit = stats.get('bytes_limit')
  return limit is None or num_bytes <= DEVICE_DATA_FRACTION * limit


def dispatch_size(config: Config, step: int) -> int:
  """Steps in the call that starts after `step`: at most steps_per_dispatch, and none past
  the next step where the loop logs, evaluates or saves, or past the last step."""
  boundaries = [config.log_every, config.eval_every, config.checkpoint_every]
  boundaries += [config.sample_every] if config.sample_every else []
  to_boundary = min(every - step % every for every in boundaries)
  remaining = config.num_steps - step
  return min(config.steps_per_dispatch, to_boundary, remaining if remaining > 0 else to_boundary)


def shard_steps(x_NxB: np.ndarray, num_devices: int) -> np.ndarray:
  """(steps, global batch, ...) -> (devices, steps, batch per device, ...)."""
  n, b = x_NxB.shape[:2]
  return np.swapaxes(x_NxB.reshape((n, num_devices, b // num_devices) + x_NxB.shape[2:]), 0, 1)


class DataParallelTrainer:
  """The train step of `config` on `devices` (default: all, of every process), fed from the
  host's batch order; each process feeds its own devices' rows of every global batch.

  Calls take the replicated state and the next item of `chunks(...)` and advance
  `dispatch_size(config, step)` steps; metrics have a leading device axis (and a steps
  axis when a call scans several steps).
  """

  def __init__(self, step_fn: Callable, config: Config,
               data: input_pipeline.SemiSupervisedData, axis_name: str,
               devices: Optional[Sequence[jax.Device]] = None):
    self.config, self.data, self.axis_name = config, data, axis_name
    self.program_devices = devices
    # Where this process's arrays go; the program itself spans `devices` or all processes'.
    self.devices = list(devices or jax.local_devices())
    self.num_devices = len(devices) if devices else jax.device_count()
    self.sharding = stacked_sharding(devices or jax.devices(), axis_name)
    arrays = input_pipeline.train_arrays(data)
    self.on_device = config.data_on_device
    if self.on_device:
      num_bytes = sum(a.nbytes for a in arrays.values())
      if not fits_on_device(num_bytes, self.devices[0]):
        logging.warning('Train images (%d MB) do not fit on the device; batches come from '
                        'the host.', num_bytes // 2**20)
        self.on_device = False
    self.arrays = self.replicate(arrays) if self.on_device else None
    # One plain step per call unless a call scans several or gathers its batch.
    self.scans = self.on_device or config.steps_per_dispatch > 1
    per_device = scan_steps(step_fn, self.on_device) if self.scans else step_fn
    self.fn = distribute(per_device, config.parallel, devices, axis_name,
                         (0,) if config.donate_state else ())

  def distribute(self, per_device_fn: Callable) -> Callable:
    """Another per-device function (evaluation) on the train step's devices and backend."""
    return distribute(per_device_fn, self.config.parallel, self.program_devices, self.axis_name)

  def replicate(self, tree):
    """The host `tree` (a train state) on every device, as the calls take and return it."""
    return replicate(tree, self.sharding)

  def steps_in_call(self, step: int) -> int:
    """How many steps the call that starts after `step` advances."""
    return dispatch_size(self.config, step) if self.scans else 1

  def arguments(self, state, chunk) -> tuple:
    return (state, chunk) if self.arrays is None else (state, chunk, self.arrays)

  def __call__(self, state, chunk):
    return self.fn(*self.arguments(state, chunk))

  def host_chunks(self, start_step: int) -> Iterator[dict]:
    """Host arrays for the calls from start_step on: batches, or indices with data on device."""
    arrays = input_pipeline.train_arrays(self.data)
    items = (indices if self.on_device else input_pipeline.gather_batch(arrays, indices)
             for indices in input_pipeline.train_indices(self.data, self.config, start_step))
    step = start_step
    while True:
      size = self.steps_in_call(step)
      group = [next(items) for _ in range(size)]
      if self.scans:
        chunk = jax.tree.map(lambda *x: shard_steps(np.stack(x), self.num_devices), *group)
      else:
        chunk = jax.tree.map(lambda x: input_pipeline.shard(x, self.num_devices), group[0])
      yield multihost.local_rows(chunk)
      step += size

  def chunks(self, start_step: int) -> Iterator[dict]:
    """host_chunks, placed on the devices two calls ahead."""
    return flax.jax_utils.prefetch_to_device(self.host_chunks(start_step), 2, self.devices)
