"""Discriminators and generators of Salimans et al. (2016), as Flax linen modules.

Discriminators map images to (outputs_BxO, features_BxF): O = K class logits plus
the head's extra outputs, F the layer that feature matching uses. Randomness
(Gaussian noise, dropout) is drawn from one key per example, so a global batch gets
the same noise however it is split over devices; `example_keys=None` is the
deterministic network used for evaluation.

Every weight-normalised layer is w = g * v / ||v|| plus a bias, with g and the bias
chosen at init from the init batch so the layer's outputs start with zero mean and
unit variance (data-dependent init, Salimans & Kingma 2016). As in the reference code,
g is trained only in the output layers; elsewhere it stays at its initial value.
"""
import dataclasses
from typing import Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

# Kernel initialisers of the reference code: N(0, 0.1) in the MNIST discriminator, lasagne's
# default Glorot uniform in the MNIST generator, N(0, 0.05) everywhere in the conv models.
# Under weight or batch normalisation the scale does not change the function, but it sets
# how far an Adam step turns a kernel, so it is kept.
_MLP_V_INIT = nn.initializers.normal(0.1)
_MLP_GEN_INIT = nn.initializers.glorot_uniform()
_CONV_V_INIT = nn.initializers.normal(0.05)


class ScaleBias(nn.Module):
  """Per-feature scale and bias after a weight-normalised layer.

  With `data_init`, both are chosen in `init` so that the init batch's outputs have zero
  mean and standard deviation `init_scale`; otherwise they start at 1 and 0. As in the
  reference code, only some layers train their scale: a fixed one lives in the
  'constants' collection, outside the optimizer.
  """
  init_scale: float = 1.0
  trainable_scale: bool = False
  data_init: bool = True

  @nn.compact
  def __call__(self, y):
    axes = tuple(range(y.ndim - 1))
    # These initialisers only run in `init`, where `y` is the init batch's output.
    if self.data_init:
      scale_init = lambda *_: self.init_scale * jax.lax.rsqrt(jnp.var(y, axes) + 1e-8)
      bias_init = lambda *_: -jnp.mean(y, axes) * scale_init()
    else:
      scale_init = lambda *_: jnp.ones(y.shape[-1], y.dtype)
      bias_init = lambda *_: jnp.zeros(y.shape[-1], y.dtype)
    if self.trainable_scale:
      scale = self.param('scale', scale_init)
    else:
      scale = self.variable('constants', 'scale', scale_init).value
    return y * scale + self.param('bias', bias_init)


def unit_kernel_output(layer: nn.Module, x: jax.Array) -> jax.Array:
  """`layer(x)` as if its kernel v were v / ||v|| per output feature.

  The layer (Dense, Conv or ConvTranspose, without bias) is linear in its kernel, so
  dividing its output by the norms is the same as normalising the kernel. Unlike
  `nn.WeightNorm`, which stores v already normalised at init, this keeps v at its
  initialiser's scale, and with it the reference's effective step size on v's direction.
  """
  y = layer(x)
  v = layer.variables['params']['kernel']
  return y * jax.lax.rsqrt(jnp.sum(jnp.square(v), axis=tuple(range(v.ndim - 1))) + 1e-12)


class WNDense(nn.Module):
  features: int
  init_scale: float = 1.0
  trainable_scale: bool = False
  data_init: bool = True
  v_init: Callable = _MLP_V_INIT

  @nn.compact
  def __call__(self, x):
    y = unit_kernel_output(nn.Dense(self.features, use_bias=False, kernel_init=self.v_init), x)
    return ScaleBias(self.init_scale, self.trainable_scale, self.data_init)(y)


class WNConv(nn.Module):
  features: int
  kernel: int = 3
  stride: int = 1
  padding: str = 'SAME'
  transpose: bool = False
  init_scale: float = 1.0
  trainable_scale: bool = False

  @nn.compact
  def __call__(self, x):
    conv = nn.ConvTranspose if self.transpose else nn.Conv
    layer = conv(self.features, (self.kernel,) * 2, strides=(self.stride,) * 2,
                 padding=self.padding, use_bias=False,
                 kernel_init=_CONV_V_INIT)
    return ScaleBias(self.init_scale, self.trainable_scale)(unit_kernel_output(layer, x))


@dataclasses.dataclass
class ExampleNoise:
  """Gaussian noise and dropout drawn from per-example keys; a no-op without keys."""
  example_keys: Optional[jax.Array]
  _calls: int = 0

  def _next_keys(self):
    self._calls += 1
    return jax.vmap(jax.random.fold_in, (0, None))(self.example_keys, self._calls)

  def gaussian(self, x_Bx, std: float):
    if self.example_keys is None or std == 0:
      return x_Bx
    keys = self._next_keys()
    noise = jax.vmap(lambda k: jax.random.normal(k, x_Bx.shape[1:], x_Bx.dtype))(keys)
    return x_Bx + std * noise

  def dropout(self, x_Bx, rate: float):
    if self.example_keys is None or rate == 0:
      return x_Bx
    keys = self._next_keys()
    keep = jax.vmap(lambda k: jax.random.bernoulli(k, 1 - rate, x_Bx.shape[1:]))(keys)
    return jnp.where(keep, x_Bx / (1 - rate), 0)


