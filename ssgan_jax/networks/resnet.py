"""The cats-vs-dogs models of the PyTorch seed: a ResNet-18 discriminator and a DCGAN generator.

ResNet-18 follows torchvision's layout (7x7 stem with max pooling, four stages of two basic
blocks, 64-128-256-512 channels, global average pooling, one dense layer to the K outputs),
trained from scratch; feature matching uses the pooled 512 features.

Batch norm in D. The seed applies D to the unlabeled, generated and labeled batches in three
separate passes, so in training each kind is normalised with its own statistics; here D sees
the three as consecutive groups of one batch (`group_size` examples each, the same grouping
minibatch discrimination uses) and `GroupBatchNorm` normalises each group by its own
statistics, which is the seed's function in one pass. Real and generated images are never
mixed in one set of statistics: a batch mixing them would let D tell them apart by their
batch statistics instead of by their content. The running averages that evaluation uses
follow only the leading `stats_groups` groups, the real ones (labeled and unlabeled), since
evaluation sees real images only; the seed's running averages also take in the generated pass.
In training, statistics are batch statistics whenever the 'batch_stats' collection is mutable
(train.train_step applies D so in both players' steps, as the seed runs D in train mode
throughout); applied with it immutable (evaluation), D uses the running averages.
"""
import functools
from typing import Any, Optional, Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from ssgan_jax.networks import models
from ssgan_jax.networks.kernels import KernelChoices

# torchvision's initialisation: He normal (fan out) for convolutions, batch norm scale 1,
# bias 0, and PyTorch's default for the final dense layer (uniform, 1/sqrt(fan in)).
_CONV_INIT = nn.initializers.variance_scaling(2.0, 'fan_out', 'normal')
_DENSE_INIT = nn.initializers.variance_scaling(1 / 3, 'fan_in', 'uniform')
# Stage widths and strides of ResNet-18 (two basic blocks each).
STAGES = ((64, 1), (128, 2), (256, 2), (512, 2))
# Output sizes the generator makes: its first feature map's side and how many times it doubles.
GENERATOR_LAYOUTS = {32: (4, 3), 64: (4, 4), 128: (4, 5), 224: (7, 5)}
_GEN_MAX_WIDTH = 512
# DCGAN's initialisation of the generator's kernels.
_GEN_INIT = nn.initializers.normal(0.02)


class GroupBatchNorm(nn.Module):
  """Batch norm with each group of `group_size` consecutive examples normalised on its own.

  Statistics are taken over the group on every device of `axis_name` (the global group).
  The running averages (momentum 0.9, the unbiased variance, as PyTorch keeps them) follow the
  mean of the leading `stats_groups` groups' statistics (None: all groups).
  """
  momentum: float = 0.9
  epsilon: float = 1e-5
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32
  param_dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x_BxHxWxC, group_size: Optional[int] = None,
               stats_groups: Optional[int] = None):
    c = x_BxHxWxC.shape[-1]
    running_mean = self.variable('batch_stats', 'mean', lambda: jnp.zeros(c, jnp.float32))
    running_var = self.variable('batch_stats', 'var', lambda: jnp.ones(c, jnp.float32))
    scale = self.param('scale', nn.initializers.ones, (c,), self.param_dtype)
    bias = self.param('bias', nn.initializers.zeros, (c,), self.param_dtype)
    if self.is_mutable_collection('batch_stats'):
      b = x_BxHxWxC.shape[0]
      g = group_size or b
      x_GxNxHxWxC = x_BxHxWxC.astype(jnp.float32).reshape(b // g, g, *x_BxHxWxC.shape[1:])
      axes = tuple(range(1, x_GxNxHxWxC.ndim - 1))
      pmean = ((lambda v: v) if self.axis_name is None
               else functools.partial(jax.lax.pmean, axis_name=self.axis_name))
      mean_GxC = pmean(jnp.mean(x_GxNxHxWxC, axes))
      centred = x_GxNxHxWxC - jnp.expand_dims(mean_GxC, axes)
      var_GxC = pmean(jnp.mean(jnp.square(centred), axes))
      y = (centred * jnp.expand_dims(jax.lax.rsqrt(var_GxC + self.epsilon), axes)).reshape(
          x_BxHxWxC.shape)
      if not self.is_initializing():
        count = g * x_BxHxWxC.shape[1] * x_BxHxWxC.shape[2]
        if self.axis_name is not None:
          count *= jax.lax.psum(1, self.axis_name)
        real = slice(0, stats_groups)
        momentum = self.momentum
        running_mean.value = (momentum * running_mean.value
                              + (1 - momentum) * jnp.mean(mean_GxC[real], 0))
        running_var.value = (momentum * running_var.value + (1 - momentum)
                             * jnp.mean(var_GxC[real], 0) * count / (count - 1))
    else:
      y = (x_BxHxWxC.astype(jnp.float32) - running_mean.value) * jax.lax.rsqrt(
          running_var.value + self.epsilon)
    return (y * scale + bias).astype(self.dtype)


def _padding(pad: int):
  return ((pad, pad), (pad, pad))


class BasicBlock(nn.Module):
  """Two 3x3 convolutions with batch norm and a shortcut (1x1 convolution where it strides)."""
  features: int
  stride: int
  algorithms: KernelChoices
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, x, group_size: Optional[int] = None, stats_groups: Optional[int] = None):
    conv = functools.partial(models.Conv, algorithms=self.algorithms, kernel_init=_CONV_INIT,
                             dtype=self.dtype)
    norm = lambda h: GroupBatchNorm(axis_name=self.axis_name, dtype=self.dtype)(
        h, group_size, stats_groups)
    h = nn.relu(norm(conv(self.features, 3, self.stride, _padding(1))(x)))
    h = norm(conv(self.features, 3, 1, _padding(1))(h))
    if self.stride != 1 or x.shape[-1] != self.features:
      x = norm(conv(self.features, 1, self.stride, _padding(0))(x))
    return nn.relu(h + x)


