"""The discriminators and generators of ssgan_jax.networks.models, as eager PyTorch modules.

Layouts follow PyTorch: Linear weights are (out, in), convolutions work in NCHW. The MLP
family keeps NHWC images and flattens them as the Flax model does, so its first layer sees
the pixels in the same order.

Weight-normalised layers compute w = g * v / ||v|| plus a bias. Their scale g and bias are
set from the first batch they see while `pending_init` is true (data-dependent init, on the
init batch with noise on, as in Flax's `init`); untrained scales are buffers, the
counterpart of Flax's 'constants' collection. A `WeightNorm` (ssgan_jax's) chooses, as in
Flax, whether they start from the data and which scales train. Noise and dropout are on in
train mode and off in eval mode (Flax: with and without example keys). The generators' batch norm always
normalises with the statistics of the batch, as the Flax generator does.
"""
import dataclasses
import math
from typing import Callable, Sequence

import torch
from torch import nn
import torch.nn.functional as F

from ssgan_jax.networks import models as jax_models, resnet as jax_resnet

LATENT_DIM = jax_models.LATENT_DIM
WeightNorm = jax_models.WeightNorm
_MLP_V_STD = 0.1
_CONV_V_STD = 0.05


def _normal(std: float) -> Callable[[torch.Tensor], None]:
  return lambda w: nn.init.normal_(w, 0.0, std)


def _glorot(w: torch.Tensor) -> None:
  nn.init.xavier_uniform_(w)


class ScaleBias(nn.Module):
  """Per-channel scale and bias; with `data_init`, chosen from the first batch seen; without
  `use_scale`, a bias alone (a plain layer's)."""

  def __init__(self, features: int, init_scale: float = 1.0, trainable_scale: bool = False,
               data_init: bool = True, use_scale: bool = True):
    super().__init__()
    self.init_scale = init_scale
    self.pending_init = data_init and use_scale
    self.bias = nn.Parameter(torch.zeros(features))
    if not use_scale:
      self.scale = None
    elif trainable_scale:
      self.scale = nn.Parameter(torch.ones(features))
    else:
      self.register_buffer('scale', torch.ones(features))

  def forward(self, y):
    shape = (1, -1) + (1,) * (y.ndim - 2)  # channels are dim 1
    if self.scale is None:
      return y + self.bias.view(shape)
    if self.pending_init:
      with torch.no_grad():
        dims = [d for d in range(y.ndim) if d != 1]
        scale = self.init_scale * torch.rsqrt(y.var(dims, unbiased=False) + 1e-8)
        self.scale.copy_(scale)
        self.bias.copy_(-y.mean(dims) * scale)
      self.pending_init = False
    return y * self.scale.view(shape) + self.bias.view(shape)


def _unit_rows(v: torch.Tensor, dims) -> torch.Tensor:
  """1 / ||v|| per output feature."""
  return torch.rsqrt(torch.sum(v * v, dim=dims) + 1e-12)


class WNLinear(nn.Module):
  """Weight-normalised dense layer; without `normalised`, a plain one (kernel and bias)."""

  def __init__(self, in_features: int, out_features: int, v_init=_normal(_MLP_V_STD),
               init_scale: float = 1.0, trainable_scale: bool = False, data_init: bool = True,
               normalised: bool = True):
    super().__init__()
    self.normalised = normalised
    self.v = nn.Parameter(torch.empty(out_features, in_features))
    v_init(self.v)
    self.scale_bias = ScaleBias(out_features, init_scale, trainable_scale, data_init,
                                use_scale=normalised)

  def forward(self, x):
    y = F.linear(x, self.v)
    return self.scale_bias(y * _unit_rows(self.v, 1) if self.normalised else y)


