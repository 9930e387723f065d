"""benchmarks/throughput.py runs without TensorFlow and writes its JSON lines and table."""
import json
import subprocess
import sys

import pytest

from without_tensorflow import REPO, run_module


def test_tiny_benchmark_reports_speed_cost_versions_and_torch_without_tensorflow(tmp_path):
  """One run: the JAX row, the matmul peaks, the profile, and the PyTorch reference timed in
  the same round robin."""
  result = run_module('benchmarks.throughput', '--models=mlp', '--batch_sizes=4', '--steps=1',
                      '--warmup=1', '--repeats=3', '--matmul_size=64', '--profile_top=3',
                      '--torch', '--torch_modes=eager', f'--out_dir={tmp_path}')
  assert result.returncode == 0, result.stderr[-3000:]
  records = [json.loads(line) for line in (tmp_path / 'throughput.jsonl').read_text().splitlines()]
  header, rows = records[0], {r['kind']: r for r in records[1:]}
  assert header['platform'] == 'cpu' and header['num_local_devices'] == 1
  assert header['jax'] and header['jaxlib'] and header['device_kind']
  assert f"host CPU {header['cpu']}, " in (tmp_path / 'throughput.md').read_text()
  [row] = [r for r in records if r['kind'] == 'jax']
  assert (row['model'], row['global_batch'], row['num_devices']) == ('mlp', 4, 1)
  assert (row['parallel'], row['compute_dtype']) == ('pmap', 'float32')
  assert row['steps_per_s'] > 0 and row['images_per_s'] == 4 * row['steps_per_s']
  assert row['compile_s'] > 0 and row['flops_per_step'] > 1e6 and row['bytes_per_step'] > 0
  assert row['fraction_of_peak'] is None and 'unknown device' in row['peak_note']
  matmuls = [r for r in records if r['kind'] == 'matmul_peak']
  assert [m['dtype'] for m in matmuls] == ['bfloat16', 'float32']
  assert all(m['flops_per_s'] > 0 for m in matmuls)
  assert rows['roofline_projection']['steps_per_s'] > 0
  ops = rows['profile']['top_ops']
  assert len(ops) == 3 and all(op['ms_per_step'] > 0 and op['shape'] for op in ops)
  assert ops[0]['ms_per_step'] >= ops[-1]['ms_per_step']
  assert 0 < sum(op['share'] for op in ops) <= 1 and all(op['opcode'] for op in ops)
  [torch_row] = [r for r in records if r['kind'] == 'torch']
  assert (torch_row['mode'], torch_row['device']) == ('eager', 'cpu')
  assert len(torch_row['steps_per_s_repeats']) == len(row['steps_per_s_repeats']) == 3
  assert torch_row['jax_over_torch'] == row['steps_per_s'] / torch_row['steps_per_s'] > 0
  table = (tmp_path / 'throughput.md').read_text()
  assert '| mlp | 4 | 1 | default |' in table and 'PROJECTION, not a measurement' in table
  assert f"| {ops[0]['name']} | " in table and '| mlp | 4 | eager |' in table


def test_gradient_algorithms_are_counted_at_xla_s_flops():
  """A variant's FLOPs are those of the step with XLA's own algorithms, counted from the
  program that runs it: the patches' chunk loop (XLA counts a loop's body once) must not
  hide FLOPs, nor the subpixel algorithms' zero taps add any."""
  import jax  # pylint: disable=g-import-not-at-top
  from benchmarks import throughput  # pylint: disable=g-import-not-at-top
  flops = {variant: throughput.Case('conv_small', 2, jax.local_devices()[:1], variant).cost['flops']
           for variant in ('conv_transpose=subpixel,conv_input_gradient=subpixel,'
                           'conv_kernel_gradient=patches',
                           'conv_transpose=dilated,conv_input_gradient=dilated,'
                           'conv_kernel_gradient=xla')}
  hand_written, xla_s = flops.values()
  assert hand_written == xla_s > 1e9


def test_flop_count_matches_a_hand_count_of_one_layer():
  """The count throughput reports (XLA's cost analysis of the compiled program) against
  figures counted by hand: 2 FLOPs per multiply-add of the MLP's first layer and of an
  unpadded 3x3 convolution of the SVHN model's size (30 x 30 outputs of 9 taps each)."""
  import jax  # pylint: disable=g-import-not-at-top
  import jax.numpy as jnp  # pylint: disable=g-import-not-at-top
  from benchmarks import throughput  # pylint: disable=g-import-not-at-top
  x, w = jnp.ones((100, 784)), jnp.ones((784, 1000))
  dense = jax.jit(jnp.matmul).lower(x, w).compile()
  assert throughput.cost_per_step(dense)['flops'] == pytest.approx(2 * 100 * 784 * 1000, rel=0.01)
  images, kernel = jnp.ones((8, 32, 32, 64)), jnp.ones((3, 3, 64, 64))
  conv = jax.jit(lambda a, k: jax.lax.conv_general_dilated(
      a, k, (1, 1), 'VALID', dimension_numbers=('NHWC', 'HWIO', 'NHWC'))).lower(images, kernel)
  assert throughput.cost_per_step(conv.compile())['flops'] == pytest.approx(
      2 * 8 * 30 * 30 * 64 * 64 * 9, rel=0.01)


