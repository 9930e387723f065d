"""Discriminators and generators of Salimans et al. (2016), as Flax linen modules.

Discriminators map images to (outputs_BxO, features_BxF): O = K class logits plus
the head's extra outputs, F the layer that feature matching uses (with minibatch
discrimination on, still the layer before it: the per-example features, not the
batch-dependent similarities). Randomness
(Gaussian noise, dropout) is drawn from one key per example, so a global batch gets
the same noise however it is split over devices; `example_keys=None` is the
deterministic network used for evaluation.

Every module computes in its `dtype` (Flax's convention: float32 parameters, inputs and
kernels cast to `dtype`; --compute_dtype=bfloat16 sets it); discriminators and generators
return float32, so that losses and the other player's inputs are float32.

Every weight-normalised layer is w = g * v / ||v|| plus a bias, with g and the bias
chosen at init from the init batch so the layer's outputs start with zero mean and
unit variance (data-dependent init, Salimans & Kingma 2016). As in the reference code,
g is trained only in the output layers; elsewhere it stays at its initial value.
`WeightNorm` (--weight_norm_init, --weight_norm_scales) chooses otherwise, and a
generator's `output_layer` (--gen_output_layer=plain) can make its output layer a plain one.
"""
import dataclasses
import functools
import math
from typing import Any, Callable, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssgan_jax.networks import kernels, resnet
from ssgan_jax.networks.kernels import KernelChoices

# Kernel initialisers of the reference code: N(0, 0.1) in the MNIST discriminator, lasagne's
# default Glorot uniform in the MNIST generator, N(0, 0.05) everywhere in the conv models.
# Under weight or batch normalisation the scale does not change the function, but it sets
# how far an Adam step turns a kernel, so it is kept.
_MLP_V_INIT = nn.initializers.normal(0.1)
_MLP_GEN_INIT = nn.initializers.glorot_uniform()
_CONV_V_INIT = nn.initializers.normal(0.05)
_MINIBATCH_V_INIT = nn.initializers.normal(0.05)


@dataclasses.dataclass(frozen=True)
class WeightNorm:
  """How a model's weight-normalised layers start and which of their scales g train; the
  defaults are the reference's."""
  init: str = 'data'      # data: g and bias from the init batch; unit: g = 1 and bias 0
  scales: str = 'output'  # output: only the output layers train g; all: every layer does

  def layer(self, output: bool = False) -> dict:
    """`ScaleBias` settings of a hidden layer, or with `output` of an output layer."""
    return {'data_init': self.init == 'data', 'trainable_scale': output or self.scales == 'all'}


class ScaleBias(nn.Module):
  """Per-feature scale and bias after a weight-normalised layer.

  With `data_init`, both are chosen in `init` so that the init batch's outputs have zero
  mean and standard deviation `init_scale`; otherwise they start at 1 and 0. As in the
  reference code, only some layers train their scale: a fixed one lives in the
  'constants' collection, outside the optimizer. Without `use_scale`, a bias alone,
  starting at 0 (a plain layer's).
  """
  init_scale: float = 1.0
  trainable_scale: bool = False
  data_init: bool = True
  dtype: Any = jnp.float32
  use_scale: bool = True

  @nn.compact
  def __call__(self, y):
    if not self.use_scale:
      return (y + self.param('bias', nn.initializers.zeros, y.shape[-1:], y.dtype)).astype(
          self.dtype)
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
    return (y * scale + self.param('bias', bias_init)).astype(self.dtype)


def inverse_column_norms(v: jax.Array) -> jax.Array:
  """1 / ||v|| per output feature: the norm over every axis but the last."""
  return jax.lax.rsqrt(jnp.sum(jnp.square(v), axis=tuple(range(v.ndim - 1))) + 1e-12)


def unit_columns(v: jax.Array) -> jax.Array:
  """v / ||v|| per output feature: the norm over every axis but the last.

  Weight normalisation's direction, applied to the kernel rather than to the layer's output
  (the same function, as the layer is linear in its kernel), so that no pass over the far
  larger activations or their gradients is needed. Unlike `nn.WeightNorm`, which stores v
  already normalised at init, the stored v keeps its initialiser's scale, and with it the
  reference's effective step size on v's direction.
  """
  return v * inverse_column_norms(v)


