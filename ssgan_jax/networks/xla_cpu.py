"""Which kernels XLA:CPU runs convolutions and matrix products with.

jaxlib 0.10 and later hand them to YNNPACK by default. On this project's 2-core x86 machine,
XLA's Eigen kernels ran the SVHN model's train step 1.7x faster (benchmarks/RESULTS.md,
defaults that a measurement decided), so the command-line entry points ask XLA for Eigen's
(`apply_entry_point_choice`), unless XLA_FLAGS already chooses. Importing ssgan_jax changes nothing. The choice is made once
per process, when JAX starts its first backend: asking after that changes nothing. Other
backends ignore these flags.
"""
import functools
import importlib.metadata
import os
import re

from absl import logging

YNN_FUSIONS = 'xla_cpu_experimental_ynn_fusion_type'
EIGEN_CONVOLUTIONS_AND_DOTS = f'--{YNN_FUSIONS}=-individual_convolution,-individual_dot'
# The oldest jaxlib measured with the flag; an older XLA would abort on a flag it lacks.
FIRST_JAXLIB_WITH_YNN = (0, 10)


@functools.cache
def _jaxlib_version() -> tuple[int, ...]:
  return tuple(int(part) for part in re.findall(r'\d+', importlib.metadata.version('jaxlib'))[:2])


def request_eigen_kernels() -> bool:
  """Adds EIGEN_CONVOLUTIONS_AND_DOTS to XLA_FLAGS unless it sets YNN_FUSIONS already;
  returns whether it did."""
  flags = os.environ.get('XLA_FLAGS', '')
  if YNN_FUSIONS in flags or _jaxlib_version() < FIRST_JAXLIB_WITH_YNN:
    return False
  os.environ['XLA_FLAGS'] = f'{flags} {EIGEN_CONVOLUTIONS_AND_DOTS}'.strip()
  return True


@functools.cache
def apply_entry_point_choice() -> None:
  """The entry points' CPU kernel choice: `request_eigen_kernels`, logged once per process.

  Call it before anything starts a JAX backend (jax.devices(), the first computation).
  """
  if request_eigen_kernels():
    logging.info('XLA:CPU runs convolutions and dots with Eigen (XLA_FLAGS += %s); set --%s '
                 'in XLA_FLAGS to choose otherwise.', EIGEN_CONVOLUTIONS_AND_DOTS, YNN_FUSIONS)


def ynnpack_convolutions(xla_flags: str | None = None) -> bool:
  """Whether XLA_FLAGS (or `xla_flags`) leaves XLA:CPU's convolutions to YNNPACK.

  A value of signed entries (-individual_dot) edits YNNPACK's default set, which holds
  convolutions; any other value replaces the set.
  """
  flags = os.environ.get('XLA_FLAGS', '') if xla_flags is None else xla_flags
  values = re.findall(rf'--{YNN_FUSIONS}=(\S*)', flags)
  if not values:
    return _jaxlib_version() >= FIRST_JAXLIB_WITH_YNN
  entries = [entry for entry in values[-1].split(',') if entry]
  if entries and all(entry[0] in '+-' for entry in entries):
    return '-individual_convolution' not in entries
  return 'individual_convolution' in entries