@pytest.mark.parametrize('flag,message', [
    ('--models=resnet', '--models=resnet: allowed: mlp, conv_small, conv_large'),
    ('--batch_sizes=100,0', '--batch_sizes=100,0: must be positive integers'),
    ('--variant=compute_dtype', '--variant=compute_dtype: must be comma-separated name=value'),
    ('--variant=conv_input_gradient=fft',
     '--variant=conv_input_gradient=fft: --conv_input_gradient=fft: allowed: auto, phases'),
    ('--torch_modes=jit', '--torch_modes=jit: allowed: eager, compile'),
])
def test_bad_flags_exit_2_with_one_line_before_any_work(flag, message, tmp_path):
  result = run_module('benchmarks.throughput', '--models=mlp', '--batch_sizes=4', flag,
                      f'--out_dir={tmp_path}')
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1].startswith(f'error: {message}')
  assert 'Traceback' not in result.stderr and not list(tmp_path.iterdir())


_MARKDOWN_OF_RECORDS = """
import json, sys
from benchmarks import throughput
print(throughput.markdown(*json.loads(sys.argv[1])))
"""


def test_rates_are_compared_with_the_matmul_of_their_dtype():
  """Each step's FLOP/s against the measured matmul rate of its compute dtype; torch's (by
  XLA's FLOP count of the same step) against the float32 one."""
  header = {'num_local_devices': 1, 'device_kind': 'cpu', 'platform': 'cpu', 'jax': '0',
            'jaxlib': '0', 'date': 'today', 'command': 'python -m benchmarks.throughput'}
  jax_row = {'kind': 'jax', 'model': 'conv_small', 'global_batch': 100, 'num_devices': 1,
             'variant': '', 'compile_s': 1.0, 'steps_per_s': 0.2, 'images_per_s': 20.0,
             'flops_per_step': 4e11, 'bytes_per_step': 1e10, 'achieved_flops_per_s': 8e10,
             'fraction_of_peak': None, 'peak_note': 'unknown', 'compute_dtype': 'float32'}
  records = [jax_row,
             {**jax_row, 'variant': 'compute_dtype=bfloat16', 'compute_dtype': 'bfloat16'},
             {'kind': 'torch', 'model': 'conv_small', 'global_batch': 100, 'mode': 'eager',
              'steps_per_s': 0.25, 'jax_over_torch': 0.8, 'achieved_flops_per_s': 1e11},
             {'kind': 'matmul_peak', 'dtype': 'bfloat16', 'n': 1024, 'flops_per_s': 3.2e11},
             {'kind': 'matmul_peak', 'dtype': 'float32', 'n': 1024, 'flops_per_s': 2e11}]
  result = subprocess.run([sys.executable, '-c', _MARKDOWN_OF_RECORDS,
                           json.dumps([header, records])],
                          capture_output=True, text=True, timeout=120, cwd=REPO)
  assert result.returncode == 0, result.stderr[-3000:]
  table = result.stdout
  assert ('- conv_small batch 100 (default): 40.0 % of the measured float32 matmul rate'
          in table)
  assert ('- conv_small batch 100 (compute_dtype=bfloat16): 25.0 % of the measured bfloat16 '
          'matmul rate' in table)
  assert '| conv_small | 100 | eager | 0.25 | 0.80x | 0.1 | 50.0 % |' in table


@pytest.mark.parametrize('kind,dtype,precision,expected', [
    ('NVIDIA H200', 'float32', 'default', ('tf32', 495e12)),
    ('NVIDIA H200', 'float32', 'high', ('tf32', 495e12)),
    ('NVIDIA H200', 'float32', 'highest', ('fp32', 67e12)),
    ('NVIDIA H100 80GB HBM3', 'bfloat16', 'highest', ('bf16', 989e12)),
    ('TPU v5 lite', 'float32', 'default', ('bf16', 197e12)),
    ('TPU v5 lite', 'float32', 'high', ('bf16_3x', 197e12 / 3)),
    ('TPU v5 lite', 'float32', 'highest', ('bf16_6x', 197e12 / 6)),
])
def test_fraction_of_peak_uses_the_rate_of_the_precision_that_ran(kind, dtype, precision,
                                                                  expected):
  from benchmarks import peaks
  name, flops = peaks.peak_for(kind).rate(dtype, precision)
  assert name == expected[0] and flops == pytest.approx(expected[1])


@pytest.mark.parametrize('precision,tf32', [('default', True), ('high', True),
                                            ('highest', False)])
def test_torch_reference_runs_at_jax_s_precision_on_cuda(precision, tf32):
  torch = pytest.importorskip('torch')
  from benchmarks.torch_reference.train import match_jax_precision
  saved = torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32
  try:
    assert match_jax_precision(precision, 'cpu') == {}
    record = match_jax_precision(precision, 'cuda')
    assert record == {'torch_matmul_tf32': tf32, 'torch_cudnn_tf32': tf32}
    assert (torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32) == (tf32,
                                                                                          tf32)
  finally:
    torch.backends.cuda.matmul.allow_tf32, torch.backends.cudnn.allow_tf32 = saved