class Dense(nn.Module):
  """Bias-free dense layer whose kernel v acts as `unit_columns(v)`: the parameter name and
  path of `nn.Dense`, so a weight-normalised layer's parameters read `Dense_0/kernel`.

  Of two ways to the same function, the one that scales the smaller array: the kernel, or,
  where x has fewer rows than input features (the MNIST MLP at batch 100: 100 rows against
  784 pixels), the output, x @ v divided by v's column norms. With the kernels scaled, the
  MLP's CPU train step ran 0.79x torch eager's; with this, 0.94x
  (benchmarks/results/mlp_cpu_weight_norm_on_kernel/, smaller_side.md). Without `unit_norm`,
  the kernel acts as it is.
  """
  features: int
  kernel_init: Callable
  dtype: Any = jnp.float32
  unit_norm: bool = True

  @nn.compact
  def __call__(self, x):
    v = self.param('kernel', self.kernel_init, (x.shape[-1], self.features))
    x = x.astype(self.dtype)
    if not self.unit_norm:
      return x @ v.astype(self.dtype)
    if x.size // x.shape[-1] >= x.shape[-1]:
      return x @ unit_columns(v).astype(self.dtype)
    return (x @ v.astype(self.dtype)) * inverse_column_norms(v).astype(self.dtype)


def _square_kernel(layer: nn.Module, x: jax.Array) -> jax.Array:
  """`layer`'s kernel parameter (k x k x in x out) in its dtype; with `unit_norm`, as
  `unit_columns(v)` (normalised in float32)."""
  kernel = layer.param('kernel', layer.kernel_init,
                       (layer.kernel_size, layer.kernel_size, x.shape[-1], layer.features))
  return (unit_columns(kernel) if layer.unit_norm else kernel).astype(layer.dtype)


class Conv(nn.Module):
  """Bias-free square convolution: `nn.Conv`'s function, kernel and parameter name, computed
  by `algorithms` (see `kernels.conv`); with `unit_norm`, the kernel v acts as
  `unit_columns(v)`."""
  features: int
  kernel_size: int
  stride: int
  padding: str
  algorithms: KernelChoices
  unit_norm: bool = False
  kernel_init: Callable = _CONV_V_INIT
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    return kernels.conv(x.astype(self.dtype), _square_kernel(self, x), self.stride,
                        self.padding, self.algorithms)


class ConvTranspose(nn.Module):
  """Bias-free 'SAME' transposed convolution: `nn.ConvTranspose`'s function and kernel,
  computed by `algorithms` (see `kernels.conv_transpose_same`); with `unit_norm`, the
  kernel v acts as `unit_columns(v)`."""
  features: int
  kernel_size: int
  stride: int
  algorithms: KernelChoices
  kernel_init: Callable = _CONV_V_INIT
  unit_norm: bool = False
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    return kernels.conv_transpose_same(x.astype(self.dtype), _square_kernel(self, x),
                                       self.stride, self.algorithms)


def _scale_bias(layer: nn.Module) -> ScaleBias:
  """The ScaleBias of a weight-normalised layer, or without `normalised` a plain bias."""
  return ScaleBias(layer.init_scale, layer.trainable_scale, layer.data_init and layer.normalised,
                   layer.dtype, use_scale=layer.normalised)


class WNDense(nn.Module):
  """Weight-normalised dense layer; without `normalised`, a plain one (kernel and bias)."""
  features: int
  init_scale: float = 1.0
  trainable_scale: bool = False
  data_init: bool = True
  v_init: Callable = _MLP_V_INIT
  normalised: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    return _scale_bias(self)(Dense(self.features, self.v_init, self.dtype, self.normalised)(x))


class WNConv(nn.Module):
  """Weight-normalised convolution; with `transpose`, a 'SAME' transposed one; without
  `normalised`, a plain one (kernel and bias)."""
  features: int
  algorithms: KernelChoices
  kernel: int = 3
  stride: int = 1
  padding: str = 'SAME'
  transpose: bool = False
  init_scale: float = 1.0
  trainable_scale: bool = False
  data_init: bool = True
  normalised: bool = True
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x):
    if self.transpose:
      layer = ConvTranspose(self.features, self.kernel, self.stride, self.algorithms,
                            unit_norm=self.normalised, dtype=self.dtype)
    else:
      layer = Conv(self.features, self.kernel, self.stride, self.padding, self.algorithms,
                   unit_norm=self.normalised, dtype=self.dtype)
    return _scale_bias(self)(layer(x))


@dataclasses.dataclass
class ExampleNoise:
  """Gaussian noise and dropout (masks sampled as `choices` says) drawn from per-example
  keys; a no-op without keys."""
  example_keys: Optional[jax.Array]
  choices: KernelChoices = KernelChoices()
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
    keep = jax.vmap(lambda k: kernels.keep_mask(k, 1 - rate, x_Bx.shape[1:], self.choices))(
        keys)
    return jnp.where(keep, x_Bx / (1 - rate), 0)


