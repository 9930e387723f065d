"""Hand-written algorithms measured faster on this project's CPU: defaults only there.

`kernels.KernelChoices` picks them by flag on any backend; its 'auto' picks them on CPU only
(XLA's own algorithms elsewhere). All measured in benchmarks/RESULTS.md:
- Transposed convolutions (G) and the input gradients of strided convolutions (D) are both
  convolutions over an input with stride - 1 zeros between its pixels
  (`dilated_input_conv`): 'phases' computes one stride-1 convolution per output phase, with
  that phase's taps only, then depth to space; 'subpixel' one stride-1 convolution of all
  phases side by side, each zero-filled to a common window. On CPU 'phases' was faster for
  layers of at least PHASE_MIN_FEATURES features, 'subpixel' for narrower ones.
- Kernel gradients by 'patches' (image patches times output gradients, a batch chunk at a
  time), faster where XLA:CPU runs convolutions with YNNPACK (see xla_cpu.py).
- `conv_with_own_gradients`: a convolution whose gradients are written out here as
  convolutions in the NHWC/HWIO layout, XLA's own algorithms included. JAX's gradient rules
  give XLA convolutions in other layouts (the kernel gradient with the batch as its
  contracted feature, the input gradient with the kernel's features swapped). XLA:CPU
  converts those to NHWC for its Eigen kernels outside loops only; inside a loop (a scan of
  several train steps) it runs them through a generic path, the kernel gradients hundreds of
  times slower (jax-ml/jax#12868; benchmarks/results/scan_gradients_ab/).
- `conv_by_patches`: a convolution as one matrix product of image patches and the kernel,
  for feature maps of at most `kernels.TINY_MAP_PIXELS` a side (ResNet-18's last stage at
  64 px), where XLA:CPU's convolutions ran 6 to 70 times slower.
- `bernoulli_mask`: dropout masks from a few random bits per element.
"""
from __future__ import annotations  # kernels imports this module and is imported here

import functools
import math
from typing import Sequence

import jax
import jax.numpy as jnp

from ssgan_jax.networks import kernels  # for `kernels.conv`, at call time

NHWC = ('NHWC', 'HWIO', 'NHWC')
# Image patches of one chunk of the batch, in bytes: small enough to stay in the CPU's caches
# while they are multiplied, large enough to make that matmul efficient.
PATCH_CHUNK_BYTES = 32 * 2**20


Padding = tuple[tuple[int, int], tuple[int, int]]


def xla_conv(x_BxHxWxC, kernel_RxSxCxF, stride: int, padding: Padding):
  return jax.lax.conv_general_dilated(x_BxHxWxC, kernel_RxSxCxF, (stride, stride), padding,
                                      dimension_numbers=NHWC)


