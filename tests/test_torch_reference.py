"""The PyTorch reference against the Flax models, losses and train step, weights copied across."""
import dataclasses
import functools
import os
import pathlib
import subprocess
import sys

import flax
import jax
import numpy as np
import optax
import pytest
import torch

from benchmarks.torch_reference import convert, losses as torch_losses, models as torch_models
from benchmarks.torch_reference import train as torch_train
from ssgan_jax.data import input_pipeline
from ssgan_jax.networks import models
from ssgan_jax.training import losses, train
from ssgan_jax.config import Config
from conftest import default_optimization_env

TESTS = pathlib.Path(__file__).resolve().parent
SHAPES = {'mlp': (28, 28, 1), 'conv_small': (32, 32, 3), 'resnet18': (64, 64, 3)}
BATCH = {'mlp': 16, 'conv_small': 4, 'resnet18': 4}


def to_numpy(x):
  return x.detach().cpu().numpy() if isinstance(x, torch.Tensor) else np.asarray(x)


def assert_close(actual, expected, atol):
  np.testing.assert_allclose(to_numpy(actual), to_numpy(expected), rtol=atol, atol=atol)


def random_images(family, batch, seed):
  return np.random.default_rng(seed).integers(0, 256, (batch, *SHAPES[family]), np.uint8)


def noiseless_config(family, **changes) -> Config:
  return Config(model=family, batch_size=BATCH[family], num_steps=10, ema_decay=0.9,
                learning_rate=1e-3, lr_decay_fraction=0.5).replace(**changes)


@functools.lru_cache
def jax_setup(family: str, unsup_loss: str = 'salimans', **changes) -> train.Setup:
  """train.Setup with noise and dropout off in D (ResNet-18 has none)."""
  config = noiseless_config(family, unsup_loss=unsup_loss, **changes)
  info = input_pipeline.DatasetInfo(num_classes=10, image_shape=SHAPES[family], train_size=None)
  setup = train.Setup.create(config, info)
  if family == 'resnet18':
    return setup
  num_outputs = 10 + setup.head.extra_outputs
  disc = (models.MlpDiscriminator(num_outputs, input_noise=0, hidden_noise=0)
          if family == 'mlp' else
          models.ConvDiscriminator(num_outputs, (64, 128), input_dropout=0, hidden_dropout=0))
  return dataclasses.replace(setup, disc=train.with_weight_norm(disc, config))


def torch_trainer(setup: train.Setup, state: train.TrainState) -> torch_train.TorchTrainer:
  """A TorchTrainer holding `state`'s D and G, with D's noise off (eval mode); a batch-norm
  D stays in train mode (batch statistics, as train_step applies it)."""
  config = setup.config
  trainer = torch_train.TorchTrainer(config, setup.num_classes, setup.image_shape,
                                     random_images(config.model, 8, seed=9))
  convert.load_flax_variables(trainer.disc, {'params': state.disc_params,
                                             **state.disc_constants})
  if state.gen_params is not None:
    convert.load_flax_variables(trainer.gen, {'params': state.gen_params})
  trainer.disc.train(setup.family.disc_batch_norm)
  return trainer


def torch_module(module, variables):
  convert.load_flax_variables(module, variables)
  return module.eval()


@pytest.mark.parametrize('family', ['mlp', 'conv_small'])
def test_forward_matches_flax(family):
  setup = jax_setup(family)
  state = train.create_train_state(setup, random_images(family, 32, seed=0))
  trainer = torch_trainer(setup, state)
  images = random_images(family, BATCH[family], seed=1)
  jax_family, torch_family = models.MODEL_FAMILIES[family], torch_models.MODEL_FAMILIES[family]

  logits, features = setup.disc.apply({'params': state.disc_params, **state.disc_constants},
                                      jax_family.scale_pixels(images))
  torch_logits, torch_features = trainer.disc(torch_family.images_to_input(
      torch.as_tensor(images)))
  assert_close(torch_logits, logits, 1e-5)
  assert_close(torch_features, features, 1e-5)

  z = models.sample_latent(jax.random.split(jax.random.key(3), BATCH[family]))
  fake, _ = setup.generator(None).apply(
      {'params': state.gen_params, 'batch_stats': state.gen_batch_stats}, z,
      mutable=['batch_stats'])
  torch_fake = trainer.gen(torch.as_tensor(np.array(z)))
  if torch_family.channels_first:
    torch_fake = torch_fake.permute(0, 2, 3, 1)
  assert_close(torch_fake, fake, 1e-5)