def pairwise_l1_distances(m_NxKxC: jax.Array) -> jax.Array:
  """`d[i, j, k] = sum_c |m[i, k, c] - m[j, k, c]|`: distances between examples, per kernel."""
  # One c at a time: un-jitted (as in `init`), N x N x K x C differences would be held at once.
  return sum(jnp.abs(m_NxKxC[:, None, :, c] - m_NxKxC[None, :, :, c])
             for c in range(m_NxKxC.shape[-1]))


def minibatch_similarity(m_NxKxC: jax.Array) -> jax.Array:
  """`o[i, k] = sum_{j != i} exp(-d[i, j, k])`: how close each example is to the others, per kernel.

  The minibatch features of Salimans et al. (2016), section 3.2, for a batch of N examples.
  """
  d_NxNxK = pairwise_l1_distances(m_NxKxC)
  others_NxNx1 = ~jnp.eye(m_NxKxC.shape[0], dtype=bool)[:, :, None]
  return jnp.sum(jnp.where(others_NxNx1, jnp.exp(-d_NxNxK), 0.0), axis=1)


def mean_nearest_distance(m_NxKxC: jax.Array) -> jax.Array:
  """Per kernel, the mean over examples of the distance to the nearest other example."""
  d_NxNxK = pairwise_l1_distances(m_NxKxC)
  others_NxNx1 = ~jnp.eye(m_NxKxC.shape[0], dtype=bool)[:, :, None]
  return jnp.mean(jnp.min(jnp.where(others_NxNx1, d_NxNxK, jnp.inf), axis=1), axis=0)


class MinibatchDiscrimination(nn.Module):
  """Appends minibatch features to each example's features (Salimans et al. 2016, section 3.2).

  Each example's features x (F) are projected by a weight-normalised tensor to m (K x C);
  its K outputs are `minibatch_similarity` to the other examples of its group, plus a bias.
  The batch is split into consecutive groups of `group_size` examples (None: one group), and
  examples are compared only within their group. In training a group is one device's share of
  one part of D's batch (labeled, unlabeled or generated), so real and fake examples never see
  each other, as when the reference applies D to each part separately; evaluation uses groups
  of the same size, since the similarities are sums over the group and grow with it. As in
  the reference code, the per-(kernel, dim) log scale starts so that half the mean nearest
  distance of the init batch (one group) is 1, and the bias so that the init batch's outputs
  have zero mean.
  """
  num_kernels: int
  kernel_dim: int = 5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxF, group_size: Optional[int] = None):
    b = x_BxF.shape[0]
    group_size = group_size or b
    if b % group_size:
      raise ValueError(f'a batch of {b} is not whole groups of {group_size}')
    dense = Dense(self.num_kernels * self.kernel_dim, _MINIBATCH_V_INIT, self.dtype)
    m_BxKxC = dense(x_BxF).reshape(b, self.num_kernels, self.kernel_dim)
    # Initialisers run only in `init`, on the init batch.
    log_scale_KxC = self.param('log_scale', lambda *_: jnp.broadcast_to(
        -jnp.log(0.5 * mean_nearest_distance(m_BxKxC))[:, None], m_BxKxC.shape[1:]))
    m_GxNxKxC = (m_BxKxC * jnp.exp(log_scale_KxC)).reshape(
        b // group_size, group_size, *m_BxKxC.shape[1:])
    o_BxK = jax.vmap(minibatch_similarity)(m_GxNxKxC).reshape(b, self.num_kernels)
    o_BxK = o_BxK + self.param('bias', lambda *_: -jnp.mean(o_BxK, axis=0))
    return jnp.concatenate([x_BxF, o_BxK], axis=-1).astype(self.dtype)


class MlpDiscriminator(nn.Module):
  """784-1000-500-250-250-250-K MLP with Gaussian noise (0.3 on input, 0.5 after hidden).

  With `minibatch_kernels`, minibatch discrimination sits before the output layer.
  """
  num_outputs: int
  hidden: Sequence[int] = (1000, 500, 250, 250, 250)
  input_noise: float = 0.3
  hidden_noise: float = 0.5
  minibatch_kernels: int = 0
  minibatch_kernel_dim: int = 5
  weight_norm: WeightNorm = WeightNorm()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images_BxHxWxC, example_keys=None,
               group_size: Optional[int] = None):
    noise = ExampleNoise(example_keys)
    h = images_BxHxWxC.reshape(images_BxHxWxC.shape[0], -1).astype(self.dtype)
    h = noise.gaussian(h, self.input_noise)
    for width in self.hidden:
      h = nn.relu(WNDense(width, **self.weight_norm.layer(), dtype=self.dtype)(h))
      features_BxF = h
      h = noise.gaussian(h, self.hidden_noise)
    if self.minibatch_kernels:
      h = MinibatchDiscrimination(self.minibatch_kernels, self.minibatch_kernel_dim,
                                  self.dtype)(h, group_size)
    return as_float32(WNDense(self.num_outputs, **self.weight_norm.layer(output=True),
                              dtype=self.dtype)(h), features_BxF)


