"""The "Improved Techniques" switches: historical averaging, one-sided label smoothing and
minibatch discrimination, piece by piece against hand computation, then in the train step."""
import dataclasses
import functools
import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssgan_jax import config as config_lib
from ssgan_jax.data import input_pipeline
from ssgan_jax.networks import models
from ssgan_jax.training import checkpointing, losses, train, trained
from test_train import fixed_batch_config, train_on_fixed_batch

SWITCHES_OFF = {'historical_averaging': 0.0, 'one_sided_label_smoothing': 1.0,
                'minibatch_kernels': 0}


# ---------------------------------------------------------------------------
# Losses.

def test_label_smoothing_is_cross_entropy_to_the_real_target():
  s_unl, s_fake = jnp.array([0.5, -2.0]), jnp.array([1.0, 0.0])
  sp = lambda x: math.log1p(math.exp(x))   # -log(1 - sigmoid(-x)) = softplus(x)
  real = [0.9 * sp(-s) + 0.1 * sp(s) for s in (0.5, -2.0)]
  expected = 0.5 * (np.mean(real) + np.mean([sp(1.0), sp(0.0)]))
  np.testing.assert_allclose(losses.unsupervised_real_fake(s_unl, s_fake, 0.9), expected,
                             rtol=1e-6)


def test_label_smoothing_off_is_the_hard_target_loss_exactly():
  s_unl, s_fake = jax.random.normal(jax.random.key(0), (2, 16)) * 4
  hard = lambda s_unl, s_fake: 0.5 * (jnp.mean(jax.nn.softplus(-s_unl))
                                      + jnp.mean(jax.nn.softplus(s_fake)))
  smoothed = lambda s_unl, s_fake: losses.unsupervised_real_fake(s_unl, s_fake, 1.0)
  for fn in (lambda f: f, lambda f: jax.grad(f, argnums=(0, 1))):
    jax.tree.map(np.testing.assert_array_equal, fn(smoothed)(s_unl, s_fake),
                 fn(hard)(s_unl, s_fake))


def test_historical_averaging_sums_squares_over_the_parameter_tree():
  params = {'a': jnp.array([1.0, 2.0]), 'b': {'c': jnp.array([[3.0]])}}
  past_mean = {'a': jnp.array([0.0, 0.0]), 'b': {'c': jnp.array([[1.0]])}}
  assert float(losses.historical_averaging(params, past_mean)) == 1 + 4 + 4


def test_past_mean_is_the_mean_of_the_parameters_of_every_earlier_step():
  thetas = [{'w': jnp.array([float(v), -2.0 * v])} for v in (3, 1, 8, 4)]
  past_mean = thetas[0]   # the mean of no steps is theta_0
  for t, theta in enumerate(thetas):
    np.testing.assert_allclose(past_mean['w'], np.mean([p['w'] for p in thetas[:max(t, 1)]], 0))
    past_mean = losses.update_past_mean(past_mean, theta, jnp.int32(t))


# ---------------------------------------------------------------------------
# Minibatch discrimination.

def test_minibatch_similarity_and_nearest_distance_by_hand():
  # Three examples, two kernels of dimension 2; kernel 1 is kernel 0 doubled.
  m0_NxC = jnp.array([[0.0, 0.0], [1.0, 0.0], [0.0, 2.0]])   # L1 distances 1 (0-1), 2 (0-2), 3 (1-2)
  m_NxKxC = jnp.stack([m0_NxC, 2 * m0_NxC], axis=1)
  e = math.exp
  expected_NxK = [[e(-1) + e(-2), e(-2) + e(-4)],
                  [e(-1) + e(-3), e(-2) + e(-6)],
                  [e(-2) + e(-3), e(-4) + e(-6)]]
  np.testing.assert_allclose(models.minibatch_similarity(m_NxKxC), expected_NxK, rtol=1e-6)
  np.testing.assert_allclose(models.mean_nearest_distance(m_NxKxC), [4 / 3, 8 / 3], rtol=1e-6)


def test_minibatch_layer_compares_examples_only_within_their_group():
  layer = models.MinibatchDiscrimination(num_kernels=4, kernel_dim=3)
  x_a, x_b = jax.random.normal(jax.random.key(0), (2, 5, 6))
  variables = layer.init(jax.random.key(1), x_a)
  apply = jax.jit(layer.apply, static_argnames='group_size')
  together = apply(variables, jnp.concatenate([x_a, x_b]), group_size=5)
  alone = jnp.concatenate([apply(variables, x_a), apply(variables, x_b)])
  np.testing.assert_allclose(together, alone, rtol=1e-6, atol=1e-6)
  np.testing.assert_array_equal(together[:, :6], jnp.concatenate([x_a, x_b]))
  # Data-dependent init: the init batch's similarity features start at zero mean.
  np.testing.assert_allclose(jnp.mean(apply(variables, x_a)[:, 6:], 0), 0, atol=1e-6)


