"""Tests of ssgan_jax.networks.models: shapes, parameter counts, data-dependent init, weight norm,
per-example noise and pixel scaling, for every model family.

Expected parameter counts are written out from the architecture (layer widths and kernel
sizes), not read back from the modules. Everything runs through `jax.jit` on small
batches, and each model is built and initialised once per session (`functools.cache`),
because compiling dominates the cost on CPU.
"""
import functools
import math
import re

import flax
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssgan_jax.networks import cpu_kernels, kernels, models, xla_cpu

FAMILIES = ['mlp', 'conv_small', 'conv_large']
IMAGE_SHAPE = {'mlp': (28, 28, 1), 'conv_small': (32, 32, 3), 'conv_large': (32, 32, 3)}
FEATURES = {'mlp': 250, 'conv_small': 128, 'conv_large': 192}
CONV_WIDTHS = {'conv_small': (64, 128), 'conv_large': (96, 192)}
OUTPUT_INIT_SCALE = {'mlp': 1.0, 'conv_small': 0.1, 'conv_large': 0.1}
K = 10       # classes
B = 8        # batch for discriminators (even: split in halves below)
B_G = 4      # batch for generators


def num_params(tree) -> int:
  return sum(math.prod(x.shape) for x in jax.tree_util.tree_leaves(tree))


def random_images(family, batch=B, seed=0):
  low, high = models.MODEL_FAMILIES[family].pixel_range
  return jax.random.uniform(jax.random.key(seed), (batch, *IMAGE_SHAPE[family]),
                            minval=low, maxval=high)


def example_keys(batch=B, seed=1):
  return jax.random.split(jax.random.key(seed), batch)


# ---------------------------------------------------------------------------
# Built and initialised once per session.

@functools.cache
def discriminator(family):
  """(D with K + 1 outputs, variables, init images, apply).

  `apply(variables, images, keys)` is jitted and returns ((logits, features),
  intermediates): one function for every test, so each shape compiles once.
  """
  d = models.MODEL_FAMILIES[family].discriminator(K + 1)
  images = random_images(family)
  variables = jax.jit(d.init)(jax.random.key(0), images)

  @jax.jit
  def apply(variables, images, keys):
    out, state = d.apply(variables, images, keys, capture_intermediates=True)
    return out, state['intermediates']

  return d, variables, images, apply


@functools.cache
def _init_generator(g):
  z = models.sample_latent(example_keys(B_G, seed=2))
  variables = jax.jit(g.init)(jax.random.key(0), z)
  apply = jax.jit(functools.partial(g.apply, mutable=['batch_stats']))
  return g, variables, z, apply


def generator(family):
  """(G, variables, latent z, jitted apply returning (images, {'batch_stats': ...})).

  Cached per module, so the conv families (same generator) share one.
  """
  return _init_generator(
      models.MODEL_FAMILIES[family].generator(IMAGE_SHAPE[family], None))


