"""Data parallelism and speed settings: 4 devices train like 1; shard_map, several steps per
call and data on device train exactly as pmap's single steps do; bfloat16 compute runs with
float32 parameters."""
import functools
import json
import pathlib
import re
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssgan_jax import config as config_lib
from ssgan_jax.data import input_pipeline
from ssgan_jax.training import parallel, train
from ssgan_jax.config import Config

CHECK = pathlib.Path(__file__).with_name('parallel_check.py')
MNIST_INFO = input_pipeline.DatasetInfo(num_classes=10, image_shape=(28, 28, 1), train_size=None)


def test_shard_map_and_scanned_steps_with_data_on_device_match_pmap_on_four():
  """Compiled at the tests' fast level, like the programs it compares with (measured at XLA's
  own level too: the same zero differences, in twice the CPU time)."""
  result = subprocess.run([sys.executable, str(CHECK)], capture_output=True, text=True,
                          timeout=600, cwd=CHECK.parent)
  assert result.returncode == 0, result.stderr[-3000:]
  diffs = json.loads(result.stdout.strip().splitlines()[-1])
  assert diffs['moved'] > 1e-3  # training changed the parameters, so the check means something
  for name in ('scan_2_steps_data_on_device', 'shard_map_scan_2_steps_data_on_device'):
    assert diffs[name] < 1e-5, (name, diffs)


def test_steps_on_one_device_match_four_for_every_model_family():
  """Within 1e-4, not exactly: one device sums the batch in another order than four devices
  and a pmean do. The MLP with kplus1 and minibatch features, and batch norm and the seed's
  losses in ResNet-18."""
  result = subprocess.run([sys.executable, str(CHECK), 'one_device'], capture_output=True,
                          text=True, timeout=600, cwd=CHECK.parent)
  assert result.returncode == 0, result.stderr[-3000:]
  diffs = json.loads(result.stdout.strip().splitlines()[-1])
  for name in ('mlp_kplus1_minibatch', 'resnet18'):
    assert diffs[f'{name}_moved'] > 1e-3, diffs  # the step changed D: the check means something
    assert diffs[f'{name}_one_device'] < 1e-4, (name, diffs)


def test_the_step_compiles_once_from_a_fresh_state():
  config = Config(model='mlp_points', batch_size=8, num_steps=3, log_every=3)
  info = input_pipeline.DatasetInfo(num_classes=2, image_shape=(2,), train_size=None)
  setup = train.Setup.create(config, info)
  points = np.random.default_rng(0).normal(size=(16, 2)).astype(np.float32)
  data = input_pipeline.SemiSupervisedData(
      labeled_images=points, labeled_labels=np.arange(16, dtype=np.int32) % 2,
      unlabeled_images=points, validation_images=points[:0],
      validation_labels=np.zeros(0, np.int32), test_images=points[:0],
      test_labels=np.zeros(0, np.int32))
  trainer = parallel.DataParallelTrainer(functools.partial(train.train_step, setup), config,
                                         data, train.AXIS)
  state, chunks = trainer.replicate(train.create_train_state(setup, points)), trainer.chunks(0)
  compiles = []
  count = lambda event, seconds, **_: compiles.append(event) if 'backend_compile' in event else 0
  jax.monitoring.register_event_duration_secs_listener(count)
  try:
    for _ in range(config.num_steps):
      state, _ = trainer(state, next(chunks))
    jax.block_until_ready(state)
  finally:
    jax.monitoring.unregister_event_duration_listener(count)
  assert len(compiles) == 1, compiles


def test_calls_stop_at_every_log_evaluation_checkpoint_and_the_last_step():
  config = Config(steps_per_dispatch=4, log_every=6, eval_every=10, checkpoint_every=15,
                  num_steps=17)
  step, ends = 0, []
  while step < config.num_steps:
    step += parallel.dispatch_size(config, step)
    ends.append(step)
  assert ends == [4, 6, 10, 12, 15, 17]
  assert parallel.dispatch_size(config.replace(steps_per_dispatch=1), 3) == 1


def test_bfloat16_compute_trains_float32_parameters_and_stays_close_to_float32():
  config = Config(batch_size=16, compute_dtype='bfloat16')
  setup = train.Setup.create(config, MNIST_INFO)
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (16, 28, 28, 1), dtype=np.uint8)
  state = train.create_train_state(setup, images)
  float32_setup = train.Setup.create(config.replace(compute_dtype='float32'), MNIST_INFO)
  for bf16_run, float32_run in zip(jax.tree.leaves(state),
                                   jax.tree.leaves(train.create_train_state(float32_setup, images))):
    np.testing.assert_array_equal(bf16_run, float32_run)  # the same initial weights
  x = setup.family.scale_pixels(images)
  variables = {'params': state.disc_params, **state.disc_constants}
  logits_bf16, _ = setup.disc.apply(variables, x)
  logits_f32, _ = float32_setup.disc.apply(variables, x)
  assert logits_bf16.dtype == jnp.float32
  np.testing.assert_allclose(logits_bf16, logits_f32, rtol=0.1, atol=0.1)
  assert not np.allclose(logits_bf16, logits_f32, rtol=1e-6, atol=1e-6)  # bf16 really ran

  batch = {'labeled_images': images, 'labels': np.arange(16) % 10,
           'unlabeled_images': images, 'unlabeled_images_gen': images[::-1]}
  new_state, metrics = jax.jit(lambda s, b: train.train_step(setup, s, b, axis_name=None))(
      state, batch)
  assert all(np.isfinite(v) for v in jax.device_get(metrics).values())
  for old, new in zip(jax.tree.leaves(state), jax.tree.leaves(new_state)):
    assert new.dtype == old.dtype
  assert not np.allclose(new_state.gen_params['Dense_0']['kernel'],
                         state.gen_params['Dense_0']['kernel'])


@pytest.mark.parametrize('changes,message', [
    (dict(parallel='xmap'), '--parallel=xmap: allowed: pmap, shard_map'),
    (dict(compute_dtype='float16'), '--compute_dtype=float16: allowed: float32, bfloat16'),
    (dict(steps_per_dispatch=0), '--steps_per_dispatch=0: must be >= 1'),
    (dict(conv_transpose='fft'), '--conv_transpose=fft: allowed: auto, phases, subpixel, dilated'),
    (dict(conv_input_gradient='fft'), '--conv_input_gradient=fft: allowed: auto, phases, subpixel, dilated'),
    (dict(conv_kernel_gradient='fft'), '--conv_kernel_gradient=fft: allowed: auto, patches, xla'),
    (dict(conv_tiny_maps='fft'), '--conv_tiny_maps=fft: allowed: auto, patches, xla'),
    (dict(dropout_sampler='fast'), '--dropout_sampler=fast: allowed: auto, bits, bernoulli'),
    (dict(matmul_precision='tf32'), '--matmul_precision=tf32: allowed: default, high, highest'),
])
def test_bad_speed_settings_are_named(changes, message):
  with pytest.raises(config_lib.ConfigError, match=re.escape(message)):
    config_lib.validate(Config(**changes))


def test_a_run_computes_at_its_matmul_precision_and_leaves_the_process_s(monkeypatch):
  seen = []
  monkeypatch.setattr(train, '_train_and_evaluate',
                      lambda *args: seen.append(jax.config.jax_default_matmul_precision))
  before = jax.config.jax_default_matmul_precision
  train.train_and_evaluate(Config(matmul_precision='highest'), 'unused')
  assert seen == ['highest'] and jax.config.jax_default_matmul_precision == before
