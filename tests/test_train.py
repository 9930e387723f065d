"""The train step on fixed batches, and whole runs through train_and_evaluate on mock data."""
import dataclasses
import functools
import pathlib
import re

import jax
import jax.numpy as jnp
import numpy as np
import pytest
import tensorflow_datasets as tfds

from ssgan_jax.data import input_pipeline
from ssgan_jax.networks import models
from ssgan_jax.training import losses, train
from ssgan_jax import config as config_lib, main as ssgan_main
from ssgan_jax.config import Config

REPO = pathlib.Path(__file__).resolve().parents[1]
MNIST_INFO = input_pipeline.DatasetInfo(num_classes=10, image_shape=(28, 28, 1), train_size=None)


def tiny_config(**changes) -> Config:
  return Config(num_labeled=20, num_validation=20, batch_size=16, eval_batch_size=50,
                num_steps=4, checkpoint_every=2, eval_every=2, log_every=2,
                ema_decay=0.9).replace(**changes)


def striped_images(labels: np.ndarray, rng: np.random.Generator) -> np.ndarray:
  """A learnable toy task: class c lights up rows 2c and 2c + 1, on a noisy background."""
  images = rng.integers(0, 64, (len(labels), 28, 28, 1))
  for i, label in enumerate(labels):
    images[i, 2 * label:2 * label + 2] = 255
  return images.astype(np.uint8)


def fixed_batch(config: Config, seed: int = 0) -> dict:
  rng = np.random.default_rng(seed)
  labels = rng.permutation(np.arange(config.batch_size) % 10)
  unlabeled = lambda: striped_images(rng.integers(0, 10, config.batch_size), rng)
  return {'labeled_images': striped_images(labels, rng), 'labels': labels,
          'unlabeled_images': unlabeled(), 'unlabeled_images_gen': unlabeled()}


@functools.lru_cache
def train_on_fixed_batch(config: Config, num_steps: int = 15):
  """Trains on one fixed batch on a single device (once per config, shared by tests).

  Returns (setup, batch, states after 0, 1 and num_steps steps).
  """
  setup = train.Setup.create(config, MNIST_INFO)
  batch = fixed_batch(config)
  step = jax.jit(lambda s, b: train.train_step(setup, s, b, axis_name=None))
  states = [train.create_train_state(setup, batch['unlabeled_images'])]
  for _ in range(num_steps):
    state, metrics = step(states[-1], batch)
    assert all(np.isfinite(v) for v in jax.device_get(metrics).values())
    states.append(state)
  return setup, batch, states[0], states[1], states[-1]


def noiseless_losses(setup, batch, disc_state, gen_state=None) -> dict:
  """D's and G's losses on the fixed batch with noise off and a fixed latent batch."""
  disc_vars = {'params': disc_state.disc_params, **disc_state.disc_constants}
  scale = setup.family.scale_pixels
  outputs, _ = setup.disc.apply(disc_vars, scale(batch['labeled_images']))
  result = {'sup': losses.supervised_cross_entropy(setup.head.supervised_logits(outputs),
                                                   batch['labels'])}
  if gen_state is not None:
    z = models.sample_latent(jax.random.split(jax.random.key(1), len(batch['labels'])))
    fake, _ = setup.generator(None).apply(
        {'params': gen_state.gen_params, 'batch_stats': gen_state.gen_batch_stats}, z,
        mutable=['batch_stats'])
    out_unl, feat_unl = setup.disc.apply(disc_vars, scale(batch['unlabeled_images_gen']))
    out_fake, feat_fake = setup.disc.apply(disc_vars, fake)
    result['unsup'] = losses.unsupervised_real_fake(setup.head.real_logit(out_unl),
                                                    setup.head.real_logit(out_fake))
    result['feature_matching'] = losses.feature_matching(feat_unl, feat_fake)
    result['nonsaturating'] = losses.nonsaturating(setup.head.real_logit(out_fake))
  return {k: float(v) for k, v in result.items()}


def fixed_batch_config(**changes) -> Config:
  """A short horizon at a small rate: long enough to learn, too short for G and D to trade places."""
  return tiny_config(gen_loss='both', learning_rate=1e-3).replace(**changes)


