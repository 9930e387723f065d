"""Data parallelism: pmap over 4 fake CPU devices trains exactly like 1 device."""
import json
import pathlib
import subprocess
import sys

import pytest

CHECK = pathlib.Path(__file__).with_name('multidevice_check.py')


@pytest.mark.parametrize('model,num_steps', [('mlp', 4)])
def test_four_devices_match_one_device_with_the_same_global_batch(model, num_steps):
  result = subprocess.run([sys.executable, str(CHECK), model, str(num_steps)],
                          capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  diffs = json.loads(result.stdout.strip().splitlines()[-1])
  assert diffs['moved'] > 1e-3  # training changed the parameters, so the check means something
  for name in ('disc_params', 'gen_params', 'gen_batch_stats'):
    assert diffs[name] < 1e-4, (name, diffs)