@pytest.mark.parametrize('family,num_features', [('mlp', 250), ('conv_small', 128),
                                                 ('conv_large', 192)])
def test_minibatch_discrimination_sits_before_the_output_layer(family, num_features):
  shape = (28, 28, 1) if family == 'mlp' else (32, 32, 3)
  d = models.MODEL_FAMILIES[family].discriminator(10).clone(minibatch_kernels=4,
                                                            minibatch_kernel_dim=2)
  params = jax.eval_shape(d.init, jax.random.key(0), jnp.zeros((6, *shape)))['params']
  output_layer = params[max(name for name in params if name.startswith('WNDense'))]
  assert output_layer['Dense_0']['kernel'].shape == (num_features + 4, 10)
  assert params['MinibatchDiscrimination_0']['log_scale'].shape == (4, 2)
  assert params['MinibatchDiscrimination_0']['Dense_0']['kernel'].shape == (num_features, 8)


def test_feature_matching_features_are_those_below_minibatch_discrimination():
  images = jax.random.uniform(jax.random.key(0), (6, 28, 28, 1))
  plain = models.MODEL_FAMILIES['mlp'].discriminator(10)
  with_mbd = plain.clone(minibatch_kernels=4, minibatch_kernel_dim=2)
  # The layers below are initialised as the plain D's, and give the same features: up to
  # rounding, as XLA may fuse the two programs differently (another initialisation would
  # differ by the features' own size, about 1).
  features = [jax.jit(d.apply)(jax.jit(d.init)(jax.random.key(0), images), images)[1]
              for d in (plain, with_mbd)]
  assert float(np.abs(features[0]).mean()) > 0.1
  np.testing.assert_allclose(*features, rtol=1e-4, atol=1e-4)


def test_minibatch_evaluation_compares_groups_of_the_training_size():
  """The similarities are sums over a group, so evaluation uses training's group size:
  predictions do not depend on the evaluation batch, and differ from one big group's."""
  config = config_lib.Config(minibatch_kernels=4, minibatch_kernel_dim=2, batch_size=10)
  info = input_pipeline.DatasetInfo(10, (28, 28, 1), None)
  setup = train.Setup.create(config, info)
  images = np.random.default_rng(0).integers(0, 256, (45, 28, 28, 1), np.uint8)
  state = train.create_train_state(setup, images[:20])
  probabilities = {
      size: trained.Trained(train.Setup.create(config.replace(eval_batch_size=size), info),
                            state, info, 0).class_probabilities(images)
      for size in (20, 40)}
  np.testing.assert_allclose(probabilities[20], probabilities[40], rtol=1e-5, atol=1e-6)
  few = trained.Trained(setup, state, info, 0).class_probabilities(images[:3])
  assert few.shape == (3, 10)  # fewer examples than a group: padded to one whole group
  variables = train.eval_disc_variables(setup, state, 'ema')
  one_group, _ = setup.disc.apply(variables, setup.family.scale_pixels(images[:40]))
  assert not np.allclose(jax.nn.softmax(one_group[:, :10]), probabilities[20][:40], atol=1e-3)


# ---------------------------------------------------------------------------
# Config.

@pytest.mark.parametrize('changes,flag', [
    ({'historical_averaging': -0.1}, 'historical_averaging'),
    ({'one_sided_label_smoothing': 0.5}, 'one_sided_label_smoothing'),
    ({'one_sided_label_smoothing': 1.1}, 'one_sided_label_smoothing'),
    ({'one_sided_label_smoothing': 0.9, 'mode': 'supervised'}, 'one_sided_label_smoothing'),
    ({'minibatch_kernels': -1}, 'minibatch_kernels'),
    ({'minibatch_kernel_dim': 0}, 'minibatch_kernel_dim'),
    ({'minibatch_kernels': 3, 'batch_size': 100, 'eval_batch_size': 250}, 'eval_batch_size'),
    ({'weight_norm_init': 'zero'}, 'weight_norm_init'),
    ({'gen_steps': 0}, 'gen_steps'),
    ({'gen_steps': 2, 'mode': 'supervised'}, 'gen_steps'),
    ({'gen_steps': 3, 'gen_steps_until': -1}, 'gen_steps_until'),
    ({'gen_steps_until': 6000}, 'gen_steps_until'),  # with one G update a step it does nothing
    ({'weight_norm_scales': 'hidden'}, 'weight_norm_scales'),
    ({'weight_norm_init': 'unit', 'model': 'resnet18'}, 'weight_norm_init'),
    ({'weight_norm_scales': 'all', 'model': 'resnet18'}, 'weight_norm_scales'),
    ({'gen_output_layer': 'linear'}, 'gen_output_layer'),
    ({'gen_output_layer': 'plain', 'model': 'resnet18'}, 'gen_output_layer')])
