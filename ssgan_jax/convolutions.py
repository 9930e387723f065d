"""How the convolutions of the 32x32 models are computed: the same functions, other algorithms.

Three choices, all measured in benchmarks/RESULTS.md:
- transposed convolutions (G): 'subpixel' (a stride-1 convolution, then depth to space) or
  'dilated' (`lax.conv_transpose`);
- input gradients of strided convolutions (D): 'dilated' (XLA's own: a convolution over the
  output gradient with stride - 1 zeros between pixels) or 'subpixel' (the gradient of the
  same convolution written as a stride-1 one over space-to-depth input, which skips the
  zeros); 'auto' is 'subpixel' on CPU and 'dilated' elsewhere;
- kernel gradients of every convolution: 'xla' (XLA's own) or 'patches' (image patches times
  output gradients, a batch chunk at a time); 'auto' is 'patches' where XLA:CPU runs
  convolutions with YNNPACK (see xla_cpu.py) and 'xla' elsewhere.

On CPU, and wherever an algorithm other than XLA's is chosen, `conv`'s gradients come from
this module, written as convolutions in the NHWC/HWIO layout, XLA's own algorithms included.
JAX's gradient rules give XLA convolutions in other layouts (the kernel gradient with the
batch as its contracted feature, the input gradient with the kernel's features swapped).
XLA:CPU converts those to NHWC for its Eigen kernels outside loops only; inside a loop (a
scan of several train steps) it runs them through a generic path, the kernel gradients
hundreds of times slower (jax-ml/jax#12868; benchmarks/RESULTS.md, section 14).
"""
import dataclasses
import functools

import jax
import jax.numpy as jnp
import numpy as np

from ssgan_jax import xla_cpu

CONV_TRANSPOSE_ALGORITHMS = ('subpixel', 'dilated')
INPUT_GRADIENTS = ('auto', 'subpixel', 'dilated')
KERNEL_GRADIENTS = ('auto', 'patches', 'xla')
_NHWC = ('NHWC', 'HWIO', 'NHWC')
# Image patches of one chunk of the batch, in bytes: small enough to stay in the CPU's caches
# while they are multiplied, large enough to make that matmul efficient.
PATCH_CHUNK_BYTES = 32 * 2**20


@dataclasses.dataclass(frozen=True)
class ConvAlgorithms:
  """The algorithms a model's convolutions use (see the module docstring)."""
  transpose: str = 'subpixel'
  input_gradient: str = 'auto'
  kernel_gradient: str = 'auto'

  def subpixel_input_gradient(self) -> bool:
    """Whether strided convolutions' input gradients skip the zeros ('auto': on CPU)."""
    if self.input_gradient == 'auto':
      return jax.default_backend() == 'cpu'
    return self.input_gradient == 'subpixel'

  def patch_kernel_gradient(self) -> bool:
    """Whether kernel gradients come from patches ('auto': on JAX's default backend)."""
    if self.kernel_gradient == 'auto':
      return jax.default_backend() == 'cpu' and xla_cpu.ynnpack_convolutions()
    return self.kernel_gradient == 'patches'

  def own_gradients(self, stride: int) -> bool:
    """Whether `conv` computes its gradients here (see the module docstring)."""
    return (jax.default_backend() == 'cpu' or self.patch_kernel_gradient()
            or (stride > 1 and self.subpixel_input_gradient()))


Padding = tuple[tuple[int, int], tuple[int, int]]


def _xla_conv(x_BxHxWxC, kernel_KxKxCxF, stride: int, padding: Padding):
  return jax.lax.conv_general_dilated(x_BxHxWxC, kernel_KxKxCxF, (stride, stride), padding,
                                      dimension_numbers=_NHWC)