@functools.cache
def d_outputs(family, keys_seed=None, part=None):
  """D's (logits, features) on its init images; keys from `keys_seed` (None:
  deterministic); `part` 0/1 applies it to that half of the batch and of the keys."""
  _, variables, images, apply = discriminator(family)
  keys = None if keys_seed is None else example_keys(B, keys_seed)
  if part is not None:
    half = slice(part * B // 2, (part + 1) * B // 2)
    images = images[half]
    keys = None if keys is None else keys[half]
  return jax.device_get(apply(variables, images, keys)[0])


# ---------------------------------------------------------------------------
# Architecture formulas.

def expected_d_counts(family, num_outputs):
  """(trainable 'params', fixed 'constants') of the discriminator."""
  if family == 'mlp':
    widths = [784, 1000, 500, 250, 250, 250]
    hidden = list(zip(widths[:-1], widths[1:]))
    head_in = widths[-1]
    hidden_kernels = sum(i * o for i, o in hidden)
    hidden_units = sum(o for _, o in hidden)
  else:
    n, w = CONV_WIDTHS[family]
    c = IMAGE_SHAPE[family][-1]
    conv3 = [(c, n), (n, n), (n, n), (n, w), (w, w), (w, w), (w, w)]  # last is VALID
    conv1 = [(w, w), (w, w)]
    head_in = w
    hidden_kernels = sum(9 * i * o for i, o in conv3) + sum(i * o for i, o in conv1)
    hidden_units = sum(o for _, o in conv3 + conv1)
  # Hidden layers: kernel + bias trained, scale fixed. Head: kernel + bias + scale trained.
  params = hidden_kernels + hidden_units + head_in * num_outputs + 2 * num_outputs
  constants = hidden_units
  return params, constants


def expected_g_counts(family):
  """(trainable 'params', 'batch_stats') of the generator."""
  z = models.LATENT_DIM
  if family == 'mlp':
    out = math.prod(IMAGE_SHAPE[family])
    params = (z * 500 + 500            # dense (no bias), BN bias (no scale)
              + 500 * 500 + 500
              + 500 * out + 2 * out)   # weight-normed dense: kernel, scale, bias
    bn_units = 500 + 500
  else:
    c = IMAGE_SHAPE[family][-1]
    params = (z * 4 * 4 * 512 + 4 * 4 * 512       # dense (no bias), BN bias per unit
              + 25 * 512 * 256 + 256               # 5x5 transposed convs, BN bias
              + 25 * 256 * 128 + 128
              + 25 * 128 * c + 2 * c)              # weight-normed: kernel, scale, bias
    bn_units = 4 * 4 * 512 + 256 + 128
  return params, 2 * bn_units                      # batch stats: mean and var


def abstract_discriminator(family, num_outputs):
  """(D, abstract image batch, abstract variables): shapes only, nothing computed."""
  d = models.MODEL_FAMILIES[family].discriminator(num_outputs)
  images = jax.ShapeDtypeStruct((B, *IMAGE_SHAPE[family]), jnp.float32)
  return d, images, jax.eval_shape(d.init, jax.random.key(0), images)


# ---------------------------------------------------------------------------
# 1. Shapes and ranges.

@pytest.mark.parametrize('extra', [0, 1])
@pytest.mark.parametrize('family', FAMILIES)
def test_discriminator_output_shapes(family, extra):
  d, images, variables = abstract_discriminator(family, K + extra)
  for keys in (None, jax.eval_shape(example_keys)):
    logits, features = jax.eval_shape(d.apply, variables, images, keys)
    assert logits.shape == (B, K + extra)
    assert features.shape == (B, FEATURES[family])
    assert logits.dtype == features.dtype == jnp.float32


@pytest.mark.parametrize('family', FAMILIES)
def test_generator_output_shape_and_range(family):
  _, variables, z, apply = generator(family)
  images, updates = apply(variables, z)
  assert images.shape == (B_G, *IMAGE_SHAPE[family])
  assert images.dtype == jnp.float32
  low, high = models.MODEL_FAMILIES[family].pixel_range
  assert low <= float(images.min()) and float(images.max()) <= high
  assert float(images.max()) - float(images.min()) > 1e-3     # not a constant image
  assert set(updates) == {'batch_stats'}


def test_generator_batch_norm_over_named_axis():
  """With `axis_name`, G's batch norm pools statistics over that axis: the batch split in
  two shards (vmap standing in for devices) gives the unsplit batch's images and stats."""
  _, variables, z, apply = generator('mlp')
  images, updates = apply(variables, z)
  g = models.MODEL_FAMILIES['mlp'].generator(IMAGE_SHAPE['mlp'], 'batch')
  sharded = jax.jit(jax.vmap(
      lambda zs: g.apply(variables, zs, mutable=['batch_stats']), axis_name='batch'))
  images_s, updates_s = sharded(z.reshape(2, B_G // 2, -1))
  np.testing.assert_allclose(images_s.reshape(images.shape), images, atol=1e-5)
  stats = flax.traverse_util.flatten_dict(updates['batch_stats'])
  for path, stat in flax.traverse_util.flatten_dict(updates_s['batch_stats']).items():
    for shard in stat:
      np.testing.assert_allclose(shard, stats[path], rtol=1e-4, atol=1e-6)


def test_sample_latent():
  keys = example_keys(6, seed=3)
  z = models.sample_latent(keys)
  assert z.shape == (6, models.LATENT_DIM)
  assert float(z.min()) >= 0.0 and float(z.max()) < 1.0
  np.testing.assert_array_equal(models.sample_latent(keys[2:4]), z[2:4])  # per key
  assert not np.allclose(z[0], z[1])


# ---------------------------------------------------------------------------
# 2. Parameter counts.

@pytest.mark.parametrize('extra', [0, 1])
@pytest.mark.parametrize('family', FAMILIES)
def test_discriminator_parameter_counts(family, extra):
  d, images, variables = abstract_discriminator(family, K + extra)
  assert set(variables) == {'params', 'constants'}
  params, constants = expected_d_counts(family, K + extra)
  assert num_params(variables['params']) == params
  assert num_params(variables['constants']) == constants

  # The only trainable scale is the head's; every hidden layer's lives in 'constants'.
  flat_params = flax.traverse_util.flatten_dict(variables['params'], sep='/')
  scales = [p for p in flat_params if p.endswith('scale')]
  assert len(scales) == 1 and flat_params[scales[0]].shape == (K + extra,)
  n_hidden = 5 if family == 'mlp' else 9
  flat_constants = flax.traverse_util.flatten_dict(variables['constants'], sep='/')
  assert len(flat_constants) == n_hidden
  assert all(p.endswith('scale') for p in flat_constants)


@pytest.mark.parametrize('family', FAMILIES)
def test_generator_parameter_counts(family):
  _, variables, _, _ = generator(family)
  assert set(variables) == {'params', 'batch_stats'}      # no fixed scales in G
  params, stats = expected_g_counts(family)
  assert num_params(variables['params']) == params
  assert num_params(variables['batch_stats']) == stats
  flat = flax.traverse_util.flatten_dict(variables['params'], sep='/')
  scales = [p for p in flat if p.endswith('scale')]         # BN has no scale
  # The output layer's scale: per pixel (MLP dense) or per channel (transposed conv).
  head_units = math.prod(IMAGE_SHAPE[family]) if family == 'mlp' else IMAGE_SHAPE[family][-1]
  assert len(scales) == 1 and flat[scales[0]].shape == (head_units,)


# ---------------------------------------------------------------------------
# 3. Data-dependent init.

@pytest.mark.parametrize('family', FAMILIES)
def test_data_dependent_init_normalises_logits(family):
  logits, _ = d_outputs(family)
  logits = np.asarray(logits, np.float64)
  scale = OUTPUT_INIT_SCALE[family]
  np.testing.assert_allclose(logits.mean(0), 0.0, atol=1e-4 * scale)
  np.testing.assert_allclose(logits.std(0), scale, rtol=1e-3)


@pytest.mark.parametrize('family', FAMILIES)
def test_data_dependent_init_normalises_hidden_layers(family):
  """Every hidden weight-normed layer's output (before the nonlinearity) is normalised
  on the init batch, and its fixed scale is what did it."""
  _, variables, images, apply = discriminator(family)
  _, intermediates = apply(variables, images, None)
  outputs = flax.traverse_util.flatten_dict(intermediates, sep='/')
  constants = flax.traverse_util.flatten_dict(variables['constants'], sep='/')
  assert len(constants) == (5 if family == 'mlp' else 9)
  for path, scale in constants.items():
    layer = path.rsplit('/', 2)[0]                 # e.g. WNDense_0 or WNConv_3
    (y,) = outputs[f'{layer}/ScaleBias_0/__call__']
    y = np.asarray(y, np.float64).reshape(-1, y.shape[-1])
    assert scale.shape == (y.shape[-1],)
    assert np.all(np.asarray(scale) > 0) and not np.allclose(scale, 1.0)
    np.testing.assert_allclose(y.mean(0), 0.0, atol=1e-4, err_msg=layer)
    np.testing.assert_allclose(y.std(0), 1.0, rtol=1e-3, err_msg=layer)


def test_generator_output_layer_without_data_init():
  """The MLP generator's output layer starts at scale 1, bias 0 (no data init)."""
  _, variables, _, _ = generator('mlp')
  head = variables['params']['WNDense_0']['ScaleBias_0']
  np.testing.assert_array_equal(head['scale'], 1.0)
  np.testing.assert_array_equal(head['bias'], 0.0)


@pytest.mark.parametrize('layer,plain', [
    (models.WNDense(6, normalised=False), nn.Dense(6)),
    (models.WNConv(6, kernels.KernelChoices(), kernel=3, stride=2, normalised=False),
     nn.Conv(6, (3, 3), strides=2, padding='SAME')),
    (models.WNConv(6, kernels.KernelChoices(), kernel=5, stride=2, transpose=True,
                   normalised=False),
     nn.ConvTranspose(6, (5, 5), strides=(2, 2), padding='SAME'))])
def test_a_layer_without_weight_norm_is_the_plain_layer(layer, plain):
  """normalised=False (--gen_output_layer=plain): the kernel as it is plus a bias that starts
  at 0, no scale: Flax's own layer with the same kernel and bias."""
  x = jax.random.normal(jax.random.key(1), (2, 8, 8, 4) if 'Conv' in type(layer).__name__
                        else (2, 4))
  params = layer.init(jax.random.key(0), x)['params']
  (kernel_name, kernel), = ((k, v['kernel']) for k, v in params.items() if 'kernel' in v)
  assert set(params.pop(kernel_name)) == {'kernel'} and set(params) == {'ScaleBias_0'}
  bias = params['ScaleBias_0']['bias']
  np.testing.assert_array_equal(bias, 0.0)
  bias = bias + jnp.arange(6.0)  # a trained bias
  y = layer.apply({'params': {kernel_name: {'kernel': kernel}, 'ScaleBias_0': {'bias': bias}}}, x)
  expected = plain.apply({'params': {'kernel': kernel, 'bias': bias}}, x)
  np.testing.assert_allclose(y, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('family,output_layer', [('mlp', 'WNDense_0'), ('conv_small', 'WNConv_0')])
def test_a_plain_generator_output_layer_has_no_scale(family, output_layer):
  """--gen_output_layer=plain: G's output layer keeps its kernel's shape and initialiser and
  a bias, and has no scale g."""
  g, default, z, _ = generator(family)
  variables = g.clone(output_layer='plain').init(jax.random.key(0), z)
  layer, default_layer = variables['params'][output_layer], default['params'][output_layer]
  assert set(layer['ScaleBias_0']) == {'bias'} and 'scale' in default_layer['ScaleBias_0']
  (name, kernel), = ((k, v['kernel']) for k, v in layer.items() if k != 'ScaleBias_0')
  np.testing.assert_allclose(kernel, default_layer[name]['kernel'], rtol=1e-6, atol=1e-7)


@pytest.mark.parametrize('family', ['mlp', 'conv_small'])
def test_weight_norm_unit_init_and_all_scales_trained(family):
  """WeightNorm('unit', 'all') (--weight_norm_init=unit --weight_norm_scales=all) starts
  every scale at 1 and bias at 0 and trains every scale (no 'constants'); the kernels are
  those of the default init."""
  choice = models.WeightNorm('unit', 'all')
  d = models.MODEL_FAMILIES[family].discriminator(K + 1).clone(weight_norm=choice)
  variables = d.init(jax.random.key(0), random_images(family))
  assert set(variables) == {'params'}
  default = discriminator(family)[1]
  expected = {**flax.traverse_util.flatten_dict(default['params']),
              **flax.traverse_util.flatten_dict(default['constants'])}
  params = flax.traverse_util.flatten_dict(variables['params'])
  assert set(params) == set(expected)
  for path, value in params.items():
    if path[-2:] == ('ScaleBias_0', 'scale'):
      np.testing.assert_array_equal(value, 1.0)
    elif path[-2:] == ('ScaleBias_0', 'bias'):
      np.testing.assert_array_equal(value, 0.0)
    else:
      np.testing.assert_allclose(value, expected[path], rtol=1e-5, atol=1e-7, err_msg=str(path))
  if family != 'mlp':  # the conv G's output layer; the MLP G's starts at 1 whatever the choice
    g = generator(family)[0].clone(weight_norm=choice)
    head = g.init(jax.random.key(0), generator(family)[2])['params']['WNConv_0']['ScaleBias_0']
    np.testing.assert_array_equal(head['scale'], 1.0)
    np.testing.assert_array_equal(head['bias'], 0.0)


# ---------------------------------------------------------------------------
# 4. Weight normalisation.

def _kernel_path(family):
  return ('WNDense_1', 'Dense_0', 'kernel') if family == 'mlp' else (
      'WNConv_1', 'Conv_0', 'kernel')


def _map_kernel(variables, path, fn):
  params = flax.core.unfreeze(variables['params'])
  node = params
  for key in path[:-1]:
    node = node[key]
  node[path[-1]] = fn(node[path[-1]])
  return {**variables, 'params': params}


@pytest.mark.parametrize('family', FAMILIES)
def test_weight_norm_invariant_to_kernel_scale(family):
  _, variables, images, apply = discriminator(family)
  path = _kernel_path(family)
  logits, features = d_outputs(family)

  # Each output feature's kernel is normalised on its own: scale each by a different factor.
  factors = lambda v: jnp.linspace(0.5, 3.0, v.shape[-1])
  scaled = _map_kernel(variables, path, lambda v: v * factors(v))
  logits3, features3 = apply(scaled, images, None)[0]
  np.testing.assert_allclose(logits3, logits, rtol=1e-4, atol=1e-5)
  np.testing.assert_allclose(features3, features, rtol=1e-4, atol=1e-5)

  # ...but not to other changes of the same kernel (the test can see the kernel).
  perturbed = _map_kernel(
      variables, path, lambda v: v + 0.05 * jax.random.normal(jax.random.key(5), v.shape))
  logits_p, _ = apply(perturbed, images, None)[0]
  assert np.abs(np.asarray(logits_p) - logits).max() > 1e-3


@pytest.mark.parametrize('family', FAMILIES)
def test_stored_kernels_keep_their_initial_scale(family):
  """v is stored as initialised (N(0, 0.1) for the MLP, N(0, 0.05) for conv), not normalised:
  its norm sets the effective step size on its direction, as in the reference code."""
  _, variables, _, _ = discriminator(family)
  node = variables['params']
  for key in _kernel_path(family):
    node = node[key]
  expected_std = 0.1 if family == 'mlp' else 0.05
  assert abs(float(jnp.std(node)) - expected_std) < 0.1 * expected_std


@pytest.mark.parametrize('family', FAMILIES)
def test_generator_weight_norm_invariant_to_kernel_scale(family):
  _, variables, z, apply = generator(family)
  path = (('WNDense_0', 'Dense_0', 'kernel') if family == 'mlp'
          else ('WNConv_0', 'ConvTranspose_0', 'kernel'))
  images, _ = apply(variables, z)
  images3, _ = apply(_map_kernel(variables, path, lambda v: 3.0 * v), z)
  np.testing.assert_allclose(images3, images, rtol=1e-4, atol=1e-5)


# ---------------------------------------------------------------------------
# 5. Per-example noise.

@pytest.mark.parametrize('family', FAMILIES)
def test_deterministic_without_keys(family):
  _, variables, images, apply = discriminator(family)
  first = d_outputs(family)
  second = apply(variables, images, None)[0]
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('family', FAMILIES)
def test_keys_make_noise(family):
  det_logits, det_features = d_outputs(family)
  logits, features = d_outputs(family, keys_seed=1)
  # Every example is perturbed (noise or dropout), logits and features alike.
  assert np.all(np.abs(logits - det_logits).max(1) > 1e-3)
  assert np.all(np.abs(features - det_features).max(1) > 1e-3)
  other_logits, _ = d_outputs(family, keys_seed=2)
  assert np.all(np.abs(other_logits - logits).max(1) > 1e-3)

  # The input is perturbed too (Gaussian noise for MLP, dropout for conv): the first
  # layer's outputs already differ.
  _, variables, images, apply = discriminator(family)
  first = 'WNDense_0' if family == 'mlp' else 'WNConv_0'
  (det_first,) = apply(variables, images, None)[1][first]['__call__']
  (noisy_first,) = apply(variables, images, example_keys(B, seed=1))[1][first]['__call__']
  assert np.all(np.abs(np.asarray(noisy_first - det_first)).reshape(B, -1).max(1) > 1e-3)


@pytest.mark.parametrize('family', FAMILIES)
def test_features_are_last_hidden_activations_before_noise(family):
  """Feature matching uses the last hidden layer after its nonlinearity (and, for conv,
  the global mean pool) but before any noise is added, with keys as well as without."""
  _, variables, images, apply = discriminator(family)
  for keys in (None, example_keys(B, seed=1)):
    (_, features), intermediates = apply(variables, images, keys)
    if family == 'mlp':
      (pre,) = intermediates['WNDense_4']['__call__']
      expected = jax.nn.relu(pre)
    else:
      (pre,) = intermediates['WNConv_8']['__call__']
      expected = jnp.mean(jax.nn.leaky_relu(pre, 0.2), axis=(1, 2))
    np.testing.assert_allclose(features, expected, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('family', FAMILIES)
def test_same_keys_same_noise(family):
  _, variables, images, apply = discriminator(family)
  first = d_outputs(family, keys_seed=1)
  second = apply(variables, images, example_keys(B, seed=1))[0]
  for a, b in zip(first, second):
    np.testing.assert_array_equal(a, b)


@pytest.mark.parametrize('family', FAMILIES)
def test_noise_depends_only_on_the_example_key(family):
  """Halves of the batch with their halves of the keys give the whole batch's outputs:
  what lets data-parallel training reproduce single-device noise."""
  whole = d_outputs(family, keys_seed=1)
  halves = [d_outputs(family, keys_seed=1, part=p) for p in (0, 1)]
  for i in range(2):        # logits, features
    joined = np.concatenate([halves[0][i], halves[1][i]])
    # Products over 4 rows and over 8 round differently (XLA:CPU's Eigen kernels block by the
    # row count); noise drawn from other keys would differ by far more than this.
    np.testing.assert_allclose(joined, whole[i], rtol=1e-4, atol=1e-4)


def test_example_noise_statistics():
  """The noise helper: dropout keeps about 1 - rate of the entries, scaled by
  1 / (1 - rate); Gaussian noise has the requested std; both need keys."""
  x = jnp.ones((4, 64, 64))
  keys = example_keys(4, seed=7)
  for rate in (0.2, 0.5):
    dropped = np.asarray(models.ExampleNoise(keys).dropout(x, rate))
    assert set(np.unique(dropped)) <= {0.0, np.float32(1 / (1 - rate))}
    assert abs((dropped != 0).mean() - (1 - rate)) < 0.02
  noisy = np.asarray(models.ExampleNoise(keys).gaussian(x, 0.3))
  assert abs((noisy - 1).std() - 0.3) < 0.01 and abs((noisy - 1).mean()) < 0.01
  np.testing.assert_array_equal(models.ExampleNoise(None).dropout(x, 0.5), x)
  np.testing.assert_array_equal(models.ExampleNoise(None).gaussian(x, 0.5), x)
  # Successive draws from one ExampleNoise differ (one fresh key per layer).
  noise = models.ExampleNoise(keys)
  assert not np.array_equal(noise.gaussian(x, 0.3), noise.gaussian(x, 0.3))


@pytest.mark.parametrize('p', [0.5, 0.75, 0.25, 3 / 256, 0.8, 0.0, 1.0])
def test_bernoulli_mask_frequency_and_independence(p):
  """Each element is True with probability p, neighbours (the bits of one word) and
  elements a word apart alike uncorrelated; the shape need not fill whole words."""
  mask = np.asarray(cpu_kernels.bernoulli_mask(jax.random.key(3), p, (400, 33, 31)))
  assert mask.shape == (400, 33, 31) and mask.dtype == bool
  flat = mask.reshape(-1).astype(np.float64)
  tolerance = 5 * np.sqrt(p * (1 - p) / flat.size) + 1e-12
  assert abs(flat.mean() - p) <= tolerance
  if 0 < p < 1:
    for lag in (1, 32):
      correlation = np.corrcoef(flat[:-lag], flat[lag:])[0, 1]
      assert abs(correlation) < 0.01


def test_bernoulli_mask_differs_between_keys():
  masks = [np.asarray(cpu_kernels.bernoulli_mask(jax.random.key(k), 0.5, (64, 64))) for k in (1, 2)]
  assert 0.4 < (masks[0] != masks[1]).mean() < 0.6


# ---------------------------------------------------------------------------
# 6. Pixel scaling.

@pytest.mark.parametrize('family', FAMILIES)
def test_scale_pixels(family):
  fam = models.MODEL_FAMILIES[family]
  low, high = fam.pixel_range
  pixels = jnp.array([0, 51, 255], jnp.uint8)
  scaled = fam.scale_pixels(pixels)
  assert scaled.dtype == jnp.float32
  np.testing.assert_allclose(scaled, [low, low + 0.2 * (high - low), high], atol=1e-6)


# ---------------------------------------------------------------------------
# 7. Convolution algorithms.

def value_and_gradients(module, variables, x, cotangent):
  """<module(x), cotangent> and its gradients for the variables and for x."""
  loss = lambda v, x: jnp.vdot(module.apply(v, x), cotangent)
  return jax.value_and_grad(loss, (0, 1))(variables, x)


def assert_same_function(ours, flax_module, x, output_shape):
  """Same initial kernel, same outputs, same gradients for the kernel and the input."""
  variables = ours.init(jax.random.key(1), x)
  np.testing.assert_array_equal(variables['params']['kernel'],
                                flax_module.init(jax.random.key(1), x)['params']['kernel'])
  cotangent = jax.random.normal(jax.random.key(2), output_shape)
  value, (grad_v, grad_x) = value_and_gradients(ours, variables, x, cotangent)
  flax_value, (flax_grad_v, flax_grad_x) = value_and_gradients(flax_module, variables, x,
                                                               cotangent)
  np.testing.assert_allclose(value, flax_value, rtol=1e-5)
  np.testing.assert_allclose(grad_x, flax_grad_x, rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(grad_v['params']['kernel'], flax_grad_v['params']['kernel'],
                             rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('kernel,stride', [(5, 2), (4, 2), (3, 2), (2, 2), (1, 2), (5, 3),
                                           (3, 1)])
# The dilated algorithm is one XLA op, whose kernel gradient is XLA's.
@pytest.mark.parametrize('algorithm,kernel_gradient', [('phases', 'patches'), ('phases', 'xla'),
                                                       ('subpixel', 'patches'),
                                                       ('subpixel', 'xla'), ('dilated', 'xla')])
def test_conv_transpose_is_flax_conv_transpose(kernel, stride, algorithm, kernel_gradient):
  """Every algorithm gives nn.ConvTranspose's 'SAME' outputs and gradients, from the same
  initial kernel, for odd and even kernels, strides below and above the kernel."""
  algorithms = kernels.KernelChoices(transpose=algorithm, kernel_gradient=kernel_gradient)
  flax_conv = flax.linen.ConvTranspose(4, (kernel, kernel), strides=(stride, stride),
                                       padding='SAME', use_bias=False,
                                       kernel_init=flax.linen.initializers.normal(0.05))
  assert_same_function(models.ConvTranspose(4, kernel, stride, algorithms), flax_conv,
                       jax.random.normal(jax.random.key(0), (2, 5, 6, 3)),
                       (2, 5 * stride, 6 * stride, 4))


@pytest.mark.parametrize('kernel,stride,padding', [(3, 1, 'SAME'), (3, 2, 'SAME'),
                                                   (3, 1, 'VALID'), (1, 1, 'SAME'),
                                                   (4, 2, 'SAME'), (5, 3, 'VALID')])
@pytest.mark.parametrize('input_gradient,kernel_gradient', [('subpixel', 'patches'),
                                                            ('dilated', 'patches'),
                                                            ('subpixel', 'xla'),
                                                            ('phases', 'xla')])
def test_conv_is_flax_conv(kernel, stride, padding, input_gradient, kernel_gradient):
  """D's convolution gives nn.Conv's outputs and gradients with every gradient algorithm."""
  ours = models.Conv(4, kernel, stride, padding, kernels.KernelChoices(
      input_gradient=input_gradient, kernel_gradient=kernel_gradient))
  flax_conv = flax.linen.Conv(4, (kernel, kernel), strides=(stride, stride), padding=padding,
                              use_bias=False, kernel_init=flax.linen.initializers.normal(0.05))
  x = jax.random.normal(jax.random.key(0), (3, 9, 8, 5))
  output_shape = jax.eval_shape(lambda x: flax_conv.init_with_output(jax.random.key(1), x)[0],
                                x).shape
  assert_same_function(ours, flax_conv, x, output_shape)


@pytest.mark.parametrize('rows', [3, 8, 20])
def test_weight_normalised_dense_is_x_times_unit_columns(rows):
  """Whether it scales the output (fewer rows than the 8 inputs) or the kernel, Dense is
  x @ unit_columns(v), with the same gradients."""
  layer = models.Dense(5, flax.linen.initializers.normal(0.3))
  x = jax.random.normal(jax.random.key(0), (rows, 8))
  variables = layer.init(jax.random.key(1), x)
  expected = lambda x, v: x @ models.unit_columns(v)
  ours = lambda x, v: layer.apply({'params': {'kernel': v}}, x)
  v = variables['params']['kernel']
  np.testing.assert_allclose(ours(x, v), expected(x, v), rtol=1e-5, atol=1e-6)
  loss = lambda f: lambda x, v: jnp.sum(jnp.sin(f(x, v)))
  for grad, reference in zip(jax.grad(loss(ours), (0, 1))(x, v),
                             jax.grad(loss(expected), (0, 1))(x, v)):
    np.testing.assert_allclose(grad, reference, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize('input_hw,kernel,stride,padding', [
    ((2, 2), 3, 1, 'SAME'), ((1, 1), 3, 1, 'SAME'), ((2, 1), 3, 2, 'SAME'), ((2, 2), 1, 1, 'SAME'),
    ((2, 2), 2, 1, 'VALID'), ((2, 2), 3, 1, ((2, 0), (-1, 2)))])
def test_tiny_maps_by_patches_are_xla_s_convolution(input_hw, kernel, stride, padding):
  """Tiny maps by patches: XLA's outputs and gradients, for odd and even kernels, strides,
  'SAME', 'VALID' and uneven or negative padding, with no convolution in the compiled step."""
  x = jax.random.normal(jax.random.key(0), (3, *input_hw, 5))
  weights = jax.random.normal(jax.random.key(1), (kernel, kernel, 5, 4))
  ours = lambda x, w: kernels.conv(x, w, stride, padding, kernels.KernelChoices(
      tiny_maps='patches', backend='cpu'))
  xla = lambda x, w: jax.lax.conv_general_dilated(x, w, (stride, stride), padding,
                                                  dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  y, xla_vjp = jax.vjp(xla, x, weights)
  dy = jax.random.normal(jax.random.key(2), y.shape)
  y_ours, our_vjp = jax.vjp(ours, x, weights)
  np.testing.assert_allclose(y_ours, y, rtol=1e-5, atol=1e-5)
  for grad, expected in zip(our_vjp(dy), xla_vjp(dy)):
    assert np.max(np.abs(expected)) > 0
    np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-5)
  step = jax.jit(lambda x, w: jax.grad(lambda x, w: jnp.sum(ours(x, w) ** 2), (0, 1))(x, w))
  assert ' convolution(' not in step.lower(x, weights).compile().as_text()


@pytest.mark.parametrize('input_gradient', ['phases', 'subpixel', 'dilated'])
@pytest.mark.parametrize('kernel_gradient', ['patches', 'xla'])
def test_bfloat16_conv_gradients_keep_their_dtype(input_gradient, kernel_gradient):
  """bfloat16 images and kernel (--compute_dtype=bfloat16): gradients in bfloat16, close to
  the float32 ones of the same rounded values."""
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 16)).astype(jnp.bfloat16)
  weights = (0.1 * jax.random.normal(jax.random.key(1), (3, 3, 16, 8))).astype(jnp.bfloat16)
  algorithms = kernels.KernelChoices(input_gradient=input_gradient,
                                           kernel_gradient=kernel_gradient)
  loss = lambda x, w, algorithms: jnp.sum(
      kernels.conv(x, w, 2, 'SAME', algorithms).astype(jnp.float32) ** 2)
  grads = jax.grad(loss, argnums=(0, 1))(x, weights, algorithms)
  xla_loss = lambda x, w: jnp.sum(jax.lax.conv_general_dilated(
      x, w, (2, 2), 'SAME', dimension_numbers=('NHWC', 'HWIO', 'NHWC')) ** 2)
  expected = jax.grad(xla_loss, argnums=(0, 1))(x.astype(jnp.float32),
                                                weights.astype(jnp.float32))
  for grad, reference in zip(grads, expected):
    assert grad.dtype == jnp.bfloat16
    np.testing.assert_allclose(grad.astype(jnp.float32), reference,
                               rtol=0.05, atol=0.05 * np.max(np.abs(reference)))


# Heights and widths whose blocks need padding, fit exactly, or leave input rows unread;
# square and rectangular kernels.
@pytest.mark.parametrize('kernel_hw,stride,padding', [
    ((3, 3), 2, ((0, 1), (0, 1))), ((3, 3), 2, ((1, 1), (1, 0))), ((4, 4), 2, ((1, 2), (1, 1))),
    ((5, 5), 3, ((0, 0), (0, 0))), ((2, 2), 3, ((0, 0), (0, 0))), ((1, 1), 2, ((0, 0), (0, 0))),
    ((2, 2), 2, ((0, 0), (1, 1))), ((3, 3), 1, ((1, 1), (1, 1))), ((3, 3), 1, ((2, 2), (0, 3))),
    ((2, 3), 1, ((1, 0), (1, 1))), ((3, 2), 2, ((1, 1), (0, 1))), ((5, 3), 3, ((0, 0), (1, 0)))])
def test_written_out_gradients_are_xla_s(kernel_hw, stride, padding):
  """The NHWC input gradients by every algorithm and the kernel gradients by XLA's and by
  patches are the gradients of JAX's own rules."""
  x = jax.random.normal(jax.random.key(0), (2, 10, 9, 3))
  weights = jax.random.normal(jax.random.key(1), (*kernel_hw, 3, 4))
  strided = lambda x, w: jax.lax.conv_general_dilated(x, w, (stride, stride), padding,
                                                      dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  y, strided_vjp = jax.vjp(strided, x, weights)
  dy = jax.random.normal(jax.random.key(2), y.shape)
  dx, dw = strided_vjp(dy)
  assert np.max(np.abs(dx)) > 0 and np.max(np.abs(dw)) > 0
  for algorithm in ('dilated', 'phases', 'subpixel'):
    algorithms = kernels.KernelChoices(input_gradient=algorithm)
    np.testing.assert_allclose(
        cpu_kernels.input_gradient(dy, weights, (10, 9), stride, padding, algorithms), dx,
        rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(cpu_kernels.kernel_gradient(x, dy, kernel_hw, stride, padding), dw,
                             rtol=1e-5, atol=1e-5)
  np.testing.assert_allclose(
      cpu_kernels.kernel_gradient_by_patches(x, dy, kernel_hw, stride, padding), dw,
      rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('stride', [1, 2])
def test_gradients_in_a_loop_are_nhwc_convolutions(stride):
  """On CPU, the gradients of `conv` inside a scan are convolutions in the NHWC/HWIO layout
  only: XLA:CPU runs other layouts inside loops on a slow generic path."""
  loss = lambda w, x: jnp.sum(kernels.conv(x, w, stride, 'SAME',
                                                kernels.KernelChoices()) ** 2)

  def two_steps(w, x):
    def step(w, _):
      grad_w, grad_x = jax.grad(loss, argnums=(0, 1))(w, x)
      return w - 1e-3 * grad_w + jnp.mean(grad_x), None
    return jax.lax.scan(step, w, None, length=2)[0]
  compiled = jax.jit(two_steps).lower(jnp.ones((3, 3, 4, 8)), jnp.ones((2, 8, 8, 4))).compile()
  labels = re.findall(r' convolution\(.*dim_labels=([^,]+)', compiled.as_text())
  assert len(labels) >= 3 and set(labels) == {'b01f_01io->b01f'}


@pytest.mark.parametrize('images_per_chunk', [1, 2, 3, 6])
def test_kernel_gradient_by_patches_over_chunks(images_per_chunk):
  """However the batch is chunked, the patches give XLA's kernel gradient (stride 2, uneven
  'SAME' padding)."""
  x = jax.random.normal(jax.random.key(0), (6, 9, 8, 5))
  kernel = jax.random.normal(jax.random.key(1), (4, 4, 5, 7))
  padding = ((1, 2), (1, 1))
  conv = lambda k: jax.lax.conv_general_dilated(x, k, (2, 2), padding,
                                                dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  dy = jax.random.normal(jax.random.key(2), conv(kernel).shape)
  (expected,) = jax.vjp(conv, kernel)[1](dy)
  patch_bytes = dy.shape[1] * dy.shape[2] * 4 * 4 * 5 * 4
  assert cpu_kernels.images_per_chunk(6, patch_bytes, images_per_chunk * patch_bytes) == (
      images_per_chunk)
  grad = cpu_kernels.kernel_gradient_by_patches(x, dy, (4, 4), 2, padding,
                                                 chunk_bytes=images_per_chunk * patch_bytes)
  np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-5)


def test_kernel_gradient_by_patches_sums_bfloat16_in_float32():
  """bfloat16 inputs: the float32 kernel gradient of the same (rounded) values."""
  x = jax.random.normal(jax.random.key(0), (4, 8, 8, 16)).astype(jnp.bfloat16)
  dy = jax.random.normal(jax.random.key(1), (4, 8, 8, 8)).astype(jnp.bfloat16)
  padding = ((1, 1), (1, 1))
  conv = lambda k: jax.lax.conv_general_dilated(x.astype(jnp.float32), k, (1, 1), padding,
                                                dimension_numbers=('NHWC', 'HWIO', 'NHWC'))
  (expected,) = jax.vjp(conv, jnp.zeros((3, 3, 16, 8)))[1](dy.astype(jnp.float32))
  grad = cpu_kernels.kernel_gradient_by_patches(x, dy, (3, 3), 1, padding, chunk_bytes=1)
  assert grad.dtype == jnp.float32
  np.testing.assert_allclose(grad, expected, rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize('batch,budget_images,expected', [(300, 6.8, 6), (300, 1000, 300),
                                                          (7, 3, 1), (12, 0.5, 1), (100, 54, 50)])
def test_images_per_chunk_is_the_largest_divisor_that_fits(batch, budget_images, expected):
  assert cpu_kernels.images_per_chunk(batch, 1000, int(budget_images * 1000)) == expected


@pytest.mark.parametrize('backend,ynnpack,expected', [
    ('cpu', True, (kernels.BY_WIDTH, kernels.BY_WIDTH, 'patches', 'bits', 'patches')),
    ('cpu', False, (kernels.BY_WIDTH, kernels.BY_WIDTH, 'xla', 'bits', 'patches')),
    ('gpu', False, ('dilated', 'dilated', 'xla', 'bernoulli', 'xla')),
    ('tpu', False, ('dilated', 'dilated', 'xla', 'bernoulli', 'xla'))])
def test_auto_resolves_to_xla_s_own_algorithms_off_cpu(backend, ynnpack, expected):
  """'auto' is XLA's own everywhere but CPU; there strided input gradients and transposed
  convolutions skip the zeros, by phase from PHASE_MIN_FEATURES channels, kernel gradients
  come from patches where YNNPACK convolves, dropout from bits, tiny maps' convolutions from
  patches. Named algorithms hold everywhere."""
  auto = kernels.KernelChoices().resolve(backend, ynnpack)
  assert (auto.transpose, auto.input_gradient, auto.kernel_gradient, auto.dropout,
          auto.tiny_maps) == expected
  assert auto.backend == backend and auto.resolve(backend) == auto
  assert auto.patch_kernel_gradient() == ynnpack
  on_cpu = backend == 'cpu'
  assert auto.bits_dropout() == on_cpu
  wide, narrow = kernels.PHASE_MIN_FEATURES, kernels.PHASE_MIN_FEATURES - 1
  assert auto.input_gradient_algorithm(wide) == ('phases' if on_cpu else 'dilated')
  assert auto.input_gradient_algorithm(narrow) == ('subpixel' if on_cpu else 'dilated')
  assert auto.transpose_algorithm(wide) == ('phases' if on_cpu else 'dilated')
  assert auto.transpose_algorithm(narrow) == ('subpixel' if on_cpu else 'dilated')
  named = lambda **choice: kernels.KernelChoices(**choice).resolve(backend, ynnpack)
  assert named(kernel_gradient='patches').patch_kernel_gradient()
  assert not named(kernel_gradient='xla').patch_kernel_gradient()
  assert named(dropout='bits').bits_dropout() and not named(dropout='bernoulli').bits_dropout()
  tiny, small = (kernels.TINY_MAP_PIXELS,) * 2, (kernels.TINY_MAP_PIXELS + 1, 1)
  assert auto.conv_by_patches(tiny) == on_cpu and not auto.conv_by_patches(small)
  assert named(tiny_maps='patches').conv_by_patches(tiny)
  assert not named(tiny_maps='patches').conv_by_patches(small)
  assert not named(tiny_maps='xla').conv_by_patches(tiny)
  for name in ('phases', 'subpixel', 'dilated'):
    for channels in (wide, narrow):
      assert named(input_gradient=name).input_gradient_algorithm(channels) == name
      assert named(transpose=name).transpose_algorithm(channels) == name
  # Gradients written out in cpu_kernels: on CPU always, elsewhere for another algorithm
  # than XLA's.
  assert auto.own_gradients(1) == on_cpu and auto.own_gradients(2) == on_cpu
  assert named(input_gradient='subpixel').own_gradients(2)
  assert named(input_gradient='subpixel').own_gradients(1) == on_cpu
  assert named(input_gradient='phases').own_gradients(2)
  assert named(input_gradient='dilated').own_gradients(2) == on_cpu
  assert named(kernel_gradient='patches').own_gradients(1)


def test_unresolved_choices_resolve_for_jax_s_default_backend(monkeypatch):
  monkeypatch.setattr(jax, 'default_backend', lambda: 'gpu')
  assert kernels.KernelChoices().transpose_algorithm(256) == 'dilated'
  assert not kernels.KernelChoices().bits_dropout()
  monkeypatch.setattr(jax, 'default_backend', lambda: 'cpu')
  assert kernels.KernelChoices().transpose_algorithm(256) == 'phases'
  assert kernels.KernelChoices().bits_dropout()
  monkeypatch.setenv('XLA_FLAGS', '')  # jaxlib's default: YNNPACK convolutions
  assert kernels.KernelChoices().patch_kernel_gradient()
  monkeypatch.setenv('XLA_FLAGS', xla_cpu.EIGEN_CONVOLUTIONS_AND_DOTS)
  assert not kernels.KernelChoices().patch_kernel_gradient()


@pytest.mark.parametrize('algorithms', [dict(kernel_gradient='patches', input_gradient='dilated'),
                                        dict(kernel_gradient='xla', input_gradient='subpixel'),
                                        dict(kernel_gradient='patches', input_gradient='subpixel'),
                                        dict(kernel_gradient='xla', input_gradient='phases'),
                                        dict(kernel_gradient='xla', input_gradient='dilated')])
def test_gradient_algorithms_give_xla_s_model_gradients(algorithms, monkeypatch):
  """The gradients of D's outputs for D's parameters and images (every kind of convolution
  D has) are the same with every gradient algorithm, XLA's own written out in NHWC
  included, as with JAX's own gradient rules."""
  family = models.MODEL_FAMILIES['conv_small']
  images = jax.random.uniform(jax.random.key(0), (4, 32, 32, 3), minval=-1)
  d_variables = family.discriminator(10).init(jax.random.key(2), images)
  logits_cotangent = jax.random.normal(jax.random.key(3), (4, 10))
  features_cotangent = jax.random.normal(jax.random.key(4), (4, 128))

  def gradients(conv_algorithms):
    d = family.discriminator(10, conv_algorithms)

    def loss(d_params, images):
      logits, features = d.apply({**d_variables, 'params': d_params}, images)
      return jnp.vdot(logits, logits_cotangent) + jnp.vdot(features, features_cotangent)
    return jax.jit(jax.grad(loss, argnums=(0, 1)))(d_variables['params'], images)
  chosen = gradients(kernels.KernelChoices(**algorithms))
  monkeypatch.setattr(kernels.KernelChoices, 'own_gradients', lambda self, stride: False)
  xla_s = gradients(kernels.KernelChoices())
  for ours, xla in zip(jax.tree.leaves(chosen), jax.tree.leaves(xla_s)):
    assert np.max(np.abs(xla)) > 0
    np.testing.assert_allclose(ours, xla, rtol=1e-4, atol=1e-5 * np.max(np.abs(xla)))


@pytest.mark.parametrize('algorithm', ['phases', 'subpixel', 'dilated'])
def test_generator_algorithms_give_the_same_images(algorithm):
  """G's images with each transposed-convolution algorithm are those of the default."""
  _, variables, z, apply = generator('conv_small')
  chosen = models.MODEL_FAMILIES['conv_small'].generator(
      IMAGE_SHAPE['conv_small'], None, kernels.KernelChoices(transpose=algorithm))
  images, _ = apply(variables, z)
  chosen_images, _ = jax.jit(functools.partial(chosen.apply, mutable=['batch_stats']))(
      variables, z)
  np.testing.assert_allclose(chosen_images, images, atol=1e-5)


def test_auto_transpose_algorithm_by_width():
  """'auto' convolves phase by phase from PHASE_MIN_FEATURES output features, all phases
  side by side below; named algorithms hold for every width."""
  auto = kernels.KernelChoices()
  assert auto.transpose_algorithm(kernels.PHASE_MIN_FEATURES) == 'phases'
  assert auto.transpose_algorithm(256) == 'phases'
  assert auto.transpose_algorithm(kernels.PHASE_MIN_FEATURES - 1) == 'subpixel'
  assert auto.transpose_algorithm(3) == 'subpixel'
  for name in ('phases', 'subpixel', 'dilated'):
    assert kernels.KernelChoices(transpose=name).transpose_algorithm(3) == name
    assert kernels.KernelChoices(transpose=name).transpose_algorithm(256) == name