class MlpGenerator(nn.Module):
  """z -> 500 -> 500 (batch norm, softplus) -> image (weight norm, sigmoid); `output_layer`
  'plain' drops the output layer's weight norm."""
  image_shape: Sequence[int]
  hidden: Sequence[int] = (500, 500)
  axis_name: Optional[str] = None
  output_activation: Callable = nn.sigmoid
  output_layer: str = 'weight_norm'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z_BxZ):
    h = z_BxZ
    for width in self.hidden:
      h = nn.Dense(width, use_bias=False, kernel_init=_MLP_GEN_INIT, dtype=self.dtype)(h)
      h = nn.softplus(nn.BatchNorm(use_running_average=False, use_scale=False,
                                   axis_name=self.axis_name, dtype=self.dtype)(h))
    pixels = self.output_activation(WNDense(math.prod(self.image_shape), trainable_scale=True,
                                            data_init=False, v_init=_MLP_GEN_INIT,
                                            normalised=self.output_layer == 'weight_norm',
                                            dtype=self.dtype)(h))
    return as_float32(pixels.reshape((z_BxZ.shape[0], *self.image_shape)))


class ConvDiscriminator(nn.Module):
  """The 32x32 convolutional discriminator; widths (96, 192) for CIFAR-10, (64, 128) for SVHN.

  With `minibatch_kernels`, minibatch discrimination sits before the output layer.
  """
  num_outputs: int
  widths: Sequence[int] = (96, 192)
  algorithms: KernelChoices = KernelChoices()
  input_dropout: float = 0.2
  hidden_dropout: float = 0.5
  minibatch_kernels: int = 0
  minibatch_kernel_dim: int = 5
  weight_norm: WeightNorm = WeightNorm()
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images_BxHxWxC, example_keys=None,
               group_size: Optional[int] = None):
    noise = ExampleNoise(example_keys, self.algorithms)
    lrelu = lambda x: nn.leaky_relu(x, 0.2)
    narrow, wide = self.widths
    h = noise.dropout(images_BxHxWxC.astype(self.dtype), self.input_dropout)
    conv = functools.partial(WNConv, algorithms=self.algorithms, **self.weight_norm.layer(),
                             dtype=self.dtype)
    for width in (narrow, wide):
      h = lrelu(conv(width)(h))
      h = lrelu(conv(width)(h))
      h = lrelu(conv(width, stride=2)(h))
      h = noise.dropout(h, self.hidden_dropout)
    h = lrelu(conv(wide, padding='VALID')(h))
    h = lrelu(conv(wide, kernel=1)(h))
    h = lrelu(conv(wide, kernel=1)(h))
    features_BxF = h = jnp.mean(h, axis=(1, 2))
    if self.minibatch_kernels:
      h = MinibatchDiscrimination(self.minibatch_kernels, self.minibatch_kernel_dim,
                                  self.dtype)(h, group_size)
    logits = WNDense(self.num_outputs, init_scale=0.1, **self.weight_norm.layer(output=True),
                     v_init=_CONV_V_INIT, dtype=self.dtype)(h)
    return as_float32(logits, features_BxF)


class ConvGenerator(nn.Module):
  """z -> 4x4x512 -> 8x8x256 -> 16x16x128 (batch norm, ReLU) -> 32x32xC (weight norm, tanh);
  `output_layer` 'plain' drops the output layer's weight norm."""
  image_shape: Sequence[int]
  algorithms: KernelChoices = KernelChoices()
  axis_name: Optional[str] = None
  weight_norm: WeightNorm = WeightNorm()
  output_layer: str = 'weight_norm'
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z_BxZ):
    norm_relu = lambda x: nn.relu(nn.BatchNorm(
        use_running_average=False, use_scale=False, axis_name=self.axis_name,
        dtype=self.dtype)(x))
    h = norm_relu(nn.Dense(4 * 4 * 512, use_bias=False, kernel_init=_CONV_V_INIT,
                           dtype=self.dtype)(z_BxZ))
    h = h.reshape((-1, 4, 4, 512))
    for width in (256, 128):
      h = norm_relu(ConvTranspose(width, 5, 2, self.algorithms, dtype=self.dtype)(h))
    return as_float32(jnp.tanh(WNConv(self.image_shape[-1], self.algorithms, kernel=5, stride=2,
                                    transpose=True, init_scale=0.1,
                                    **self.weight_norm.layer(output=True),
                                    normalised=self.output_layer == 'weight_norm',
                                    dtype=self.dtype)(h)))