def test_bad_switch_values_name_the_flag(changes, flag):
  with pytest.raises(config_lib.ConfigError, match=f'^--{flag}='):
    config_lib.validate(config_lib.Config(**changes))


def test_switches_are_off_by_default_and_cannot_change_on_resume():
  default = config_lib.Config()
  assert {name: getattr(default, name) for name in SWITCHES_OFF} == SWITCHES_OFF
  switched = default.replace(historical_averaging=0.1, one_sided_label_smoothing=0.9,
                             minibatch_kernels=3, minibatch_kernel_dim=2)
  assert config_lib.incompatible_fields(dataclasses.asdict(default), switched) == [
      'historical_averaging', 'minibatch_kernel_dim', 'minibatch_kernels',
      'one_sided_label_smoothing']


# ---------------------------------------------------------------------------
# Training on the fixed batch of test_train (15 steps, shared with its tests).

def assert_trees_equal(a, b):
  jax.tree.map(np.testing.assert_array_equal, a, b)


def assert_trees_close(a, b):
  """Equal up to float32 rounding: a different program may fuse the same sums differently."""
  jax.tree.map(functools.partial(np.testing.assert_allclose, rtol=1e-5, atol=1e-6), a, b)


def assert_trees_differ(a, b, by=1e-3):
  """Some parameter moved by more than `by`: far beyond rounding."""
  assert max(jax.tree.leaves(jax.tree.map(lambda x, y: float(np.max(np.abs(x - y))), a, b))) > by


def test_switches_off_add_no_state_and_no_parameters():
  _, _, _, _, final = train_on_fixed_batch(fixed_batch_config())
  assert final.disc_past_mean is None and final.gen_past_mean is None
  assert not [name for name in final.disc_params if 'Minibatch' in name]


def test_historical_averaging_starts_as_the_default_then_pulls_toward_the_past_mean():
  _, _, initial, first, final = train_on_fixed_batch(fixed_batch_config(historical_averaging=1.0))
  _, _, _, default_first, default_final = train_on_fixed_batch(fixed_batch_config())
  # At step 0 the past mean is theta_0: no penalty, so the first step is the default's.
  assert_trees_close((first.disc_params, first.gen_params),
                     (default_first.disc_params, default_first.gen_params))
  assert_trees_equal(first.disc_past_mean, initial.disc_params)
  assert_trees_differ(final.disc_params, default_final.disc_params)
  assert_trees_differ(final.gen_params, default_final.gen_params)
  # The pull toward the past keeps the parameters closer to it than without.
  for player in ('disc', 'gen'):
    past = getattr(final, f'{player}_past_mean')
    assert (losses.historical_averaging(getattr(final, f'{player}_params'), past)
            < losses.historical_averaging(getattr(default_final, f'{player}_params'), past))


def test_historical_averaging_state_survives_a_checkpoint_round_trip(tmp_path):
  config = fixed_batch_config(historical_averaging=1.0)
  setup, batch, initial, _, final = train_on_fixed_batch(config)
  checkpointer = checkpointing.Checkpointer(str(tmp_path), config)
  checkpointer.save(int(final.step), final, config)
  checkpointer.close()
  restored = checkpointing.Checkpointer(str(tmp_path), config).restore(initial)
  assert_trees_differ(final.disc_past_mean, initial.disc_past_mean)
  assert_trees_equal((restored.disc_past_mean, restored.gen_past_mean),
                     (final.disc_past_mean, final.gen_past_mean))


def test_label_smoothing_changes_training():
  _, _, _, _, final = train_on_fixed_batch(fixed_batch_config(one_sided_label_smoothing=0.9))
  _, _, _, _, default_final = train_on_fixed_batch(fixed_batch_config())
  assert_trees_differ(final.disc_params, default_final.disc_params)


def test_minibatch_discrimination_layer_trains():
  _, _, initial, _, final = train_on_fixed_batch(
      fixed_batch_config(minibatch_kernels=6, minibatch_kernel_dim=3))
  layer = 'MinibatchDiscrimination_0'
  assert_trees_differ(final.disc_params[layer], initial.disc_params[layer])