def same_padding(size: int, kernel: int, stride: int) -> tuple[int, int]:
  """(low, high) padding of XLA's 'SAME' convolution: the extra pixel goes on the high side."""
  out = -(-size // stride)
  total = max((out - 1) * stride + kernel - size, 0)
  return total // 2, total - total // 2


def conv2d_same(x, weight, stride: int):
  """Convolution with 'SAME' padding as XLA pads it (asymmetric for stride 2)."""
  k = weight.shape[-1]
  low_h, high_h = same_padding(x.shape[2], k, stride)
  low_w, high_w = same_padding(x.shape[3], k, stride)
  return F.conv2d(F.pad(x, (low_w, high_w, low_h, high_h)), weight, stride=stride)


def conv_transpose2d_same(x, weight, stride: int):
  """Transposed convolution with 'SAME' padding as `flax.linen.ConvTranspose` does it.

  XLA pads the dilated input by ceil((k + s - 2) / 2) before and the rest after; PyTorch
  pads both sides equally, so pad as much as XLA's "before" side and crop the excess.
  """
  k = weight.shape[-1]
  before = math.ceil((k + stride - 2) / 2)
  y = F.conv_transpose2d(x, weight, stride=stride, padding=k - 1 - before)
  return y[:, :, :x.shape[2] * stride, :x.shape[3] * stride]


class WNConv2d(nn.Module):
  """Weight-normalised convolution ('SAME' or 'VALID'), or transposed convolution ('SAME');
  without `normalised`, a plain one (kernel and bias)."""

  def __init__(self, in_channels: int, out_channels: int, kernel: int = 3, stride: int = 1,
               padding: str = 'SAME', transpose: bool = False, init_scale: float = 1.0,
               trainable_scale: bool = False, data_init: bool = True, normalised: bool = True):
    super().__init__()
    self.stride, self.padding, self.transpose = stride, padding, transpose
    self.normalised = normalised
    shape = ((in_channels, out_channels) if transpose else (out_channels, in_channels))
    self.v = nn.Parameter(torch.empty(*shape, kernel, kernel))
    _normal(_CONV_V_STD)(self.v)
    self.scale_bias = ScaleBias(out_channels, init_scale, trainable_scale, data_init,
                                use_scale=normalised)

  def forward(self, x):
    if self.transpose:
      y = conv_transpose2d_same(x, self.v, self.stride)
      norm_dims = (0, 2, 3)
    else:
      y = (conv2d_same(x, self.v, self.stride) if self.padding == 'SAME'
           else F.conv2d(x, self.v, stride=self.stride))
      norm_dims = (1, 2, 3)
    if self.normalised:
      y = y * _unit_rows(self.v, norm_dims).view(1, -1, 1, 1)
    return self.scale_bias(y)


class BatchNormBias(nn.Module):
  """Batch norm over the batch's own statistics, with a bias and, with `use_scale`, a scale
  (eps 1e-5)."""

  def __init__(self, features: int, use_scale: bool = False):
    super().__init__()
    self.bias = nn.Parameter(torch.zeros(features))
    self.weight = nn.Parameter(torch.ones(features)) if use_scale else None

  def forward(self, x):
    return F.batch_norm(x, None, None, self.weight, self.bias, training=True, eps=1e-5)


class GaussianNoise(nn.Module):
  """Adds N(0, std^2) noise in train mode."""

  def __init__(self, std: float):
    super().__init__()
    self.std = std

  def forward(self, x):
    if not self.training or self.std == 0:
      return x
    return x + self.std * torch.randn_like(x)


class MlpDiscriminator(nn.Module):
  """784-1000-500-250-250-250-K MLP with Gaussian noise (0.3 on input, 0.5 after hidden)."""

  def __init__(self, num_outputs: int, in_features: int,
               hidden: Sequence[int] = (1000, 500, 250, 250, 250), input_noise: float = 0.3,
               hidden_noise: float = 0.5, weight_norm: WeightNorm = WeightNorm()):
    super().__init__()
    widths = [in_features, *hidden]
    self.hidden = nn.ModuleList(WNLinear(i, o, **weight_norm.layer())
                                for i, o in zip(widths[:-1], widths[1:]))
    self.output = WNLinear(widths[-1], num_outputs, **weight_norm.layer(output=True))
    self.input_noise = GaussianNoise(input_noise)
    self.hidden_noise = GaussianNoise(hidden_noise)

  def forward(self, images_BxHxWxC):
    h = self.input_noise(images_BxHxWxC.flatten(1))
    for layer in self.hidden:
      h = F.relu(layer(h))
      features_BxF = h
      h = self.hidden_noise(h)
    return self.output(h), features_BxF


class MlpGenerator(nn.Module):
  """z -> 500 -> 500 (batch norm, softplus) -> image (weight norm, sigmoid), NHWC;
  `output_layer` 'plain' drops the output layer's weight norm."""

  def __init__(self, image_shape: Sequence[int], hidden: Sequence[int] = (500, 500),
               output_layer: str = 'weight_norm'):
    super().__init__()
    self.image_shape = tuple(image_shape)
    widths = [LATENT_DIM, *hidden]
    self.linears = nn.ModuleList(nn.Linear(i, o, bias=False)
                                 for i, o in zip(widths[:-1], widths[1:]))
    for linear in self.linears:
      _glorot(linear.weight)
    self.norms = nn.ModuleList(BatchNormBias(w) for w in hidden)
    self.output = WNLinear(widths[-1], math.prod(self.image_shape), v_init=_glorot,
                           trainable_scale=True, data_init=False,
                           normalised=output_layer == 'weight_norm')

  def forward(self, z_BxZ):
    h = z_BxZ
    for linear, norm in zip(self.linears, self.norms):
      h = F.softplus(norm(linear(h)))
    return torch.sigmoid(self.output(h)).view(-1, *self.image_shape)


class ConvDiscriminator(nn.Module):
  """The 32x32 convolutional discriminator on NCHW images; widths (96, 192) or (64, 128)."""

  def __init__(self, num_outputs: int, in_channels: int, widths: Sequence[int] = (96, 192),
               input_dropout: float = 0.2, hidden_dropout: float = 0.5,
               weight_norm: WeightNorm = WeightNorm()):
    super().__init__()
    narrow, wide = widths
    self.input_dropout = nn.Dropout(input_dropout)
    self.hidden_dropout = nn.Dropout(hidden_dropout)
    hidden = weight_norm.layer()
    blocks = []
    for c_in, width in ((in_channels, narrow), (narrow, wide)):
      blocks.append(nn.ModuleList([WNConv2d(c_in, width, **hidden),
                                   WNConv2d(width, width, **hidden),
                                   WNConv2d(width, width, stride=2, **hidden)]))
    self.blocks = nn.ModuleList(blocks)
    self.head = nn.ModuleList([WNConv2d(wide, wide, padding='VALID', **hidden),
                               WNConv2d(wide, wide, kernel=1, **hidden),
                               WNConv2d(wide, wide, kernel=1, **hidden)])
    self.output = WNLinear(wide, num_outputs, v_init=_normal(_CONV_V_STD), init_scale=0.1,
                           **weight_norm.layer(output=True))

  def forward(self, images_BxCxHxW):
    lrelu = lambda x: F.leaky_relu(x, 0.2)
    h = self.input_dropout(images_BxCxHxW)
    for block in self.blocks:
      for conv in block:
        h = lrelu(conv(h))
      h = self.hidden_dropout(h)
    for conv in self.head:
      h = lrelu(conv(h))
    features_BxF = h.mean(dim=(2, 3))
    return self.output(features_BxF), features_BxF


class ConvGenerator(nn.Module):
  """z -> 4x4x512 -> 8x8x256 -> 16x16x128 (batch norm, ReLU) -> 32x32xC (weight norm, tanh), NCHW;
  `output_layer` 'plain' drops the output layer's weight norm."""

  def __init__(self, image_shape: Sequence[int], weight_norm: WeightNorm = WeightNorm(),
               output_layer: str = 'weight_norm'):
    super().__init__()
    self.project = nn.Linear(LATENT_DIM, 4 * 4 * 512, bias=False)
    _normal(_CONV_V_STD)(self.project.weight)
    self.project_norm = BatchNormBias(4 * 4 * 512)
    self.upsample = nn.ParameterList(
        nn.Parameter(_CONV_V_STD * torch.randn(c_in, c_out, 5, 5))
        for c_in, c_out in ((512, 256), (256, 128)))
    self.upsample_norms = nn.ModuleList(BatchNormBias(c) for c in (256, 128))
    self.output = WNConv2d(128, image_shape[-1], kernel=5, stride=2, transpose=True,
                           init_scale=0.1, **weight_norm.layer(output=True),
                           normalised=output_layer == 'weight_norm')

  def forward(self, z_BxZ):
    h = F.relu(self.project_norm(self.project(z_BxZ)))
    h = h.view(-1, 4, 4, 512).permute(0, 3, 1, 2)  # Flax reshapes to NHWC
    for weight, norm in zip(self.upsample, self.upsample_norms):
      h = F.relu(norm(conv_transpose2d_same(h, weight, 2)))
    return torch.tanh(self.output(h))


class GroupBatchNorm2d(nn.Module):
  """ssgan_jax.networks.resnet.GroupBatchNorm on NCHW: in train mode each group of `group_size`
  consecutive examples is normalised by its own statistics, and the running averages
  (momentum 0.1, unbiased variance) follow the leading `stats_groups` groups (None: all,
  0: none); in eval mode the running averages normalise."""

  def __init__(self, features: int, momentum: float = 0.1, eps: float = 1e-5):
    super().__init__()
    self.momentum, self.eps = momentum, eps
    self.weight = nn.Parameter(torch.ones(features))
    self.bias = nn.Parameter(torch.zeros(features))
    self.register_buffer('running_mean', torch.zeros(features))
    self.register_buffer('running_var', torch.ones(features))

  def forward(self, x_BxCxHxW, group_size=None, stats_groups=None):
    if not self.training:
      return F.batch_norm(x_BxCxHxW, self.running_mean, self.running_var, self.weight,
                          self.bias, training=False, eps=self.eps)
    b, c, h, w = x_BxCxHxW.shape
    g = group_size or b
    x_GxNxCxHxW = x_BxCxHxW.view(b // g, g, c, h, w)
    mean_GxC = x_GxNxCxHxW.mean(dim=(1, 3, 4))
    centred = x_GxNxCxHxW - mean_GxC[:, None, :, None, None]
    var_GxC = centred.square().mean(dim=(1, 3, 4))
    y = (centred * torch.rsqrt(var_GxC + self.eps)[:, None, :, None, None]).view(b, c, h, w)
    if stats_groups != 0:
      with torch.no_grad():
        count = g * h * w
        self.running_mean.lerp_(mean_GxC[:stats_groups].mean(0), self.momentum)
        self.running_var.lerp_(var_GxC[:stats_groups].mean(0) * count / (count - 1),
                               self.momentum)
    return y * self.weight.view(1, -1, 1, 1) + self.bias.view(1, -1, 1, 1)


class BasicBlock(nn.Module):
  """ResNet's basic block: two 3x3 convolutions with batch norm and a shortcut."""

  def __init__(self, in_channels: int, features: int, stride: int):
    super().__init__()
    self.conv1 = nn.Conv2d(in_channels, features, 3, stride, 1, bias=False)
    self.norm1 = GroupBatchNorm2d(features)
    self.conv2 = nn.Conv2d(features, features, 3, 1, 1, bias=False)
    self.norm2 = GroupBatchNorm2d(features)
    self.shortcut = None
    if stride != 1 or in_channels != features:
      self.shortcut = nn.Conv2d(in_channels, features, 1, stride, 0, bias=False)
      self.shortcut_norm = GroupBatchNorm2d(features)

  def forward(self, x, *groups):
    h = F.relu(self.norm1(self.conv1(x), *groups))
    h = self.norm2(self.conv2(h), *groups)
    if self.shortcut is not None:
      x = self.shortcut_norm(self.shortcut(x), *groups)
    return F.relu(h + x)


class ResNet18Discriminator(nn.Module):
  """torchvision's ResNet-18 layout with K outputs, on NCHW images; (outputs, pooled features).

  forward(x, group_size, stats_groups): see GroupBatchNorm2d.
  """

  def __init__(self, num_outputs: int, in_channels: int):
    super().__init__()
    self.stem = nn.Conv2d(in_channels, 64, 7, 2, 3, bias=False)
    self.stem_norm = GroupBatchNorm2d(64)
    blocks, width = [], 64
    for features, stride in jax_resnet.STAGES:
      blocks += [BasicBlock(width, features, stride), BasicBlock(features, features, 1)]
      width = features
    self.blocks = nn.ModuleList(blocks)
    self.output = nn.Linear(width, num_outputs)

  def forward(self, images_BxCxHxW, group_size=None, stats_groups=None):
    groups = (group_size, stats_groups)
    h = F.max_pool2d(F.relu(self.stem_norm(self.stem(images_BxCxHxW), *groups)), 3, 2, 1)
    for block in self.blocks:
      h = block(h, *groups)
    features_BxF = h.mean(dim=(2, 3))
    return self.output(features_BxF), features_BxF


class DcganGenerator(nn.Module):
  """ssgan_jax.networks.resnet.DcganGenerator, NCHW: z -> SxSxW -> doublings (batch norm, ReLU) -> tanh."""

  def __init__(self, image_shape: Sequence[int]):
    super().__init__()
    self.start, doublings = jax_resnet.GENERATOR_LAYOUTS[image_shape[0]]
    self.widths = jax_resnet.generator_widths(doublings)
    self.project = nn.Linear(LATENT_DIM, self.start**2 * self.widths[0], bias=False)
    self.project_norm = BatchNormBias(self.start**2 * self.widths[0], use_scale=True)
    self.upsample = nn.ParameterList(
        nn.Parameter(0.02 * torch.randn(c_in, c_out, 5, 5))
        for c_in, c_out in zip(self.widths, [*self.widths[1:], image_shape[-1]]))
    self.upsample_norms = nn.ModuleList(BatchNormBias(c, use_scale=True)
                                        for c in self.widths[1:])

  def forward(self, z_BxZ):
    h = F.relu(self.project_norm(self.project(z_BxZ)))
    h = h.view(-1, self.start, self.start, self.widths[0]).permute(0, 3, 1, 2)
    for weight, norm in zip(self.upsample[:-1], self.upsample_norms):
      h = F.relu(norm(conv_transpose2d_same(h, weight, 2)))
    return torch.tanh(conv_transpose2d_same(h, self.upsample[-1], 2))


@dataclasses.dataclass(frozen=True)
class ModelFamily:
  """A discriminator/generator pair and how uint8 NHWC images become their inputs."""
  # num_outputs, image shape, WeightNorm -> D; image shape, WeightNorm, G's output layer
  # (--gen_output_layer) -> G. A model whose weight normalisation has no choices (batch norm;
  # the MLP G's one output layer, which starts at g = 1 as in the reference) ignores the
  # WeightNorm, as Flax's has no such field; the DCGAN G ignores the output layer too.
  discriminator: Callable[[int, Sequence[int], WeightNorm], nn.Module]
  generator: Callable[[Sequence[int], WeightNorm, str], nn.Module]
  pixel_range: tuple[float, float]
  channels_first: bool
  disc_batch_norm: bool = False  # D takes (x, group_size, stats_groups)

  def images_to_input(self, images_uint8: torch.Tensor) -> torch.Tensor:
    """uint8 NHWC pixels -> floats in `pixel_range`, in the discriminator's layout."""
    low, high = self.pixel_range
    x = images_uint8.to(torch.float32) * ((high - low) / 255.0) + low
    return x.permute(0, 3, 1, 2) if self.channels_first else x


def _conv_family(name: str, widths) -> ModelFamily:
  return ModelFamily(
      discriminator=lambda n, shape, weight_norm: ConvDiscriminator(
          n, shape[-1], widths, weight_norm=weight_norm),
      generator=ConvGenerator, pixel_range=jax_models.MODEL_FAMILIES[name].pixel_range,
      channels_first=True)


MODEL_FAMILIES = {
    'mlp': ModelFamily(
        discriminator=lambda n, shape, weight_norm: MlpDiscriminator(
            n, math.prod(shape), weight_norm=weight_norm),
        generator=lambda shape, _, output_layer: MlpGenerator(shape, output_layer=output_layer),
        pixel_range=jax_models.MODEL_FAMILIES['mlp'].pixel_range, channels_first=False),
    'conv_small': _conv_family('conv_small', (64, 128)),
    'conv_large': _conv_family('conv_large', (96, 192)),
    'resnet18': ModelFamily(
        discriminator=lambda n, shape, _: ResNet18Discriminator(n, shape[-1]),
        generator=lambda shape, _, __: DcganGenerator(shape), pixel_range=jax_models.MODEL_FAMILIES['resnet18'].pixel_range,
        channels_first=True, disc_batch_norm=True),
}


def data_dependent_init(module: nn.Module, *inputs) -> None:
  """Runs `module` once on `inputs` so its weight-normalised layers pick scales and biases
  (a module without such layers is left as it is)."""
  if not any(hasattr(m, 'pending_init') for m in module.modules()):
    return
  with torch.no_grad():
    module(*inputs)
  assert not any(getattr(m, 'pending_init', False) for m in module.modules())