def test_resnet_forward_matches_flax():
  """ResNet-18 per-group batch statistics, its running averages and eval mode, and the DCGAN
  generator, with Flax's weights."""
  setup = jax_setup('resnet18')
  state = train.create_train_state(setup, random_images('resnet18', 8, seed=0))
  trainer = torch_trainer(setup, state)
  family = torch_models.MODEL_FAMILIES['resnet18']
  images = random_images('resnet18', 6, seed=1)
  x = models.MODEL_FAMILIES['resnet18'].scale_pixels(images)
  torch_x = family.images_to_input(torch.as_tensor(images))
  (logits, features), updated = setup.disc.apply(
      {'params': state.disc_params, **state.disc_constants}, x, group_size=3, stats_groups=1,
      mutable=['batch_stats'])
  torch_logits, torch_features = trainer.disc(torch_x, group_size=3, stats_groups=1)
  assert_close(torch_logits, logits, 1e-5)
  # 17 convolutions with batch norm after each: float32 sums in another order differ by up
  # to 2e-5 in a few features on some CPUs.
  assert_close(torch_features, features, 5e-5)
  # One pass over all six as one group normalises differently: the groups matter.
  assert not np.allclose(to_numpy(trainer.disc(torch_x)[0]), logits, atol=1e-3)

  eval_variables = {'params': state.disc_params, **updated}
  expected = torch_trainer(setup, state.replace(disc_constants=updated)).disc.state_dict()
  for name, value in trainer.disc.state_dict().items():
    if 'running' in name:  # the grouped pass above updated them; the last pass did too
      continue
    assert_close(value, expected[name], 1e-6)
  eval_disc = torch_module(family.discriminator(10, SHAPES['resnet18'], models.WeightNorm()),
                           eval_variables)
  assert_close(eval_disc(torch_x)[0], setup.disc.apply(eval_variables, x)[0], 1e-5)

  z = models.sample_latent(jax.random.split(jax.random.key(3), 4))
  fake, _ = setup.generator(None).apply(
      {'params': state.gen_params, 'batch_stats': state.gen_batch_stats}, z,
      mutable=['batch_stats'])
  assert_close(trainer.gen(torch.as_tensor(np.array(z))).permute(0, 2, 3, 1), fake, 1e-5)


@pytest.mark.parametrize('family', ['mlp', 'conv_small'])
def test_data_dependent_init_matches_flax(family):
  """Without noise, the same kernels and init batch give the same scales and biases."""
  setup = jax_setup(family)
  images = random_images(family, 32, seed=2)
  variables = setup.disc.init(jax.random.key(0),
                              models.MODEL_FAMILIES[family].scale_pixels(images))
  disc = torch_module(torch_models.MODEL_FAMILIES[family].discriminator(
      10, SHAPES[family], models.WeightNorm()), variables)
  expected = {k: v.clone() for k, v in disc.state_dict().items()}
  for m in disc.modules():
    if isinstance(m, torch_models.ScaleBias):
      m.pending_init = True
  torch_models.data_dependent_init(
      disc, torch_models.MODEL_FAMILIES[family].images_to_input(torch.as_tensor(images)))
  for name, value in disc.state_dict().items():
    assert_close(value, expected[name], 1e-4)


@pytest.mark.parametrize('unsup_loss', sorted(losses.HEADS))
def test_losses_match_flax(unsup_loss):
  rng = np.random.default_rng(0)
  head, torch_head = losses.HEADS[unsup_loss], torch_losses.HEADS[unsup_loss]
  outputs_lab, outputs_unl, outputs_fake = (
      3 * rng.standard_normal((8, 10 + head.extra_outputs)).astype(np.float32) for _ in range(3))
  features_unl, features_fake = (rng.standard_normal((8, 32)).astype(np.float32)
                                 for _ in range(2))
  labels = rng.integers(0, 10, 8)
  t = torch.as_tensor
  pairs = [
      (losses.supervised_cross_entropy(head.supervised_logits(outputs_lab), labels),
       torch_losses.supervised_cross_entropy(torch_head.supervised_logits(t(outputs_lab)),
                                             t(labels))),
      (losses.unsupervised_real_fake(head.real_logit(outputs_unl), head.real_logit(outputs_fake)),
       torch_losses.unsupervised_real_fake(torch_head.real_logit(t(outputs_unl)),
                                           torch_head.real_logit(t(outputs_fake)))),
      (losses.nonsaturating(head.real_logit(outputs_fake)),
       torch_losses.nonsaturating(torch_head.real_logit(t(outputs_fake)))),
  ] + [(losses.feature_matching(features_unl, features_fake, norm),
        torch_losses.feature_matching(t(features_unl), t(features_fake), norm))
       for norm in losses.FEATURE_NORMS]
  for expected, actual in pairs:
    assert_close(actual, expected, 1e-5)


