"""Shared fixtures, and one XLA compilation cache for the whole session.

The cache is set in the environment before jax is imported, so the command-line runs that the
tests start as subprocesses share it: the same train step is compiled once, not once per run.
"""
import atexit
import os
import shutil
import tempfile
from pathlib import Path

import pytest

if 'JAX_COMPILATION_CACHE_DIR' not in os.environ:
  _cache_dir = tempfile.mkdtemp(prefix='ssgan_jax_tests_xla_cache_')
  atexit.register(shutil.rmtree, _cache_dir, ignore_errors=True)
  os.environ.update(JAX_COMPILATION_CACHE_DIR=_cache_dir,
                    JAX_PERSISTENT_CACHE_MIN_COMPILE_TIME_SECS='0',
                    JAX_PERSISTENT_CACHE_MIN_ENTRY_SIZE_BYTES='0')


@pytest.fixture(scope='session')
def mnist_data_dir() -> str:
  """A TFDS data_dir holding the real, prepared mnist/3.0.1; skips the test where there is none.

  From $SSGAN_TFDS_DIR, else shared/tfds next to the project folder.
  """
  env = os.environ.get('SSGAN_TFDS_DIR')
  path = Path(env) if env else Path(__file__).resolve().parents[2] / 'shared' / 'tfds'
  if not (path / 'mnist' / '3.0.1').is_dir():
    pytest.skip(f'real MNIST not found: {path}/mnist/3.0.1 does not exist '
                '(set SSGAN_TFDS_DIR to a TFDS data_dir holding prepared mnist 3.0.1)')
  return str(path)


@pytest.fixture(scope='session', autouse=True)
def no_download_check():
  """In-process runs use tfds.testing.mock_data, which needs no download: skip the network check."""
  from ssgan_jax import input_pipeline
  with pytest.MonkeyPatch.context() as patch:
    patch.setattr(input_pipeline, 'check_download_reachable', lambda builder: None)
    yield
