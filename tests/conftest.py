"""Shared fixtures, one XLA compilation cache for the whole session, and fast compiles.

Both are set in the environment before jax is imported, so the command-line runs that the
tests start as subprocesses share them: the same train step is compiled once, not once per
run, and without XLA:CPU's LLVM optimisations and its fusion emitters (the older emitters
compile the MLP's train step in about two thirds of the time and the conv model's in under
half). The tests check results, not speed; benchmarks/ runs with XLA's defaults, and so do
the subprocesses that check numerical equivalence: `default_optimization_env`.
"""
import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

from ssgan_jax.networks import xla_cpu

if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _cache_dir = tempfile.mkdtemp(prefix='ssgan_jax_tests_xla_cache_')
  atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
  os.environ.update(JAX_COMPILATION_CACHE_DIR=_cache_dir,
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')
_FAST_COMPILES = '--xla_backend_optimization_level=0 --xla_cpu_use_fusion_emitters=false'
if _FAST_COMPILES not in os.environ.get('XLA_FLAGS', ''):  # xdist workers inherit it
  os.environ['XLA_FLAGS'] = f"{os.environ.get('XLA_FLAGS', '')} {_FAST_COMPILES}"
# In-process runs get the entry points' CPU kernel choice (subprocesses make it themselves).
xla_cpu.request_eigen_kernels()


def default_optimization_env() -> dict:
  """The environment change that compiles a subprocess with XLA's own optimisations, as
  users run: for the tests that check numbers, where the optimisations could change them."""
  return {'XLA_FLAGS': os.environ['XLA_FLAGS'].replace(_FAST_COMPILES, '')}


def devices_env(count: int) -> dict:
  """The environment change that gives a subprocess `count` CPU devices (and the tests' flags)."""
  return {'XLA_FLAGS': f"{os.environ['XLA_FLAGS']} --xla_force_host_platform_device_count={count}"}


def _real_data_dir(dataset: str, version: str) -> str:
  """A TFDS data_dir holding the real, prepared `dataset`/`version`; skips the test where there
  is none. From $SSGAN_TFDS_DIR, else shared/tfds next to the project folder."""
  env = os.environ.get('SSGAN_TFDS_DIR')
  path = Path(env) if env else Path(__file__).resolve().parents[2] / 'shared' / 'tfds'
  if not (path / dataset / version).is_dir():
    pytest.skip(f'real {dataset} not found: {path}/{dataset}/{version} does not exist '
                f'(set SSGAN_TFDS_DIR to a TFDS data_dir holding prepared {dataset} {version})')
  return str(path)


@pytest.fixture(scope='session')
def mnist_data_dir() -> str:
  """A TFDS data_dir holding the real mnist/3.0.1 (see _real_data_dir)."""
  return _real_data_dir('mnist', '3.0.1')


@pytest.fixture(scope='session')
def cats_vs_dogs_data_dir() -> str:
  """A TFDS data_dir holding the cats_vs_dogs/4.0.1 stand-in of 64x64 photos."""
  return _real_data_dir('cats_vs_dogs', '4.0.1')


@pytest.fixture(scope='session', autouse=True)
def no_download_check():
  """In-process runs use tfds.testing.mock_data, which needs no download: skip the network check."""
  from ssgan_jax.data import input_pipeline
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(input_pipeline, 'check_download_reachable', lambda builder: None)
    yield