def test_learning_rate_matches_jax_schedule():
  config = Config(num_steps=30, learning_rate=0.01, lr_decay_fraction=1 / 3, gen_steps=2)
  schedule = train.learning_rate_schedule(config)
  trainer = torch_train.TorchTrainer(config.replace(model='mlp'), 10, SHAPES['mlp'],
                                     random_images('mlp', 8, seed=9))
  gen_schedule = train.learning_rate_schedule(
      config, functools.partial(train.step_of_gen_update, config))
  for count in (0, 19, 20, 21, 25, 29, 30, 40):
    assert torch_train.learning_rate(config, count) == pytest.approx(float(schedule(count)),
                                                                     abs=1e-9)
    # G makes gen_steps updates a step; its rate follows the steps.
    assert float(gen_schedule(2 * count + 1)) == float(schedule(count))
    assert trainer.gen_opt.schedule(2 * count + 1) == pytest.approx(float(schedule(count)),
                                                                    abs=1e-9)


def test_g_s_rate_follows_the_steps_when_its_extra_updates_stop():
  """--gen_steps=3 --gen_steps_until=4: three G updates a step before step 4, one after; each
  update gets its step's rate, in both frameworks."""
  config = Config(model='mlp', num_steps=30, learning_rate=0.01, lr_decay_fraction=0.9,
                  gen_steps=3, gen_steps_until=4)
  schedule = train.learning_rate_schedule(config)
  gen_schedule = train.learning_rate_schedule(
      config, functools.partial(train.step_of_gen_update, config))
  steps_of_updates = [step for step in range(config.num_steps)
                      for _ in range(torch_train.gen_updates(config, step))]
  assert len(steps_of_updates) == 3 * 4 + 26
  for count, step in enumerate(steps_of_updates):
    assert int(train.step_of_gen_update(config, count)) == step
    assert torch_train.step_of_gen_update(config, count) == step
    assert float(gen_schedule(count)) == float(schedule(step))


def test_adam_and_ema_match_optax():
  """Adam with epsilon inside the square root, and the bias-corrected EMA, as in train.Setup."""
  config = Config(num_steps=4, learning_rate=0.01, lr_decay_fraction=0.5, ema_decay=0.9)
  setup = train.Setup.create(config, input_pipeline.DatasetInfo(10, (28, 28, 1), None))
  rng = np.random.default_rng(0)
  params = {'w': rng.standard_normal((3, 4)).astype(np.float32)}
  opt_state, ema_state = setup.optimizer.init(params), setup.ema.init(params)
  w = torch.nn.Parameter(torch.as_tensor(params['w']))
  adam = torch_train.Adam([w], lambda count: torch_train.learning_rate(config, count),
                          config.adam_beta1)
  ema = torch_train.Ema({'w': w}, config.ema_decay)
  for _ in range(config.num_steps):
    grads = {'w': rng.standard_normal((3, 4)).astype(np.float32) * 1e-3}
    updates, opt_state = setup.optimizer.update(grads, opt_state, params)
    params = optax.apply_updates(params, updates)
    _, ema_state = setup.ema.update(params, ema_state)
    w.grad = torch.as_tensor(grads['w'])
    adam.step()
    ema.update({'w': w})
    assert_close(w, params['w'], 1e-6)
  assert_close(ema.corrected()['w'], optax.tree.bias_correction(
      ema_state.ema, config.ema_decay, ema_state.count)['w'], 1e-6)


# Adam's first update is lr * g / sqrt(g^2 + eps_root): nearly lr * sign(g), so a gradient
# entry near 0, whose sign float32 roundoff decides, moves by up to 2 * lr between frameworks
# (or between eager and jitted JAX). Such entries come from leaky-ReLU inputs near the kink
# and from the l1 feature-matching norm; with eps_root = 1 the update is about lr * g, so the
# step is compared, not the roundoff. (Adam itself, with the reference's eps_root, is
# compared with optax above.)
SMOOTH_EPS_ROOT = 1.0