@pytest.mark.parametrize('unsup_loss', ['salimans', 'kplus1', 'two_head'])
def test_ssl_steps_lower_discriminator_losses(unsup_loss):
  setup, batch, initial, _, final = train_on_fixed_batch(fixed_batch_config(unsup_loss=unsup_loss))
  before = noiseless_losses(setup, batch, initial, initial)
  # D's unlabeled loss against the same fakes: G's progress over the steps would mix in.
  after = noiseless_losses(setup, batch, final, initial)
  assert after['sup'] < 0.5 * before['sup']
  assert after['unsup'] < before['unsup']


def test_ssl_steps_lower_generator_losses_against_the_trained_discriminator():
  setup, batch, initial, _, final = train_on_fixed_batch(fixed_batch_config())
  untrained_gen = noiseless_losses(setup, batch, final, initial)
  trained_gen = noiseless_losses(setup, batch, final, final)
  assert trained_gen['feature_matching'] < untrained_gen['feature_matching']
  assert trained_gen['nonsaturating'] < untrained_gen['nonsaturating']


def test_supervised_steps_train_only_the_discriminator():
  setup, batch, initial, _, final = train_on_fixed_batch(fixed_batch_config(mode='supervised'))
  assert final.gen_params is None
  assert (noiseless_losses(setup, batch, final)['sup']
          < 0.5 * noiseless_losses(setup, batch, initial)['sup'])


def test_ema_evaluation_is_the_bias_corrected_average_of_every_step():
  """After many steps, the EMA evaluation uses sum_t (1 - d) d^(n - t) theta_t / (1 - d^n),
  computed here from each step's parameters, and raw evaluation the last parameters: two
  different sets of weights that give D different outputs."""
  config = fixed_batch_config(mode='supervised', ema_decay=0.8)
  setup = train.Setup.create(config, MNIST_INFO)
  batch = fixed_batch(config)
  step = jax.jit(lambda s, b: train.train_step(setup, s, b, axis_name=None))
  state = train.create_train_state(setup, batch['unlabeled_images'])
  history = []
  for _ in range(12):
    state, _ = step(state, batch)
    history.append(state.disc_params)
  d, n = config.ema_decay, len(history)
  expected = jax.tree.map(
      lambda *thetas: sum((1 - d) * d ** (n - 1 - t) * theta for t, theta in enumerate(thetas))
      / (1 - d ** n), *history)
  ema = train.eval_disc_variables(setup, state, 'ema')
  raw = train.eval_disc_variables(setup, state, 'raw')
  jax.tree.map(lambda a, b: np.testing.assert_allclose(a, b, rtol=1e-4, atol=1e-6),
               ema['params'], expected)
  jax.tree.map(np.testing.assert_array_equal, raw['params'], state.disc_params)
  x = setup.family.scale_pixels(batch['labeled_images'])
  ema_outputs, _ = setup.disc.apply(ema, x)
  raw_outputs, _ = setup.disc.apply(raw, x)
  assert np.max(np.abs(ema_outputs - raw_outputs)) > 1e-2


def test_ema_horizon_fits_the_average_to_the_run():
  short = Config(ema_decay=0.9999, ema_horizon=0.1, num_steps=6000)
  assert config_lib.ema_decay(short) == pytest.approx(1 - 1 / 600)
  # The full protocol's 180,000 steps keep the flagfile's decay; so does ema_horizon=0.
  assert config_lib.ema_decay(short.replace(num_steps=180_000)) == 0.9999
  assert config_lib.ema_decay(short.replace(ema_horizon=0.0)) == 0.9999
  assert config_lib.ema_decay(short.replace(num_steps=5)) == 0.0  # the raw weights
  setup = train.Setup.create(short, MNIST_INFO)
  params = {'w': jnp.ones(2)}
  _, ema_state = setup.ema.update(params, setup.ema.init(params))
  np.testing.assert_allclose(ema_state.ema['w'], (1 / 600) * np.ones(2), rtol=1e-5)
  with pytest.raises(config_lib.ConfigError, match='must be in'):
    config_lib.validate(short.replace(ema_horizon=2.0))
  # The flagfiles' full protocols average as the reference does.
  for flagfile in ('mnist', 'svhn', 'cifar10'):
    config, _ = ssgan_main.parse_config([f'--flagfile={REPO / "experiments" / flagfile}.flags'])
    assert config.ema_horizon and config_lib.ema_decay(config) == config.ema_decay == 0.9999


