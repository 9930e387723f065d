"""XLA:CPU's kernels: the entry points ask for Eigen's, a user's choice stays, imports change nothing."""
import json
import os
import pkgutil
import subprocess
import sys

import pytest

import ssgan_jax
from ssgan_jax.networks import xla_cpu

from without_tensorflow import REPO

YNN = f'--{xla_cpu.YNN_FUSIONS}'


def test_this_process_asked_xla_for_eigen_kernels():
  # conftest.py asked before jax started a backend, as the entry points do; every compile in
  # this suite runs with it (XLA aborts on a flag it does not know).
  assert xla_cpu.EIGEN_CONVOLUTIONS_AND_DOTS in os.environ['XLA_FLAGS'].split()
  assert not xla_cpu.ynnpack_convolutions()


@pytest.mark.parametrize('before,after', [
    ('', xla_cpu.EIGEN_CONVOLUTIONS_AND_DOTS),
    ('--xla_force_host_platform_device_count=4',
     f'--xla_force_host_platform_device_count=4 {xla_cpu.EIGEN_CONVOLUTIONS_AND_DOTS}'),
    (f'{YNN}=', f'{YNN}='),  # the user's choice stays
    (f'{YNN}=-individual_dot', f'{YNN}=-individual_dot'),
])
def test_request_adds_eigen_kernels_unless_xla_flags_choose(before, after, monkeypatch):
  monkeypatch.setenv('XLA_FLAGS', before)
  assert xla_cpu.request_eigen_kernels() == (before != after)
  assert os.environ['XLA_FLAGS'] == after


def test_request_leaves_an_older_jaxlib_without_the_flag(monkeypatch):
  monkeypatch.setattr(xla_cpu, '_jaxlib_version', lambda: (0, 9))
  monkeypatch.setenv('XLA_FLAGS', '')
  assert not xla_cpu.request_eigen_kernels()
  assert os.environ['XLA_FLAGS'] == ''
  assert not xla_cpu.ynnpack_convolutions('')


@pytest.mark.parametrize('flags,ynnpack', [
    ('', True),  # jaxlib's default set holds convolutions
    ('--xla_force_host_platform_device_count=4', True),
    (f'{YNN}=', False),  # an empty set
    (f'{YNN}=-individual_dot', True),  # the default set, less dots
    (f'{YNN}=-individual_convolution', False),
    (xla_cpu.EIGEN_CONVOLUTIONS_AND_DOTS, False),
    (f'{YNN}=individual_dot', False),  # a set of dots only
    (f'{YNN}=individual_convolution,individual_dot', True),
    (f'{YNN}= {YNN}=individual_convolution', True),  # the last one counts
])
def test_ynnpack_convolutions_reads_xla_flags(flags, ynnpack):
  assert xla_cpu.ynnpack_convolutions(flags) == ynnpack


# Third-party libraries set variables of their own on import (jax TF_CPP_MIN_LOG_LEVEL,
# scikit-learn KMP_*): they are imported before the environment is read.
_IMPORT_ALL = """
import importlib, json, os, sys
import absl.logging, flax, jax, numpy, optax, orbax.checkpoint, sklearn, tensorflow_datasets
before = dict(os.environ)
for name in sys.argv[1:]:
  importlib.import_module(name)
after = dict(os.environ)
print(json.dumps({k: [before.get(k), after.get(k)] for k in set(before) | set(after)
                  if before.get(k) != after.get(k)}))
"""


def test_importing_every_module_changes_no_environment_variable():
  modules = ['ssgan_jax'] + [m.name for m in pkgutil.walk_packages(ssgan_jax.__path__,
                                                                  'ssgan_jax.')]
  env = {k: v for k, v in os.environ.items() if k != 'XLA_FLAGS'}
  result = subprocess.run([sys.executable, '-c', _IMPORT_ALL, *modules], capture_output=True,
                          text=True, cwd=REPO, env={**env, 'PYTHONPATH': REPO}, timeout=300)
  assert result.returncode == 0, result.stderr[-3000:]
  assert json.loads(result.stdout.splitlines()[-1]) == {}


def test_an_entry_point_asks_for_eigen_kernels_once_and_says_so(monkeypatch):
  """`apply_entry_point_choice` runs its request once per process and logs it."""
  monkeypatch.setenv('XLA_FLAGS', '')
  xla_cpu.apply_entry_point_choice.cache_clear()
  with pytest.MonkeyPatch.context() as patch:
    logged = []
    patch.setattr(xla_cpu.logging, 'info', lambda *args: logged.append(args))
    xla_cpu.apply_entry_point_choice()
    xla_cpu.apply_entry_point_choice()
  xla_cpu.apply_entry_point_choice.cache_clear()
  assert os.environ['XLA_FLAGS'] == xla_cpu.EIGEN_CONVOLUTIONS_AND_DOTS
  assert len(logged) == 1 and 'Eigen' in logged[0][0]