def images_per_chunk(batch: int, bytes_per_image: int, budget: int = PATCH_CHUNK_BYTES) -> int:
  """The largest divisor of `batch` whose images fit in `budget` bytes (at least 1)."""
  fitting = max(1, budget // max(1, bytes_per_image))
  return max(d for d in range(1, min(batch, fitting) + 1) if batch % d == 0)


def kernel_gradient_by_patches(x_BxHxWxC, dy_BxPxQxF, kernel_size: int, stride: int,
                               padding: Padding, chunk_bytes: int = PATCH_CHUNK_BYTES):
  """The kernel gradient of `_xla_conv(x, kernel, stride, padding)` for output gradient dy.

  g[i, j, c, f] = sum over images and output pixels (p, q) of
  x_padded[stride * p + i, stride * q + j, c] * dy[p, q, f]. For each chunk of images the
  K*K shifted views of the padded input are laid side by side as a (pixels, K*K*C) patch
  matrix and multiplied by dy's (pixels, F); chunks run one after another (lax.scan), so one
  chunk's patches are in memory at a time. Returns the sum in float32.
  """
  batch, _, _, channels = x_BxHxWxC.shape
  _, out_h, out_w, features = dy_BxPxQxF.shape
  k = kernel_size
  x_padded = jax.lax.pad(x_BxHxWxC, jnp.zeros((), x_BxHxWxC.dtype),
                         ((0, 0, 0), (*padding[0], 0), (*padding[1], 0), (0, 0, 0)))
  patch_bytes = out_h * out_w * k * k * channels * x_BxHxWxC.dtype.itemsize
  chunk = images_per_chunk(batch, patch_bytes, chunk_bytes)

  def add_chunk(grad_FxKKC, chunk_arrays):
    xp_NxHxWxC, dy_NxPxQxF = chunk_arrays
    shifted = [xp_NxHxWxC[:, i:i + stride * (out_h - 1) + 1:stride,
                          j:j + stride * (out_w - 1) + 1:stride, :]
               for i in range(k) for j in range(k)]
    patches_RxKKC = jnp.concatenate(shifted, axis=-1).reshape(-1, k * k * channels)
    return grad_FxKKC + jnp.matmul(dy_NxPxQxF.reshape(-1, features).T, patches_RxKKC,
                                   preferred_element_type=jnp.float32), None

  in_chunks = lambda a: a.reshape(batch // chunk, chunk, *a.shape[1:])
  grad_FxKKC, _ = jax.lax.scan(add_chunk, jnp.zeros((features, k * k * channels), jnp.float32),
                               (in_chunks(x_padded), in_chunks(dy_BxPxQxF)))
  return grad_FxKKC.T.reshape(k, k, channels, features)


def input_gradient(dy_BxPxQxF, kernel_KxKxCxF, input_hw: tuple[int, int], stride: int,
                   padding: Padding):
  """The input gradient of `_xla_conv(x, kernel, stride, padding)` for output gradient dy.

  XLA's algorithm in the NHWC/HWIO layout: dy with stride - 1 zeros between its pixels
  (lhs_dilation), convolved with the kernel turned 180 degrees, its in and out features
  swapped. The padding makes the result input-sized: it ends at the last input row, whether
  or not the forward pass read it.
  """
  kernel = kernel_KxKxCxF.shape[0]
  pads = []
  for size, out, (before, _) in zip(input_hw, dy_BxPxQxF.shape[1:3], padding):
    dilated = (out - 1) * stride + 1
    pads.append((kernel - 1 - before, size + before - dilated))
  rotated_KxKxFxC = jnp.flip(kernel_KxKxCxF, (0, 1)).swapaxes(2, 3)
  return jax.lax.conv_general_dilated(dy_BxPxQxF, rotated_KxKxFxC, (1, 1), pads,
                                      lhs_dilation=(stride, stride), dimension_numbers=_NHWC)


def kernel_gradient(x_BxHxWxC, dy_BxPxQxF, kernel_size: int, stride: int, padding: Padding):
  """The kernel gradient of `_xla_conv(x, kernel, stride, padding)` for output gradient dy.

  XLA's algorithm in the NHWC/HWIO layout: the images' features act as the batch and the
  batch as the contracted feature, the input (C, H, W, B) convolved with dy (P, Q, B, F) as
  a P x Q window with stride - 1 zeros between its taps (rhs_dilation). The padding ends the
  input where the forward pass's last window ends.
  """
  pads = []
  for size, out, (before, _) in zip(x_BxHxWxC.shape[1:3], dy_BxPxQxF.shape[1:3], padding):
    pads.append((before, (out - 1) * stride + kernel_size - size - before))
  grad_CxKxKxF = jax.lax.conv_general_dilated(
      x_BxHxWxC.transpose(3, 1, 2, 0), dy_BxPxQxF.transpose(1, 2, 0, 3), (1, 1), pads,
      rhs_dilation=(stride, stride), dimension_numbers=_NHWC)
  return grad_CxKxKxF.transpose(1, 2, 0, 3)


def _space_to_depth(x_BxHxWxC, out_hw: tuple[int, int], window: int, stride: int,
                    padding: Padding):
  """The input, padded or cropped to the blocks the output reads, one block per pixel."""
  batch, height, width, channels = x_BxHxWxC.shape
  blocks_h, blocks_w = (out + window - 1 for out in out_hw)
  (top, _), (left, _) = padding
  x_padded = jax.lax.pad(x_BxHxWxC, jnp.zeros((), x_BxHxWxC.dtype),
                         ((0, 0, 0), (top, blocks_h * stride - height - top, 0),
                          (left, blocks_w * stride - width - left, 0), (0, 0, 0)))
  return (x_padded.reshape(batch, blocks_h, stride, blocks_w, stride, channels)
          .transpose(0, 1, 3, 2, 4, 5)
          .reshape(batch, blocks_h, blocks_w, stride * stride * channels))


def _block_kernel(kernel_KxKxCxF, window: int, stride: int):
  """The kernel, zero-filled to whole blocks, as a window x window kernel over blocks."""
  kernel, _, channels, features = kernel_KxKxCxF.shape
  fill = window * stride - kernel
  return (jnp.pad(kernel_KxKxCxF, ((0, fill), (0, fill), (0, 0), (0, 0)))
          .reshape(window, stride, window, stride, channels, features)
          .transpose(0, 2, 1, 3, 4, 5)
          .reshape(window, window, stride * stride * channels, features))


def input_gradient_by_blocks(dy_BxPxQxF, kernel_KxKxCxF, x_like, stride: int,
                             padding: Padding):
  """`input_gradient` of a strided convolution without multiplying the zeros of dilated dy.

  The same convolution is a stride-1 one over space-to-depth input: each stride x stride
  block of the padded input one pixel with stride^2 * C channels, the kernel (zero-filled to
  whole blocks) an M x M kernel over them, M = ceil(K / stride). Its input gradient is a
  stride-1 `input_gradient` over the blocks, moved back to pixels: 16/9 of the useful
  multiplications for a 3x3 kernel at stride 2, against 4x for dilated dy.
  """
  kernel = kernel_KxKxCxF.shape[0]
  window = -(-kernel // stride)
  out_hw = dy_BxPxQxF.shape[1:3]
  to_blocks = functools.partial(_space_to_depth, out_hw=out_hw, window=window, stride=stride,
                                padding=padding)
  blocks_hw = tuple(out + window - 1 for out in out_hw)
  dx_blocks = input_gradient(dy_BxPxQxF, _block_kernel(kernel_KxKxCxF, window, stride),
                             blocks_hw, 1, ((0, 0), (0, 0)))
  (dx_BxHxWxC,) = jax.linear_transpose(to_blocks, x_like)(dx_blocks)
  return dx_BxHxWxC


@functools.partial(jax.custom_vjp, nondiff_argnums=(2, 3, 4))
def _conv_with_own_gradients(x_BxHxWxC, kernel_KxKxCxF, stride, padding, algorithms):
  return _xla_conv(x_BxHxWxC, kernel_KxKxCxF, stride, padding)


def _conv_forward(x_BxHxWxC, kernel_KxKxCxF, stride, padding, algorithms):
  return _xla_conv(x_BxHxWxC, kernel_KxKxCxF, stride, padding), (x_BxHxWxC, kernel_KxKxCxF)


def _conv_backward(stride, padding, algorithms, residuals, dy_BxPxQxF):
  x_BxHxWxC, kernel_KxKxCxF = residuals
  size = kernel_KxKxCxF.shape[0]
  if stride > 1 and algorithms.subpixel_input_gradient():
    dx_BxHxWxC = input_gradient_by_blocks(dy_BxPxQxF, kernel_KxKxCxF, x_BxHxWxC, stride, padding)
  else:
    dx_BxHxWxC = input_gradient(dy_BxPxQxF, kernel_KxKxCxF, x_BxHxWxC.shape[1:3], stride,
                                padding)
  if algorithms.patch_kernel_gradient():
    dkernel = kernel_gradient_by_patches(x_BxHxWxC, dy_BxPxQxF, size, stride, padding)
  else:
    dkernel = kernel_gradient(x_BxHxWxC, dy_BxPxQxF, size, stride, padding)
  return dx_BxHxWxC, dkernel.astype(kernel_KxKxCxF.dtype)


_conv_with_own_gradients.defvjp(_conv_forward, _conv_backward)


def conv(x_BxHxWxC: jax.Array, kernel_KxKxCxF: jax.Array, stride: int, padding,
         algorithms: ConvAlgorithms) -> jax.Array:
  """`lax.conv_general_dilated` of NHWC images with a square HWIO kernel.

  `padding` is 'SAME', 'VALID' or ((top, bottom), (left, right)). The value is XLA's; the
  input and kernel gradients are computed as `algorithms` says.
  """
  size = kernel_KxKxCxF.shape[0]
  if isinstance(padding, str):
    padding = jax.lax.padtype_to_pads(x_BxHxWxC.shape[1:3], (size, size), (stride, stride),
                                      padding)
  padding = tuple(tuple(int(p) for p in pair) for pair in padding)
  if algorithms.own_gradients(stride):
    return _conv_with_own_gradients(x_BxHxWxC, kernel_KxKxCxF, stride, padding, algorithms)
  return _xla_conv(x_BxHxWxC, kernel_KxKxCxF, stride, padding)


def subpixel_taps(kernel: int, stride: int) -> tuple[np.ndarray, tuple[int, int]]:
  """Where the kernel taps of a 'SAME' transposed convolution land, per output phase.

  Output row o = stride * p + r reads input rows p + d only. Returns taps_SxM: the tap of
  the (kernel-long) kernel that phase r applies at offset d = first_offset + m, or `kernel`
  where it applies none; and the (before, after) zero padding of the input that covers
  the offsets. The padding is lax.conv_transpose's 'SAME' padding of the dilated input.
  """
  pad_total = kernel + stride - 2
  pad_before = kernel - 1 if stride > kernel - 1 else -(-pad_total // 2)
  offsets = {(r, (r + t - pad_before) // stride): t
             for r in range(stride) for t in range(kernel)
             if (r + t - pad_before) % stride == 0}
  first = min(d for _, d in offsets)
  last = max(d for _, d in offsets)
  taps_SxM = np.full((stride, last - first + 1), kernel)
  for (r, d), t in offsets.items():
    taps_SxM[r, d - first] = t
  return taps_SxM, (-first, last)


def conv_transpose_same(x_BxHxWxC: jax.Array, kernel_KxKxCxF: jax.Array, stride: int,
                        algorithms: ConvAlgorithms) -> jax.Array:
  """`lax.conv_transpose(x, kernel, (stride, stride), 'SAME')`, Flax ConvTranspose's function.

  'dilated' is that call: a convolution over the input with stride - 1 zeros between pixels.
  'subpixel' convolves the input itself, with stride^2 sub-kernels side by side (one per
  output phase, made of the taps that phase uses), then moves each phase's channels to its
  pixels (depth to space). The arithmetic is the same up to float rounding; XLA:CPU runs
  the dilated form and its kernel gradient through a slow path (benchmarks/RESULTS.md).
  """
  if algorithms.transpose == 'dilated':
    return jax.lax.conv_transpose(x_BxHxWxC, kernel_KxKxCxF, (stride, stride), 'SAME',
                                  dimension_numbers=_NHWC)
  kernel, _, in_features, features = kernel_KxKxCxF.shape
  taps_SxM, padding = subpixel_taps(kernel, stride)
  window = taps_SxM.shape[1]
  padded_kernel = jnp.pad(kernel_KxKxCxF, ((0, 1), (0, 1), (0, 0), (0, 0)))  # tap `kernel` = 0
  sub_SxSxMxMxCxF = padded_kernel[taps_SxM[:, None, :, None], taps_SxM[None, :, None, :]]
  sub_MxMxCxSSF = sub_SxSxMxMxCxF.transpose(2, 3, 4, 0, 1, 5).reshape(
      window, window, in_features, stride * stride * features)
  y_BxHxWxSSF = conv(x_BxHxWxC, sub_MxMxCxSSF, 1, (padding, padding), algorithms)
  batch, height, width, _ = y_BxHxWxSSF.shape
  return (y_BxHxWxSSF.reshape(batch, height, width, stride, stride, features)
          .transpose(0, 1, 3, 2, 4, 5)
          .reshape(batch, height * stride, width * stride, features))