def conv_flagfile_config(flagfile: str, *extra_flags: str) -> Config:
  config, _ = ssgan_main.parse_config([
      f'--flagfile={REPO / "experiments" / flagfile}', '--num_steps=2', '--batch_size=8',
      '--eval_batch_size=40', '--num_labeled=20', '--num_validation=20', *extra_flags])
  return config


def test_svhn_flagfile_trains_end_to_end_on_mock_data(tmp_path):
  # The conv step inside a scan, over data on the device (benchmarks/results/scan_gradients_ab/).
  config = conv_flagfile_config('svhn.flags', '--steps_per_dispatch=2', '--data_on_device=true')
  assert config.dataset == 'svhn_cropped' and config.model == 'conv_small'
  with tfds.testing.mock_data(num_examples=80):
    summary = train.train_and_evaluate(config, str(tmp_path))
  assert summary['step'] == 2 and 0 <= summary['test_accuracy'] <= 1
  assert (tmp_path / 'checkpoints' / '2').is_dir()


def test_cifar10_flagfile_builds_its_train_state():
  # Its train step is svhn's with wider layers (trained end to end above); shapes suffice here.
  config = conv_flagfile_config('cifar10.flags')
  assert config.dataset == 'cifar10' and config.model == 'conv_large'
  config_lib.validate(config)
  setup = train.Setup.create(config, input_pipeline.DatasetInfo(10, (32, 32, 3), None))
  state = train.state_template(setup)
  outputs, _ = jax.eval_shape(
      lambda: setup.disc.apply({'params': state.disc_params, **state.disc_constants},
                               jnp.zeros((2, 32, 32, 3))))
  assert outputs.shape == (2, 10)


@pytest.mark.parametrize('flagfile, train_images, epochs', [
    ('mnist.flags', 60000, 300), ('svhn.flags', 73257, 900), ('cifar10.flags', 50000, 1200)])
def test_flagfile_header_gives_the_reference_scripts_data_and_steps(flagfile, train_images,
                                                                    epochs):
  # openai/improved-gan trains on every training image for this many epochs, no validation.
  header = (REPO / 'experiments' / flagfile).read_text()
  overrides = re.search(r'add (--num_validation=0 --num_steps=\d+)', header.replace('\n# ', ' '))
  config, _ = ssgan_main.parse_config(
      [f'--flagfile={REPO / "experiments" / flagfile}', *overrides.group(1).split()])
  config_lib.validate(config)
  assert config.num_steps == epochs * (train_images // config.batch_size)


def test_non_finite_metrics_stop_training_at_the_first_bad_step_with_the_loss():
  metrics = [{'disc_loss': np.array([0.5, 0.7]), 'gen_loss': np.array([1.0, 1.0])},
             {'disc_loss': np.array([np.nan, 0.7]), 'gen_loss': np.array([1.0, 1.0])},
             {'disc_loss': np.array([0.5, 0.7]), 'gen_loss': np.array([1.0, np.inf])}]
  assert train.finite_means(metrics[:1], 1) == {'disc_loss': 0.6, 'gen_loss': 1.0}
  # Steps 8, 9, 10 pending: 9 is the first with a non-finite metric.
  with pytest.raises(train.NonFiniteLossError,
                     match='diverged at step 9: disc_loss=nan, gen_loss=1$'):
    train.finite_means(metrics, 10)



def test_mnist_fast_flagfile_is_the_mnist_flagfile_with_the_changes_its_header_names():
  parse = lambda name: dataclasses.asdict(
      ssgan_main.parse_config([f'--flagfile={REPO / "experiments" / name}'])[0])
  fast, reference = parse('mnist_fast.flags'), parse('mnist.flags')
  changed = {name: value for name, value in fast.items() if value != reference[name]}
  assert changed == {'weight_norm_init': 'unit', 'gen_steps': 3}
  header = (REPO / 'experiments' / 'mnist_fast.flags').read_text()
  assert all(f'--{name}={value}' in header for name, value in changed.items())
