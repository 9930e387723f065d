"""Trains a few steps on 4 fake CPU devices with each parallel setting; prints the largest
relative parameter difference of each from pmap with one plain step per call, as JSON.

Run by tests/test_parallel.py in a subprocess: the devices must be requested before JAX starts.
"""
import os

os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'

import functools  # pylint: disable=g-import-not-at-top
import json

import flax.jax_utils
import jax
import numpy as np

from multidevice_check import max_relative_difference
from ssgan_jax import input_pipeline, parallel, train
from ssgan_jax.config import Config

# Each compiles once: 6 steps with a log every 3 make two calls of 3 steps when calls scan.
VARIANTS = {
    'shard_map': dict(parallel='shard_map'),
    'scan_3_steps_data_on_device': dict(steps_per_dispatch=3, data_on_device=True,
                                        donate_state=False),
    'shard_map_scan_3_steps_data_on_device': dict(parallel='shard_map', steps_per_dispatch=3,
                                                  data_on_device=True, donate_state=False),
}


def train_with(config: Config, data, initial_state) -> train.TrainState:
  setup = train.Setup.create(config, input_pipeline.DatasetInfo(10, (28, 28, 1), None))
  trainer = parallel.DataParallelTrainer(functools.partial(train.train_step, setup), config,
                                         data, train.AXIS)
  state, step, chunks = flax.jax_utils.replicate(initial_state), 0, trainer.chunks(0)
  while step < config.num_steps:
    step += trainer.steps_in_call(step)
    state, _ = trainer(state, next(chunks))
  return jax.device_get(flax.jax_utils.unreplicate(state))


def main() -> None:
  assert jax.local_device_count() == 4, jax.devices()
  config = Config(batch_size=16, learning_rate=1e-3, num_steps=6, log_every=3)
  rng = np.random.default_rng(0)
  images = lambda n: rng.integers(0, 256, (n, 28, 28, 1), dtype=np.uint8)
  data = input_pipeline.SemiSupervisedData(
      labeled_images=images(20), labeled_labels=np.arange(20, dtype=np.int32) % 10,
      unlabeled_images=images(40), validation_images=images(0),
      validation_labels=np.zeros(0, np.int32), test_images=images(0),
      test_labels=np.zeros(0, np.int32))
  setup = train.Setup.create(config, input_pipeline.DatasetInfo(10, (28, 28, 1), None))
  initial = train.create_train_state(setup, data.unlabeled_images[:16])
  reference = train_with(config, data, initial)
  result = {'moved': max_relative_difference(reference.disc_params, initial.disc_params)}
  for name, changes in VARIANTS.items():
    state = train_with(config.replace(**changes), data, initial)
    result[name] = max(max_relative_difference(getattr(state, field), getattr(reference, field))
                       for field in ('disc_params', 'gen_params', 'gen_batch_stats'))
  print(json.dumps(result))


if __name__ == '__main__':
  main()