TRAIN_STEP_CASES = [
    ('mlp', 'ssl', 'salimans', 'both'), ('mlp', 'ssl', 'kplus1', 'nonsaturating'),
    ('conv_small', 'ssl', 'salimans', 'feature_matching'),
    ('mlp', 'supervised', 'salimans', 'feature_matching'),
    ('resnet18', 'ssl', 'salimans', 'nonsaturating')]


@functools.cache  # the same step serves the comparison with torch and with the default level
def jax_train_step(family: str, mode: str, unsup_loss: str, gen_loss: str, **changes):
  """One jitted JAX train step from a fixed state and batch, with SMOOTH_EPS_ROOT's Adam,
  and the config's other `changes`: (setup, state before, batch, state after, metrics)."""
  setup = jax_setup(family, unsup_loss, **changes)
  setup = dataclasses.replace(setup, config=setup.config.replace(
      mode=mode, gen_loss=gen_loss, feature_norm='l1' if family != 'mlp' else 'l2'))
  setup = dataclasses.replace(
      setup, optimizer=train.adam(setup.config, train.learning_rate_schedule(setup.config),
                                  SMOOTH_EPS_ROOT),
      gen_optimizer=train.adam(setup.config, train.learning_rate_schedule(
          setup.config, functools.partial(train.step_of_gen_update, setup.config)),
          SMOOTH_EPS_ROOT))
  b = BATCH[family]
  state = train.create_train_state(setup, random_images(family, 32, seed=0))
  images = random_images(family, 3 * b, seed=1)
  batch = {'labeled_images': images[:b], 'labels': np.arange(b) % 10,
           'unlabeled_images': images[b:2 * b], 'unlabeled_images_gen': images[2 * b:]}
  after, metrics = jax.jit(functools.partial(train.train_step, setup, axis_name=None))(
      state, batch)
  return setup, state, batch, after, metrics


@pytest.mark.parametrize('family,mode,unsup_loss,gen_loss', TRAIN_STEP_CASES)
def test_train_step_matches_flax(family, mode, unsup_loss, gen_loss):
  """One D step (and in ssl mode one G step) from the same state and latents gives the same
  parameters and losses."""
  check_train_step(family, mode, unsup_loss, gen_loss)


def test_train_step_with_the_early_game_choices_matches_flax():
  """--weight_norm_init=unit --weight_norm_scales=all --gen_steps=2: both start every scale
  at 1 and train all of them (D's hidden scales are parameters, no longer buffers), and both
  update G twice on fresh latents, G's Adam counting two updates."""
  trainer, after = check_train_step('mlp', 'ssl', 'salimans', 'feature_matching',
                                    weight_norm_init='unit', weight_norm_scales='all',
                                    gen_steps=2)
  assert not list(trainer.disc.buffers())
  scales = [value for path, value in flax.traverse_util.flatten_dict(after.disc_params).items()
            if path[-1] == 'scale']
  assert len(scales) == 6 and all(np.any(s != 1.0) for s in scales)  # each started at 1
  assert int(after.gen_opt_state[0].count) == trainer.gen_opt.count == 2
  assert int(after.disc_opt_state[0].count) == trainer.disc_opt.count == 1


def test_extra_g_updates_stop_at_gen_steps_until():
  """--gen_steps=3 --gen_steps_until=1: step 0 updates G three times and step 1 once, the
  update --gen_steps=1 makes from the same state, in JAX as in the reference."""
  setup = jax_setup('mlp', gen_steps=3, gen_steps_until=1)
  single = jax_setup('mlp', gen_steps=1)
  _, _, batch, after_0, _ = jax_train_step('mlp', 'ssl', 'salimans', 'feature_matching',
                                           gen_steps=3, gen_steps_until=1)
  step = lambda setup, state: jax.jit(functools.partial(train.train_step, setup,
                                                        axis_name=None))(state, batch)[0]
  after_1, expected = step(setup, after_0), step(single, after_0)
  assert [int(s.gen_opt_state[0].count) for s in (after_0, after_1)] == [3, 4]
  moved = jax.tree.map(lambda a, b: np.max(np.abs(a - b)), after_1.gen_params,
                       after_0.gen_params)
  assert max(jax.tree.leaves(moved)) > 1e-4  # step 1 did update G
  for actual, wanted in zip(jax.tree.leaves(after_1), jax.tree.leaves(expected)):
    assert_close(actual, wanted, 1e-6)

  trainer = torch_trainer(setup, after_0)
  trainer.train_step(batch)
  trainer.train_step(batch)
  assert trainer.gen_opt.count == 4 and trainer.disc_opt.count == 2


