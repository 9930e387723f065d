"""Trains a few steps with pmap over 4 devices and over 1 device, on the same global batches.

Run by tests/test_multidevice.py in a subprocess, because the fake CPU devices must be
requested before JAX starts. Prints the largest relative parameter difference as JSON.
"""
import os
import sys

os.environ['XLA_FLAGS'] = '--xla_force_host_platform_device_count=4'

import json  # pylint: disable=g-import-not-at-top
import flax.jax_utils
import jax
import numpy as np

from ssgan_jax import input_pipeline, train
from ssgan_jax.config import Config


def train_on_devices(setup, initial_state, batches, devices):
  step = jax.pmap(lambda s, b: train.train_step(setup, s, b), axis_name=train.AXIS,
                  devices=devices)
  state = flax.jax_utils.replicate(initial_state, devices)
  for batch in batches:
    sharded = jax.tree.map(lambda x: input_pipeline.shard(x, len(devices)), batch)
    state, _ = step(state, sharded)
  return jax.device_get(flax.jax_utils.unreplicate(state))


def max_relative_difference(a, b) -> float:
  diffs = jax.tree.leaves(jax.tree.map(
      lambda x, y: float(np.max(np.abs(x - y)) / (np.max(np.abs(y)) + 1e-12)), a, b))
  return max(diffs)


def main(model: str, num_steps: int) -> None:
  assert jax.local_device_count() == 4, jax.devices()
  image_shape = (28, 28, 1) if model == 'mlp' else (32, 32, 3)
  config = Config(model=model, batch_size=16, learning_rate=1e-3)
  info = input_pipeline.DatasetInfo(num_classes=10, image_shape=image_shape, train_size=None)
  setup = train.Setup.create(config, info)
  rng = np.random.default_rng(0)
  images = lambda: rng.integers(0, 256, (config.batch_size, *image_shape), dtype=np.uint8)
  batches = [{'labeled_images': images(), 'labels': rng.integers(0, 10, config.batch_size),
              'unlabeled_images': images(), 'unlabeled_images_gen': images()}
             for _ in range(num_steps)]
  initial = train.create_train_state(setup, images())
  four = train_on_devices(setup, initial, batches, jax.local_devices())
  one = train_on_devices(setup, initial, batches, jax.local_devices()[:1])
  print(json.dumps({
      'disc_params': max_relative_difference(four.disc_params, one.disc_params),
      'gen_params': max_relative_difference(four.gen_params, one.gen_params),
      'gen_batch_stats': max_relative_difference(four.gen_batch_stats, one.gen_batch_stats),
      'moved': max_relative_difference(one.disc_params, initial.disc_params),
  }))


if __name__ == '__main__':
  main(sys.argv[1], int(sys.argv[2]))
