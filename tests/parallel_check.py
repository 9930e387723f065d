"""Trains a few steps on 4 fake CPU devices with each parallel setting, and on 1 device; prints
the largest relative parameter difference of each from pmap on 4 devices with one plain step
per call, as JSON. Then the same, 4 devices against 1, for the conv model and the kplus1 and
two_head heads with minibatch discrimination.

Run by tests/test_parallel.py in a subprocess: the devices must be requested before JAX starts.
"""
import os

os.environ['XLA_FLAGS'] = (os.environ.get('XLA_FLAGS', '')
                           + ' --xla_force_host_platform_device_count=4')

import functools  # pylint: disable=g-import-not-at-top
import json

import flax.jax_utils
import jax
import numpy as np

from ssgan_jax import input_pipeline, parallel, train
from ssgan_jax.config import Config

# Each compiles once: 4 steps with a log every 2 make two calls of 2 steps when calls scan.
VARIANTS = {
    'one_device': ({}, 1),
    'shard_map': (dict(parallel='shard_map'), 4),
    'scan_2_steps_data_on_device': (dict(steps_per_dispatch=2, data_on_device=True,
                                         donate_state=False), 4),
    'shard_map_scan_2_steps_data_on_device': (dict(parallel='shard_map', steps_per_dispatch=2,
                                                   data_on_device=True, donate_state=False), 4),
}
# Models and heads trained on 4 devices and on 1, with minibatch features in groups smaller
# than a device's share: (config changes, dataset info).
MODEL_CASES = {
    'mlp_kplus1_minibatch': (dict(unsup_loss='kplus1', minibatch_kernels=3,
                                  minibatch_kernel_dim=2, minibatch_group_size=2),
                             input_pipeline.DatasetInfo(10, (28, 28, 1), None)),
    'conv_small_two_head_minibatch': (dict(model='conv_small', unsup_loss='two_head',
                                           minibatch_kernels=3, minibatch_kernel_dim=2,
                                           minibatch_group_size=2, batch_size=8),
                                      input_pipeline.DatasetInfo(10, (32, 32, 3), None)),
}
MNIST_INFO = input_pipeline.DatasetInfo(10, (28, 28, 1), None)


def max_relative_difference(a, b) -> float:
  diffs = jax.tree.leaves(jax.tree.map(
      lambda x, y: float(np.max(np.abs(x - y)) / (np.max(np.abs(y)) + 1e-12)), a, b))
  return max(diffs)


def train_with(config: Config, data, initial_state, num_devices: int,
               info=MNIST_INFO) -> train.TrainState:
  setup = train.Setup.create(config, info)
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


def difference(state: train.TrainState, reference: train.TrainState) -> float:
  return max(max_relative_difference(getattr(state, field), getattr(reference, field))
             for field in ('disc_params', 'gen_params', 'gen_batch_stats'))


def main() -> None:
  assert jax.local_device_count() == 4, jax.devices()
  config = Config(batch_size=16, learning_rate=1e-3, num_steps=4, log_every=2)
  data = random_data(MNIST_INFO.image_shape)
  initial = train.create_train_state(train.Setup.create(config, MNIST_INFO),
                                     data.unlabeled_images[:16])
  reference = train_with(config, data, initial, 4)
  result = {'moved': max_relative_difference(reference.disc_params, initial.disc_params)}
  for name, (changes, num_devices) in VARIANTS.items():
    result[name] = difference(train_with(config.replace(**changes), data, initial, num_devices),
                              reference)
  for name, (changes, info) in MODEL_CASES.items():
    case, data = config.replace(**changes), random_data(info.image_shape)
    initial = train.create_train_state(train.Setup.create(case, info),
                                       data.unlabeled_images[:16])
    four = train_with(case, data, initial, 4, info)
    result[f'{name}_moved'] = max_relative_difference(four.disc_params, initial.disc_params)
    result[f'{name}_one_device'] = difference(train_with(case, data, initial, 1, info), four)
  print(json.dumps(result))


if __name__ == '__main__':
  main()