@pytest.mark.parametrize('family', ['mlp', 'conv_small'])
def test_train_step_with_a_plain_generator_output_matches_flax(family):
  """--gen_output_layer=plain: G's output layer is its kernel plus a bias in both."""
  trainer, after = check_train_step(family, 'ssl', 'salimans', 'feature_matching',
                                    gen_output_layer='plain')
  assert trainer.gen.output.scale_bias.scale is None
  (output_layer,) = (name for name in after.gen_params if name.startswith('WN'))
  assert set(after.gen_params[output_layer]['ScaleBias_0']) == {'bias'}


def check_train_step(family, mode, unsup_loss, gen_loss, **changes):
  """Asserts that `jax_train_step`'s step and the reference's agree; returns the reference's
  trainer and JAX's state after the step."""
  setup, state, batch, after, metrics = jax_train_step(family, mode, unsup_loss, gen_loss,
                                                       **changes)
  trainer = torch_trainer(setup, state)
  for optimizer in filter(None, (trainer.disc_opt, trainer.gen_opt)):
    for group in optimizer.param_groups:
      group['eps_root'] = SMOOTH_EPS_ROOT
  b = BATCH[family]
  # The latents train_step draws at step 0 (the streams' ids are train's constants).
  step_key = jax.random.fold_in(jax.random.key(setup.config.seed), 0)
  gen_streams = [train._GEN_LATENT + k * train._NUM_STREAMS
                 for k in range(setup.config.gen_steps)]
  latents = [models.sample_latent(train.example_keys(step_key, stream, b, None))
             for stream in (train._DISC_LATENT, *gen_streams)]
  torch_metrics = trainer.train_step(batch, latents=latents)
  for name, value in metrics.items():
    # Gradient norms differ more than losses: the kinks above, where roundoff picks a side.
    assert_close(torch_metrics[name], value, 1e-3 if 'grad_norm' in name else 1e-5)

  expected = torch_trainer(setup, after)
  for module, expected_module in ((trainer.disc, expected.disc), (trainer.gen, expected.gen)):
    for name, value in (expected_module.state_dict() if expected_module else {}).items():
      assert_close(module.state_dict()[name], value, 1e-4)
  return trainer, after


def train_step_outputs(cases) -> dict:
  """The metrics and new D and G parameters of jax_train_step for each case, flat by name."""
  outputs = {}
  for case in cases:
    _, _, _, after, metrics = jax_train_step(*case)
    tree = {'metrics': metrics, 'disc': after.disc_params, 'gen': after.gen_params}
    for path, leaf in jax.tree_util.tree_leaves_with_path(tree):
      outputs['/'.join(case) + jax.tree_util.keystr(path)] = np.asarray(leaf)
  return outputs


# The cases compiled with XLA's default optimisations as well: the MLP, and ResNet-18 for the
# convolutions and batch norm.
LEVEL_CASES = [TRAIN_STEP_CASES[0], TRAIN_STEP_CASES[4]]


def test_train_steps_give_the_same_numbers_at_xla_s_default_optimisation_level(tmp_path):
  """The comparisons above compile JAX at the tests' fast level; users run XLA's default.
  One step of the MLP and of ResNet-18 at the default level (a subprocess) gives what it
  gives here, so the equivalence holds for the programs users run."""
  path = tmp_path / 'default_level.npz'
  result = subprocess.run([sys.executable, '-c', 'import sys, numpy, test_torch_reference as t; '
                           'numpy.savez(sys.argv[1], **t.train_step_outputs(t.LEVEL_CASES))',
                           str(path)], capture_output=True, text=True, timeout=600,
                          cwd=TESTS, env={**os.environ, **default_optimization_env(),
                                          'PYTHONPATH': str(TESTS.parent)})
  assert result.returncode == 0, result.stderr[-3000:]
  default_level = np.load(path)
  here = train_step_outputs(LEVEL_CASES)
  assert sorted(default_level.files) == sorted(here)
  for name, value in here.items():
    np.testing.assert_allclose(default_level[name], value, rtol=1e-5, atol=1e-6, err_msg=name)
