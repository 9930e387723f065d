"""XLA:CPU's kernels: importing ssgan_jax asks for Eigen's, and leaves a user's choice alone."""
import os

import pytest

from ssgan_jax import xla_cpu

YNN = f'--{xla_cpu.YNN_FUSIONS}'


def test_this_process_asked_xla_for_eigen_kernels():
  # conftest.py set XLA_FLAGS before ssgan_jax was imported; the import added the request,
  # and every compile in this suite runs with it (XLA aborts on a flag it does not know).
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
  xla_cpu.request_eigen_kernels()
  assert os.environ['XLA_FLAGS'] == after


def test_request_leaves_an_older_jaxlib_without_the_flag(monkeypatch):
  monkeypatch.setattr(xla_cpu, '_jaxlib_version', lambda: (0, 9))
  monkeypatch.setenv('XLA_FLAGS', '')
  xla_cpu.request_eigen_kernels()
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