class ResNet18Discriminator(nn.Module):
  """torchvision's ResNet-18 with K outputs; (outputs_BxO, pooled features_BxF).

  `example_keys` is accepted as by the other discriminators and unused (no noise or dropout
  in the seed's D). With `minibatch_kernels`, minibatch discrimination sits before the output
  layer. See the module docstring for `group_size` and `stats_groups`.
  """
  num_outputs: int
  algorithms: KernelChoices = KernelChoices()
  axis_name: Optional[str] = None
  minibatch_kernels: int = 0
  minibatch_kernel_dim: int = 5
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, images_BxHxWxC, example_keys=None, group_size: Optional[int] = None,
               stats_groups: Optional[int] = None):
    del example_keys
    x = models.Conv(64, 7, 2, _padding(3), self.algorithms, kernel_init=_CONV_INIT,
                    dtype=self.dtype)(images_BxHxWxC.astype(self.dtype))
    x = nn.relu(GroupBatchNorm(axis_name=self.axis_name, dtype=self.dtype)(
        x, group_size, stats_groups))
    x = nn.max_pool(x, (3, 3), (2, 2), _padding(1))
    for features, stride in STAGES:
      for block in range(2):
        x = BasicBlock(features, stride if block == 0 else 1, self.algorithms, self.axis_name,
                       self.dtype)(x, group_size, stats_groups)
    features_BxF = h = jnp.mean(x, axis=(1, 2))
    if self.minibatch_kernels:
      h = models.MinibatchDiscrimination(self.minibatch_kernels, self.minibatch_kernel_dim,
                                         self.dtype)(h, group_size)
    outputs = nn.Dense(self.num_outputs, kernel_init=_DENSE_INIT,
                       bias_init=_dense_bias_init(h.shape[-1]), dtype=self.dtype)(h)
    return models.as_float32(outputs, features_BxF)


def _dense_bias_init(fan_in: int):
  """PyTorch's default bias initialiser of a dense layer: uniform in +-1/sqrt(fan in)."""
  bound = fan_in ** -0.5
  return lambda key, shape, dtype=jnp.float32: jax.random.uniform(key, shape, dtype, -bound,
                                                                  bound)


def generator_widths(doublings: int) -> list[int]:
  """Widths of the generator's first map and of each doubled map before the output layer."""
  return [min(_GEN_MAX_WIDTH, 64 * 2**k) for k in reversed(range(doublings))]


class DcganGenerator(nn.Module):
  """z -> SxSxW (dense), doubled by 5x5 stride-2 transposed convolutions with batch norm and
  ReLU, -> HxWxC (tanh), with S and the number of doublings from `GENERATOR_LAYOUTS[H]`.

  Widths halve as the maps double, ending at 64 before the output layer (capped at 512):
  64 px is DCGAN's 4x4x512 -> 8x8x256 -> 16x16x128 -> 32x32x64 -> 64x64xC. Batch norm uses the
  batch's statistics, over every device of `axis_name`, as the other generators do.
  """
  image_shape: Sequence[int]
  algorithms: KernelChoices = KernelChoices()
  axis_name: Optional[str] = None
  dtype: Any = jnp.float32

  @nn.compact
  def __call__(self, z_BxZ):
    start, doublings = GENERATOR_LAYOUTS[self.image_shape[0]]
    widths = generator_widths(doublings)
    norm_relu = lambda x: nn.relu(nn.BatchNorm(
        use_running_average=False, axis_name=self.axis_name, dtype=self.dtype)(x))
    h = nn.Dense(start * start * widths[0], use_bias=False, dtype=self.dtype,
                 kernel_init=_GEN_INIT)(z_BxZ.astype(self.dtype))
    h = norm_relu(h).reshape((-1, start, start, widths[0]))
    for width in widths[1:]:
      h = norm_relu(models.ConvTranspose(width, 5, 2, self.algorithms, _GEN_INIT,
                                                 dtype=self.dtype)(h))
    return models.as_float32(jnp.tanh(models.ConvTranspose(
        self.image_shape[-1], 5, 2, self.algorithms, _GEN_INIT, dtype=self.dtype)(h)))