class MlpDiscriminator(nn.Module):
  """784-1000-500-250-250-250-K MLP with Gaussian noise (0.3 on input, 0.5 after hidden)."""
  num_outputs: int
  hidden: Sequence[int] = (1000, 500, 250, 250, 250)
  input_noise: float = 0.3
  hidden_noise: float = 0.5

  @nn.compact
  def __call__(self, images_BxHxWxC, example_keys=None):
    noise = ExampleNoise(example_keys)
    h = noise.gaussian(images_BxHxWxC.reshape(images_BxHxWxC.shape[0], -1), self.input_noise)
    for width in self.hidden:
      h = nn.relu(WNDense(width)(h))
      features_BxF = h
      h = noise.gaussian(h, self.hidden_noise)
    return WNDense(self.num_outputs, trainable_scale=True)(h), features_BxF


class MlpGenerator(nn.Module):
  """z -> 500 -> 500 (batch norm, softplus) -> image (weight norm, sigmoid)."""
  image_shape: Sequence[int]
  hidden: Sequence[int] = (500, 500)
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, z_BxZ):
    h = z_BxZ
    for width in self.hidden:
      h = nn.Dense(width, use_bias=False, kernel_init=_MLP_GEN_INIT)(h)
      h = nn.softplus(nn.BatchNorm(use_running_average=False, use_scale=False,
                                   axis_name=self.axis_name)(h))
    size = 1
    for d in self.image_shape:
      size *= d
    pixels = nn.sigmoid(WNDense(size, trainable_scale=True, data_init=False,
                                v_init=_MLP_GEN_INIT)(h))
    return pixels.reshape((z_BxZ.shape[0], *self.image_shape))


class ConvDiscriminator(nn.Module):
  """The 32x32 convolutional discriminator; widths (96, 192) for CIFAR-10, (64, 128) for SVHN."""
  num_outputs: int
  widths: Sequence[int] = (96, 192)
  input_dropout: float = 0.2
  hidden_dropout: float = 0.5

  @nn.compact
  def __call__(self, images_BxHxWxC, example_keys=None):
    noise = ExampleNoise(example_keys)
    lrelu = lambda x: nn.leaky_relu(x, 0.2)
    narrow, wide = self.widths
    h = noise.dropout(images_BxHxWxC, self.input_dropout)
    for width in (narrow, wide):
      h = lrelu(WNConv(width)(h))
      h = lrelu(WNConv(width)(h))
      h = lrelu(WNConv(width, stride=2)(h))
      h = noise.dropout(h, self.hidden_dropout)
    h = lrelu(WNConv(wide, padding='VALID')(h))
    h = lrelu(WNConv(wide, kernel=1)(h))
    h = lrelu(WNConv(wide, kernel=1)(h))
    features_BxF = jnp.mean(h, axis=(1, 2))
    logits = WNDense(self.num_outputs, init_scale=0.1, trainable_scale=True,
                     v_init=_CONV_V_INIT)(features_BxF)
    return logits, features_BxF


class ConvGenerator(nn.Module):
  """z -> 4x4x512 -> 8x8x256 -> 16x16x128 (batch norm, ReLU) -> 32x32xC (weight norm, tanh)."""
  image_shape: Sequence[int]
  axis_name: Optional[str] = None

  @nn.compact
  def __call__(self, z_BxZ):
    norm_relu = lambda x: nn.relu(nn.BatchNorm(
        use_running_average=False, use_scale=False, axis_name=self.axis_name)(x))
    h = norm_relu(nn.Dense(4 * 4 * 512, use_bias=False, kernel_init=_CONV_V_INIT)(z_BxZ))
    h = h.reshape((-1, 4, 4, 512))
    for width in (256, 128):
      h = norm_relu(nn.ConvTranspose(width, (5, 5), strides=(2, 2), use_bias=False,
                                     kernel_init=_CONV_V_INIT)(h))
    return jnp.tanh(WNConv(self.image_shape[-1], kernel=5, stride=2, transpose=True,
                           init_scale=0.1, trainable_scale=True)(h))


@dataclasses.dataclass(frozen=True)
class ModelFamily:
  """A discriminator/generator pair and the pixel range both work in."""
  discriminator: Callable[[int], nn.Module]            # num_outputs -> D
  generator: Callable[[Sequence[int], Optional[str]], nn.Module]  # image shape, axis -> G
  pixel_range: tuple[float, float]
  supported_shape: Optional[tuple[int, int]]           # (H, W) the generator can make

  def scale_pixels(self, images_uint8):
    """uint8 pixels [0, 255] -> floats in `pixel_range`."""
    low, high = self.pixel_range
    return images_uint8.astype(jnp.float32) * ((high - low) / 255.0) + low


MODEL_FAMILIES = {
    'mlp': ModelFamily(
        discriminator=lambda n: MlpDiscriminator(n),
        generator=lambda shape, axis: MlpGenerator(tuple(shape), axis_name=axis),
        pixel_range=(0.0, 1.0), supported_shape=None),
    'conv_small': ModelFamily(
        discriminator=lambda n: ConvDiscriminator(n, widths=(64, 128)),
        generator=lambda shape, axis: ConvGenerator(tuple(shape), axis_name=axis),
        pixel_range=(-1.0, 1.0), supported_shape=(32, 32)),
    'conv_large': ModelFamily(
        discriminator=lambda n: ConvDiscriminator(n, widths=(96, 192)),
        generator=lambda shape, axis: ConvGenerator(tuple(shape), axis_name=axis),
        pixel_range=(-1.0, 1.0), supported_shape=(32, 32)),
}

LATENT_DIM = 100


def sample_latent(example_keys_B: jax.Array) -> jax.Array:
  """Uniform [0, 1) latent vectors, one per example key (the reference's z)."""
  return jax.vmap(lambda k: jax.random.uniform(k, (LATENT_DIM,)))(example_keys_B)
