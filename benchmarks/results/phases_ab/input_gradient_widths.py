"""Input gradients of D-like strided convolutions (3x3, stride 2, 'SAME', 300 images) by
'phases' and by 'subpixel', best of 9 calls each, for a range of widths (input channels =
output features). Run from the repository root with PYTHONPATH=."""
import time

import jax

from ssgan_jax import convolutions


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
padding = ((0, 1), (0, 1))  # 'SAME' for 3x3 at stride 2 on even sizes
for batch, size, width in [(300, 32, 16), (300, 32, 32), (300, 32, 64), (300, 16, 64),
                           (300, 16, 96), (300, 16, 128), (300, 16, 192)]:
  dy = jax.random.normal(key, (batch, size // 2, size // 2, width))
  kernel = jax.random.normal(key, (3, 3, width, width))
  row = []
  for algorithm in ('phases', 'subpixel'):
    algorithms = convolutions.ConvAlgorithms(input_gradient=algorithm)
    fn = jax.jit(lambda dy, k, a=algorithms: convolutions.input_gradient(
        dy, k, (size, size), 2, padding, a))
    row.append(f'{algorithm} {best_time(fn, dy, kernel) * 1e3:6.1f} ms')
  print(f'{size}x{size}x{width:3d} | ' + ' | '.join(row))
