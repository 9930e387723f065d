"""Which algorithms compute the models' convolutions, their gradients and dropout masks.

The same functions either way. 'auto' is XLA's own (lax.conv_transpose, JAX's gradient rules,
jax.random.bernoulli) on every backend but CPU, where the hand-written algorithms of
cpu_kernels.py were measured faster (benchmarks/RESULTS.md); every algorithm can be chosen by
flag on every backend. A run resolves its choices once (`KernelChoices.resolve`).
"""
import dataclasses
from typing import Optional

import jax

from ssgan_jax.networks import cpu_kernels, xla_cpu  # cpu_kernels calls `conv` back for its phases

CONV_TRANSPOSE_ALGORITHMS = ('auto', 'phases', 'subpixel', 'dilated')
INPUT_GRADIENTS = ('auto', 'phases', 'subpixel', 'dilated')
KERNEL_GRADIENTS = ('auto', 'patches', 'xla')
TINY_MAP_ALGORITHMS = ('auto', 'patches', 'xla')
DROPOUT_SAMPLERS = ('auto', 'bits', 'bernoulli')
# What 'auto' zero-skipping resolves to on CPU: 'phases' for layers of PHASE_MIN_FEATURES
# features or more, 'subpixel' for narrower ones. Narrower phases' convolutions ran too far
# below the matrix units' rate, and the side-by-side one was faster despite its zero taps; at
# 32 the two traded places from run to run (benchmarks/results/phases_ab/).
BY_WIDTH = 'by_width'
PHASE_MIN_FEATURES = 64
# Inputs of at most this many pixels a side are convolved by 'patches' when `tiny_maps` says
# so. XLA:CPU (Eigen and YNNPACK alike) ran a 3x3 'SAME' convolution of 192 2x2x512 maps in
# 1.7 s against 24 ms by patches, and of 1x1 maps in 64 against 11 ms; from 3x3 maps on
# its own were as fast or faster (benchmarks/results/tiny_maps_cpu/).
TINY_MAP_PIXELS = 2


@dataclasses.dataclass(frozen=True)
class KernelChoices:
  """The algorithms of a model's kernels; `backend` is set once 'auto' is resolved for it."""
  transpose: str = 'auto'
  input_gradient: str = 'auto'
  kernel_gradient: str = 'auto'
  dropout: str = 'auto'
  tiny_maps: str = 'auto'
  backend: Optional[str] = None

  def resolve(self, backend: Optional[str] = None,
              ynnpack: Optional[bool] = None) -> 'KernelChoices':
    """These choices with every 'auto' made for `backend` (default: JAX's default backend).

    On CPU: zero-skipping transposed convolutions and strided input gradients (BY_WIDTH),
    kernel gradients by patches where XLA:CPU convolves with YNNPACK (`ynnpack`, default
    read from XLA_FLAGS), dropout from random bits, tiny maps by patches. Elsewhere XLA's
    own.
    """
    backend = backend or jax.default_backend()
    on_cpu = backend == 'cpu'
    if ynnpack is None:
      ynnpack = on_cpu and xla_cpu.ynnpack_convolutions()
    pick = lambda value, cpu, other: (cpu if on_cpu else other) if value == 'auto' else value
    return KernelChoices(transpose=pick(self.transpose, BY_WIDTH, 'dilated'),
                         input_gradient=pick(self.input_gradient, BY_WIDTH, 'dilated'),
                         kernel_gradient=pick(self.kernel_gradient,
                                              'patches' if ynnpack else 'xla', 'xla'),
                         dropout=pick(self.dropout, 'bits', 'bernoulli'),
                         tiny_maps=pick(self.tiny_maps, 'patches', 'xla'), backend=backend)

  def _resolved(self) -> 'KernelChoices':
    return self if self.backend else self.resolve()

  def transpose_algorithm(self, features: int) -> str:
    """The algorithm of a transposed convolution with `features` outputs."""
    return _by_width(self._resolved().transpose, features)

  def input_gradient_algorithm(self, channels: int) -> str:
    """The algorithm of a strided convolution's input gradient, `channels` wide."""
    return _by_width(self._resolved().input_gradient, channels)

  def patch_kernel_gradient(self) -> bool:
    """Whether kernel gradients come from patches."""
    return self._resolved().kernel_gradient == 'patches'

  def own_gradients(self, stride: int) -> bool:
    """Whether a convolution's gradients are cpu_kernels' (`conv_with_own_gradients`): on
    CPU always, elsewhere where an algorithm other than XLA's computes them."""
    resolved = self._resolved()
    return (resolved.backend == 'cpu' or resolved.kernel_gradient == 'patches'
            or (stride > 1 and resolved.input_gradient != 'dilated'))

  def conv_by_patches(self, input_hw: tuple[int, int]) -> bool:
    """Whether a convolution of `input_hw` maps is one matrix product of image patches."""
    return (self._resolved().tiny_maps == 'patches'
            and max(input_hw) <= TINY_MAP_PIXELS)

  def bits_dropout(self) -> bool:
    """Whether dropout masks come from `cpu_kernels.bernoulli_mask`."""
    return self._resolved().dropout == 'bits'


def _by_width(algorithm: str, features: int) -> str:
  if algorithm != BY_WIDTH:
    return algorithm
  return 'phases' if features >= PHASE_MIN_FEATURES else 'subpixel'


def conv(x_BxHxWxC: jax.Array, kernel_RxSxCxF: jax.Array, stride: int, padding,
         choices: KernelChoices) -> jax.Array:
  """`lax.conv_general_dilated` of NHWC images with an HWIO kernel.

  `padding` is 'SAME', 'VALID' or ((top, bottom), (left, right)). The value is XLA's; the
  input and kernel gradients are computed as `choices` says, and tiny maps' convolutions too.
  """
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(x_BxHxWxC.shape[1:3], kernel_RxSxCxF.shape[:2],
                                      (stride, stride), padding)
  padding = tuple(tuple(int(p) for p in pair) for pair in padding)
  if choices.conv_by_patches(x_BxHxWxC.shape[1:3]):
    return cpu_kernels.conv_by_patches(x_BxHxWxC, kernel_RxSxCxF, stride, padding)
  if choices.own_gradients(stride):
    return cpu_kernels.conv_with_own_gradients(x_BxHxWxC, kernel_RxSxCxF, stride, padding,
                                               choices)
  return cpu_kernels.xla_conv(x_BxHxWxC, kernel_RxSxCxF, stride, padding)


def conv_transpose_same(x_BxHxWxC: jax.Array, kernel_RxSxCxF: jax.Array, stride: int,
                        choices: KernelChoices) -> jax.Array:
  """`lax.conv_transpose(x, kernel, (stride, stride), 'SAME')`, Flax ConvTranspose's function,
  computed by the algorithm `choices` gives for the layer's width ('dilated': that call)."""
  algorithm = choices.transpose_algorithm(kernel_RxSxCxF.shape[-1])
  if algorithm == 'dilated':
    return jax.lax.conv_transpose(x_BxHxWxC, kernel_RxSxCxF, (stride, stride), 'SAME',
                                  dimension_numbers=cpu_kernels.NHWC)
  return cpu_kernels.conv_transpose_same(x_BxHxWxC, kernel_RxSxCxF, stride, algorithm, choices)


def keep_mask(key: jax.Array, p: float, shape, choices: KernelChoices) -> jax.Array:
  """Booleans of `shape`, each True with probability p: dropout's kept elements."""
  if choices.bits_dropout():
    return cpu_kernels.bernoulli_mask(key, p, shape)
  return jax.random.bernoulli(key, p, shape)