def images_per_chunk(batch: int, bytes_per_image: int, budget: int = PATCH_CHUNK_BYTES) -> int:
  """The largest divisor of `batch` whose images fit in `budget` bytes (at least 1)."""
  fitting = max(1, budget // max(1, bytes_per_image))
  return max(d for d in range(1, min(batch, fitting) + 1) if batch % d == 0)


def pad_images(x_BxHxWxC, padding: Padding):
  """x zero-padded in height and width; negative padding crops."""
  return jax.lax.pad(x_BxHxWxC, jnp.zeros((), x_BxHxWxC.dtype),
                     ((0, 0, 0), (*padding[0], 0), (*padding[1], 0), (0, 0, 0)))


def image_patches(x_padded_BxHxWxC, kernel_hw: tuple[int, int], stride: int,
                  out_hw: tuple[int, int]):
  """The R*S shifted views that a convolution's taps read, side by side: (B, P, Q, R*S*C)."""
  (rows, cols), (out_h, out_w) = kernel_hw, out_hw
  shifted = [x_padded_BxHxWxC[:, i:i + stride * (out_h - 1) + 1:stride,
                              j:j + stride * (out_w - 1) + 1:stride, :]
             for i in range(rows) for j in range(cols)]
  return jnp.concatenate(shifted, axis=-1)


def conv_by_patches(x_BxHxWxC, kernel_RxSxCxF, stride: int, padding: Padding):
  """`xla_conv(x, kernel, stride, padding)` as one matrix product of the image patches and
  the kernel as an (R*S*C, F) matrix. Its gradients are JAX's rules for pads, slices and a
  matrix product: no convolution anywhere."""
  rows, cols, channels, features = kernel_RxSxCxF.shape
  x_padded = pad_images(x_BxHxWxC, padding)
  out_hw = tuple((size - kernel) // stride + 1
                 for size, kernel in zip(x_padded.shape[1:3], (rows, cols)))
  patches_BxPxQxRSC = image_patches(x_padded, (rows, cols), stride, out_hw)
  return jnp.matmul(patches_BxPxQxRSC, kernel_RxSxCxF.reshape(rows * cols * channels, features))


def kernel_gradient_by_patches(x_BxHxWxC, dy_BxPxQxF, kernel_hw: tuple[int, int], stride: int,
                               padding: Padding, chunk_bytes: int = PATCH_CHUNK_BYTES):
  """The kernel gradient of `xla_conv(x, kernel, stride, padding)` for output gradient dy.

  g[i, j, c, f] = sum over images and output pixels (p, q) of
  x_padded[stride * p + i, stride * q + j, c] * dy[p, q, f]. For each chunk of images the
  R*S shifted views of the padded input are laid side by side as a (pixels, R*S*C) patch
  matrix and multiplied by dy's (pixels, F); chunks run one after another (lax.scan), so one
  chunk's patches are in memory at a time. Returns the sum in float32.
  """
  batch, _, _, channels = x_BxHxWxC.shape
  _, out_h, out_w, features = dy_BxPxQxF.shape
  rows, cols = kernel_hw
  x_padded = pad_images(x_BxHxWxC, padding)
  patch_bytes = out_h * out_w * rows * cols * channels * x_BxHxWxC.dtype.itemsize
  chunk = images_per_chunk(batch, patch_bytes, chunk_bytes)

  def add_chunk(grad_FxRSC, chunk_arrays):
    xp_NxHxWxC, dy_NxPxQxF = chunk_arrays
    patches_NPQxRSC = image_patches(xp_NxHxWxC, kernel_hw, stride, (out_h, out_w)).reshape(
        -1, rows * cols * channels)
    return grad_FxRSC + jnp.matmul(dy_NxPxQxF.reshape(-1, features).T, patches_NPQxRSC,
                                   preferred_element_type=jnp.float32), None

  in_chunks = lambda a: a.reshape(batch // chunk, chunk, *a.shape[1:])
  grad_FxRSC, _ = jax.lax.scan(add_chunk,
                               jnp.zeros((features, rows * cols * channels), jnp.float32),
                               (in_chunks(x_padded), in_chunks(dy_BxPxQxF)))
  return grad_FxRSC.T.reshape(rows, cols, channels, features)


def input_gradient(dy_BxPxQxF, kernel_RxSxCxF, input_hw: tuple[int, int], stride: int,
                   padding: Padding, algorithms: kernels.KernelChoices):
  """The input gradient of `xla_conv(x, kernel, stride, padding)` for output gradient dy.

  XLA's algorithm in the NHWC/HWIO layout: dy with stride - 1 zeros between its pixels,
  convolved with the kernel turned 180 degrees, its in and out features swapped, by the
  algorithm `algorithms` chooses (`dilated_input_conv`). The padding makes the result
  input-sized: it ends at the last input row, whether or not the forward pass read it.
  """
  pads = []
  for kernel, size, out, (before, _) in zip(kernel_RxSxCxF.shape[:2], input_hw,
                                            dy_BxPxQxF.shape[1:3], padding):
    dilated = (out - 1) * stride + 1
    pads.append((kernel - 1 - before, size + before - dilated))
  rotated_RxSxFxC = jnp.flip(kernel_RxSxCxF, (0, 1)).swapaxes(2, 3)
  algorithm = algorithms.input_gradient_algorithm(rotated_RxSxFxC.shape[-1])
  return dilated_input_conv(dy_BxPxQxF, rotated_RxSxFxC, stride, tuple(pads),
                            algorithm if stride > 1 else 'dilated', algorithms)


def kernel_gradient(x_BxHxWxC, dy_BxPxQxF, kernel_hw: tuple[int, int], stride: int,
                    padding: Padding):
  """The kernel gradient of `xla_conv(x, kernel, stride, padding)` for output gradient dy.

  XLA's algorithm in the NHWC/HWIO layout: the images' features act as the batch and the
  batch as the contracted feature, the input (C, H, W, B) convolved with dy (P, Q, B, F) as
  a P x Q window with stride - 1 zeros between its taps (rhs_dilation). The padding ends the
  input where the forward pass's last window ends.
  """
  pads = []
  for kernel, size, out, (before, _) in zip(kernel_hw, x_BxHxWxC.shape[1:3],
                                            dy_BxPxQxF.shape[1:3], padding):
    pads.append((before, (out - 1) * stride + kernel - size - before))
  grad_CxRxSxF = jax.lax.conv_general_dilated(
      x_BxHxWxC.transpose(3, 1, 2, 0), dy_BxPxQxF.transpose(1, 2, 0, 3), (1, 1), pads,
      rhs_dilation=(stride, stride), dimension_numbers=NHWC)
  return grad_CxRxSxF.transpose(1, 2, 0, 3)


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def conv_with_own_gradients(x_BxHxWxC, kernel_RxSxCxF, stride, padding, algorithms):
  """`xla_conv`, with its input and kernel gradients computed here as `algorithms` says."""
  return xla_conv(x_BxHxWxC, kernel_RxSxCxF, stride, padding)


def _conv_forward(x_BxHxWxC, kernel_RxSxCxF, stride, padding, algorithms):
  return xla_conv(x_BxHxWxC, kernel_RxSxCxF, stride, padding), (x_BxHxWxC, kernel_RxSxCxF)


def _conv_backward(stride, padding, algorithms, residuals, dy_BxPxQxF):
  x_BxHxWxC, kernel_RxSxCxF = residuals
  kernel_hw = kernel_RxSxCxF.shape[:2]
  dx_BxHxWxC = input_gradient(dy_BxPxQxF, kernel_RxSxCxF, x_BxHxWxC.shape[1:3], stride, padding,
                              algorithms)
  if algorithms.patch_kernel_gradient():
    dkernel = kernel_gradient_by_patches(x_BxHxWxC, dy_BxPxQxF, kernel_hw, stride, padding)
  else:
    dkernel = kernel_gradient(x_BxHxWxC, dy_BxPxQxF, kernel_hw, stride, padding)
  return dx_BxHxWxC, dkernel.astype(kernel_RxSxCxF.dtype)


conv_with_own_gradients.defvjp(_conv_forward, _conv_backward)


Phase = tuple[int, int, int]      # along one axis: first tap, number of taps, first offset
Window = tuple[int, int]          # along one axis: first and last offset read


def _phases(kernel: int, stride: int, before: int) -> list[Phase]:
  """Which taps each output phase of `dilated_input_conv` applies, along one axis.

  Output row o = stride * u + r (phase r) reads the zero-dilated input's rows o - before + t,
  which are input rows where r + t - before is a multiple of the stride: row u + d for
  d = (r + t - before) / stride. So phase r applies every stride-th tap from its first, at
  consecutive offsets d. A phase without taps (a kernel shorter than the stride) gets
  offset 0.
  """
  phases = []
  for r in range(stride):
    first_tap = (before - r) % stride
    taps = len(range(first_tap, kernel, stride))
    phases.append((first_tap, taps, (r + first_tap - before) // stride if taps else 0))
  return phases


def _phase_kernel(kernel_RxSxCxF, stride: int, phase_pair: tuple[Phase, Phase],
                  windows: tuple[Window, Window]):
  """The taps of phase (r, s) as a kernel over the offsets `windows`, zero elsewhere."""
  (tap_r, _, _), (tap_s, _, _) = phase_pair
  fill = [(offset - first, last - offset - taps + 1, 0)
          for (_, taps, offset), (first, last) in zip(phase_pair, windows)]
  return jax.lax.pad(kernel_RxSxCxF[tap_r::stride, tap_s::stride],
                     jnp.zeros((), kernel_RxSxCxF.dtype), (*fill, (0, 0, 0), (0, 0, 0)))


def dilated_input_conv(y_BxPxQxC, kernel_RxSxCxF, stride: int, padding: Padding,
                       algorithm: str, algorithms: kernels.KernelChoices) -> jax.Array:
  """`lax.conv_general_dilated(y, kernel, 1, padding, lhs_dilation=stride)` in NHWC/HWIO.

  The convolution over y with stride - 1 zeros between its pixels, which a transposed
  convolution and a strided convolution's input gradient both are. 'dilated' is that call
  (with JAX's gradient rules). The others skip the zeros: each output phase (r, s) is a
  stride-1 convolution of y itself with the taps that phase applies (`_phases`), and depth
  to space puts the phases' pixels in place. 'phases' runs one convolution per phase with
  its own taps (a 3x3 kernel at stride 2: 1x1, 1x2, 2x1 and 2x2); 'subpixel' one
  convolution of all phases side by side, each zero-filled to the common window (2x2 each:
  16 taps for 9). Their convolutions' gradients are `kernels.conv`'s, as `algorithms` says.
  """
  if algorithm == 'dilated':
    return jax.lax.conv_general_dilated(y_BxPxQxC, kernel_RxSxCxF, (1, 1), padding,
                                        lhs_dilation=(stride, stride), dimension_numbers=NHWC)
  batch, *in_hw, _ = y_BxPxQxC.shape
  features = kernel_RxSxCxF.shape[-1]
  out_hw = [(size - 1) * stride + before + after - kernel + 2
            for size, kernel, (before, after) in zip(in_hw, kernel_RxSxCxF.shape[:2], padding)]
  # Every phase computes the rows of phase 0, the longest; depth to space then crops.
  rows_hw = [-(-out // stride) for out in out_hw]
  phases_r, phases_s = (_phases(kernel, stride, before)
                        for kernel, (before, _) in zip(kernel_RxSxCxF.shape[:2], padding))
  reading = lambda windows: tuple((-first, rows - 1 + last - (size - 1))
                                  for (first, last), rows, size in zip(windows, rows_hw, in_hw))
  if algorithm == 'subpixel':
    windows = tuple((min(offset for _, taps, offset in phases if taps),
                     max(offset + taps - 1 for _, taps, offset in phases))
                    for phases in (phases_r, phases_s))
    sub_RxSxCxSSF = jnp.concatenate(
        [_phase_kernel(kernel_RxSxCxF, stride, (r, s), windows)
         for r in phases_r for s in phases_s], axis=-1)
    z_BxNxMxSSF = kernels.conv(y_BxPxQxC, sub_RxSxCxSSF, 1, reading(windows), algorithms)
    z_BxNxSxMxSxF = z_BxNxMxSSF.reshape(batch, *rows_hw, stride, stride, features).transpose(
        0, 1, 3, 2, 4, 5)
  else:
    def phase_output(pair):
      if any(taps == 0 for _, taps, _ in pair):
        return jnp.zeros((batch, *rows_hw, features), jnp.result_type(y_BxPxQxC, kernel_RxSxCxF))
      windows = tuple((offset, offset + taps - 1) for _, taps, offset in pair)
      return kernels.conv(y_BxPxQxC, _phase_kernel(kernel_RxSxCxF, stride, pair, windows), 1,
                          reading(windows), algorithms)
    # Stacked straight into depth-to-space order: one pass over the output.
    z_BxNxSxMxSxF = jnp.stack([jnp.stack([phase_output((r, s)) for s in phases_s], axis=3)
                               for r in phases_r], axis=2)
  (rows, cols), (out_h, out_w) = rows_hw, out_hw
  return z_BxNxSxMxSxF.reshape(batch, rows * stride, cols * stride, features)[:, :out_h, :out_w]


def conv_transpose_same(x_BxHxWxC: jax.Array, kernel_RxSxCxF: jax.Array, stride: int,
                        algorithm: str, algorithms: kernels.KernelChoices) -> jax.Array:
  """`lax.conv_transpose(x, kernel, (stride, stride), 'SAME')` by `algorithm` (see
  `dilated_input_conv`).

  That is a convolution over x with stride - 1 zeros between its pixels and lax's 'SAME'
  padding. XLA:CPU runs the dilated form and its kernel gradient through a slow path
  (benchmarks/RESULTS.md, defaults that a measurement decided).
  """
  padding = []
  for kernel in kernel_RxSxCxF.shape[:2]:
    before = kernel - 1 if stride > kernel - 1 else -(-(kernel + stride - 2) // 2)
    padding.append((before, kernel + stride - 2 - before))
  return dilated_input_conv(x_BxHxWxC, kernel_RxSxCxF, stride, tuple(padding), algorithm,
                            algorithms)


def bernoulli_mask(key: jax.Array, p: float, shape: Sequence[int]) -> jax.Array:
  """Booleans of `shape`, each True with probability p, independently.

  `jax.random.bernoulli` spends a 32-bit random word on each element; on CPU drawing those
  words took about 9 % of the SVHN train step (benchmarks/results/dropout_bits_ab/). Where p
  (a Python float) is a multiple of 2^-b for some b <= 8
  (dropout's keep probability 0.5: b = 1), each element here takes b bits of a word instead,
  exactly as likely to be True; other p fall back to `jax.random.bernoulli`.
  """
  bits = next((b for b in range(1, 9) if (p * 2**b).is_integer()), None)
  if bits is None:
    return jax.random.bernoulli(key, p, shape)
  per_word = 32 // bits
  size = math.prod(shape)
  words_W = jax.random.bits(key, (-(-size // per_word),), jnp.uint32)
  shifts = jnp.arange(per_word, dtype=jnp.uint32) * bits
  fields_WxP = (words_W[:, None] >> shifts) & (2**bits - 1)
  return (fields_WxP.reshape(-1)[:size] < int(p * 2**bits)).reshape(shape)