def as_float32(*outputs):
  """A network's outputs in float32, whatever dtype it computed in (one array: unpacked)."""
  cast = tuple(x.astype(jnp.float32) for x in outputs)
  return cast[0] if len(cast) == 1 else cast


@dataclasses.dataclass(frozen=True)
class ModelFamily:
  """A discriminator/generator pair and the pixel range both work in.

  `pixel_range=None` marks a family for real-valued vectors (such as 2-D points), which
  both networks take as they are.
  """
  # num_outputs[, convolution algorithms] -> D
  discriminator: Callable[..., nn.Module]
  # image shape, device axis[, convolution algorithms] -> G
  generator: Callable[..., nn.Module]
  pixel_range: Optional[tuple[float, float]]
  supported_sizes: Optional[tuple[int, ...]]  # square sides the generator can make; None: any
  channels: Optional[int] = None              # channels D takes; None: the dataset's own
  # D has batch norm: its running averages live in the 'batch_stats' collection.
  disc_batch_norm: bool = False

  def scale_pixels(self, images_uint8):
    """uint8 pixels [0, 255] -> floats in `pixel_range` (vectors: unchanged, as float32)."""
    if self.pixel_range is None:
      return images_uint8.astype(jnp.float32)
    low, high = self.pixel_range
    return images_uint8.astype(jnp.float32) * ((high - low) / 255.0) + low


MODEL_FAMILIES = {
    'mlp': ModelFamily(
        discriminator=lambda n, _=None: MlpDiscriminator(n),
        generator=lambda shape, axis, _=None: MlpGenerator(tuple(shape), axis_name=axis),
        pixel_range=(0.0, 1.0), supported_sizes=None),
    'conv_small': ModelFamily(
        discriminator=lambda n, algorithms=KernelChoices(): ConvDiscriminator(
            n, widths=(64, 128), algorithms=algorithms),
        generator=lambda shape, axis, algorithms=KernelChoices(): ConvGenerator(
            tuple(shape), algorithms, axis),
        pixel_range=(-1.0, 1.0), supported_sizes=(32,)),
    'conv_large': ModelFamily(
        discriminator=lambda n, algorithms=KernelChoices(): ConvDiscriminator(
            n, widths=(96, 192), algorithms=algorithms),
        generator=lambda shape, axis, algorithms=KernelChoices(): ConvGenerator(
            tuple(shape), algorithms, axis),
        pixel_range=(-1.0, 1.0), supported_sizes=(32,)),
    # Small MLPs for 2-D toy data (the rings demo); G's output is linear.
    'mlp_points': ModelFamily(
        discriminator=lambda n, _=None: MlpDiscriminator(n, hidden=(100, 100, 100), input_noise=0.05,
                                                 hidden_noise=0.3),
        generator=lambda shape, axis, _=None: MlpGenerator(tuple(shape), hidden=(100, 100),
                                                   axis_name=axis, output_activation=lambda x: x),
        pixel_range=None, supported_sizes=None),
    # The PyTorch seed's cats-vs-dogs models (see ssgan_jax.networks.resnet), on RGB images.
    'resnet18': ModelFamily(
        discriminator=lambda n, algorithms=KernelChoices(): resnet.ResNet18Discriminator(
            n, algorithms),
        generator=lambda shape, axis, algorithms=KernelChoices(): resnet.DcganGenerator(
            tuple(shape), algorithms, axis),
        pixel_range=(-1.0, 1.0), supported_sizes=tuple(resnet.GENERATOR_LAYOUTS), channels=3,
        disc_batch_norm=True),
}

LATENT_DIM = 100


def sample_latent(example_keys_B: jax.Array) -> jax.Array:
  """Uniform [0, 1) latent vectors, one per example key (the reference's z)."""
  return jax.vmap(lambda k: jax.random.uniform(k, (LATENT_DIM,)))(example_keys_B)
