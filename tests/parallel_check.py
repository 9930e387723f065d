"""Trains a few steps on 4 fake CPU devices with each parallel setting and prints, as JSON, how
much the update of each differs from pmap's on 4 devices with one plain step per call; or,
with the argument `one_device`, how much one step on 1 device differs from one on 4, for the
MLP with kplus1 and minibatch discrimination and for ResNet-18.

The steps update with plain SGD, not the trainer's Adam: that Adam adds its epsilon (1e-8)
inside the square root, so it multiplies a change in a gradient element near 1e-4 by up to
1e4, and the last-bit differences of another summation order grow to percents of the
parameters within a few steps. Updates are compared as wholes (global norms, relative to the
reference's update): G's batch-norm biases have gradients so small that they are mostly
rounding, which an element-wise measure would report instead of the computation.

One device against four is compared after one step: on these 20 random images even SGD
training is ill-conditioned (measured: a 1e-7 relative change of D's and G's initial weights
changes the MLP's G update by 2e-3 after four steps, and the conv model's D update by 7e-4
and G update by 7e-3 after one), so a longer run would measure rounding growth, not whether
the device count changes the computation.

Run by tests/test_parallel.py in a subprocess: the devices must be requested before JAX starts.
"""
import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                           + ' --xla_force_host_platform_device_count=4')

import dataclasses  # pylint: disable=g-import-not-at-top
import functools
import json
import sys

import flax.jax_utils
import jax
import numpy as np
import optax

from ssgan_jax.data import input_pipeline
from ssgan_jax.training import parallel, train
from ssgan_jax.config import Config

# Same 4 devices, other settings; 4 steps. (shard_map on its own is the last one's step.) Each compiles once: 4 steps with a log every 2
# make two calls of 2 steps when calls scan.
VARIANTS = {
    'scan_2_steps_data_on_device': dict(steps_per_dispatch=2, data_on_device=True,
                                        donate_state=False),
    'shard_map_scan_2_steps_data_on_device': dict(parallel='shard_map', steps_per_dispatch=2,
                                                  data_on_device=True, donate_state=False),
}
ALL_FIELDS = ('disc_params', 'gen_params', 'gen_batch_stats')
# One step on 4 devices against one on 1, with minibatch features in groups smaller than a
# device's share: (config changes, dataset info, the state compared).
ONE_DEVICE_CASES = {
    'mlp_kplus1_minibatch': (dict(unsup_loss='kplus1', minibatch_kernels=3,
                                  minibatch_kernel_dim=2, minibatch_group_size=2),
                             input_pipeline.DatasetInfo(10, (28, 28, 1), None), ALL_FIELDS),
    # For ResNet-18, batch norm in D takes each kind of image's statistics over the global
    # group, on one device as on four: D's parameters and both players' batch-norm averages
    # are compared, not G's parameters (measured: D within 1e-5, G's averages 1e-7, G's
    # parameters 4e-3; see above).
    'resnet18': (dict(model='resnet18', gen_loss='nonsaturating', batch_size=8),
                 input_pipeline.DatasetInfo(2, (32, 32, 3), None),
                 ('disc_params', 'disc_constants', 'gen_batch_stats')),
}
MNIST_INFO = input_pipeline.DatasetInfo(10, (28, 28, 1), None)


def max_relative_difference(a, b) -> float:
  diffs = jax.tree.leaves(jax.tree.map(
      lambda x, y: float(np.max(np.abs(x - y)) / (np.max(np.abs(y)) + 1e-12)), a, b))
  return max(diffs)


def sgd_setup(config: Config, info) -> train.Setup:
  return dataclasses.replace(train.Setup.create(config, info),
                             optimizer=optax.sgd(config.learning_rate),
                             gen_optimizer=optax.sgd(config.learning_rate))


def train_with(config: Config, data, initial_state, num_devices: int,
               info=MNIST_INFO) -> train.TrainState:
  setup = sgd_setup(config, info)
  trainer = parallel.DataParallelTrainer(functools.partial(train.train_step, setup), config,
                                         data, train.AXIS, jax.local_devices()[:num_devices])
  state, step, chunks = trainer.replicate(initial_state), 0, trainer.chunks(0)
  while step < config.num_steps:
    step += trainer.steps_in_call(step)
    state, _ = trainer(state, next(chunks))
  return jax.device_get(flax.jax_utils.unreplicate(state))


def random_data(image_shape: tuple) -> input_pipeline.SemiSupervisedData:
  rng = np.random.default_rng(0)
  images = lambda n: rng.integers(0, 256, (n, *image_shape), dtype=np.uint8)
  return input_pipeline.SemiSupervisedData(
      labeled_images=images(20), labeled_labels=np.arange(20, dtype=np.int32) % 10,
      unlabeled_images=images(40), validation_images=images(0),
      validation_labels=np.zeros(0, np.int32), test_images=images(0),
      test_labels=np.zeros(0, np.int32))


def update_difference(state: train.TrainState, reference: train.TrainState,
                      initial: train.TrainState, fields: tuple = ALL_FIELDS) -> float:
  """The largest, over `fields` (by default D's and G's parameters and G's batch
  statistics), of |state - reference| / |reference - initial| (global norms)."""
  def relative(field: str) -> float:
    a, b, start = (getattr(s, field) for s in (state, reference, initial))
    return float(optax.tree.norm(jax.tree.map(np.subtract, a, b))
                 / optax.tree.norm(jax.tree.map(np.subtract, b, start)))
  return max(relative(field) for field in fields)


def one_device_differences(config: Config, cases: dict) -> dict:
  """For each case, how far its parameters moved in one step on 4 devices, and how far one
  step on 1 device is from that."""
  result = {}
  for name, (changes, info, fields) in cases.items():
    case, data = config.replace(num_steps=1, **changes), random_data(info.image_shape)
    initial = train.create_train_state(sgd_setup(case, info), data.unlabeled_images[:16])
    four = train_with(case, data, initial, 4, info)
    result[f'{name}_moved'] = max_relative_difference(four.disc_params, initial.disc_params)
    result[f'{name}_one_device'] = update_difference(train_with(case, data, initial, 1, info),
                                                    four, initial, fields)
  return result


def main(args: list[str]) -> None:
  assert jax.local_device_count() == 4, jax.devices()
  config = Config(batch_size=16, learning_rate=0.01, num_steps=4, log_every=2)
  if args == ['one_device']:
    print(json.dumps(one_device_differences(config, ONE_DEVICE_CASES)))
    return
  # Two G updates in the first three steps and one in the last: the second update sits in a
  # conditional, with its collectives, under each setting, and stops inside a scanned call.
  config = config.replace(gen_steps=2, gen_steps_until=3)
  data = random_data(MNIST_INFO.image_shape)
  initial = train.create_train_state(sgd_setup(config, MNIST_INFO),
                                     data.unlabeled_images[:16])
  reference = train_with(config, data, initial, 4)
  result = {'moved': max_relative_difference(reference.disc_params, initial.disc_params)}
  for name, changes in VARIANTS.items():
    result[name] = update_difference(
        train_with(config.replace(**changes), data, initial, 4), reference, initial)
  print(json.dumps(result))


if __name__ == '__main__':
  main(sys.argv[1:])
