"""'phases' against 'subpixel' by layer width, best of 9 calls each. Run from the repository
root with PYTHONPATH=.

1. G-like transposed convolutions (5x5, stride 2, 100 images): the forward pass, and the
   forward pass with input and kernel gradients.
2. Input gradients of D-like strided convolutions (3x3, stride 2, 'SAME', 300 images; input
   channels = output features)."""
import time

import jax
import jax.numpy as jnp

from ssgan_jax import cpu_kernels, kernels


def best_time(fn, *args, calls=9):
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(calls):
    start = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(time.perf_counter() - start)
  return min(times)


print(f'jax {jax.__version__}, backend {jax.default_backend()}')
key = jax.random.key(0)
for batch, size, channels, features in [(100, 16, 128, 3), (100, 16, 128, 8), (100, 16, 128, 16),
                                        (100, 16, 128, 32), (100, 16, 128, 64),
                                        (100, 8, 256, 128), (100, 4, 512, 256)]:
  x = jax.random.normal(key, (batch, size, size, channels))
  kernel = 0.05 * jax.random.normal(key, (5, 5, channels, features))
  cotangent = jax.random.normal(key, (batch, 2 * size, 2 * size, features))
  row = []
  for algorithm in ('phases', 'subpixel'):
    algorithms = kernels.KernelChoices(transpose=algorithm)
    forward = jax.jit(lambda x, k, a=algorithms: kernels.conv_transpose_same(x, k, 2, a))
    gradients = jax.jit(jax.grad(lambda x, k, a=algorithms: jnp.vdot(
        kernels.conv_transpose_same(x, k, 2, a), cotangent), argnums=(0, 1)))
    row.append(f'{algorithm}: forward {best_time(forward, x, kernel) * 1e3:6.1f} ms, '
               f'with gradients {best_time(gradients, x, kernel) * 1e3:6.1f} ms')
  print(f'transposed {size}x{size}x{channels} -> {features:3d} | ' + ' | '.join(row))

padding = ((0, 1), (0, 1))  # 'SAME' for 3x3 at stride 2 on even sizes
for batch, size, width in [(300, 32, 16), (300, 32, 32), (300, 32, 64), (300, 16, 64),
                           (300, 16, 96), (300, 16, 128), (300, 16, 192)]:
  dy = jax.random.normal(key, (batch, size // 2, size // 2, width))
  kernel = jax.random.normal(key, (3, 3, width, width))
  row = []
  for algorithm in ('phases', 'subpixel'):
    algorithms = kernels.KernelChoices(input_gradient=algorithm)
    fn = jax.jit(lambda dy, k, a=algorithms: cpu_kernels.input_gradient(
        dy, k, (size, size), 2, padding, a))
    row.append(f'{algorithm} {best_time(fn, dy, kernel) * 1e3:6.1f} ms')
  print(f'input gradient {size}x{size}x{width:3d} | ' + ' | '.join(row))
