"""benchmarks/device_run.py --smoke: every part of the accelerator run, on CPU, without TensorFlow."""
import json

from without_tensorflow import run_module

from benchmarks import device_run


def test_smoke_run_writes_every_part_in_order(tmp_path):
  result = run_module('benchmarks.device_run', '--smoke', '--budget_s=300',
                      f'--out_dir={tmp_path}')
  assert result.returncode == 0, result.stderr[-3000:]
  parts = {key: json.loads((tmp_path / f'part_{key}.json').read_text()) for key in 'abcdef'}
  assert all('skipped' not in parts[key] for key in 'abcde'), parts
  a = parts['a']['records']
  assert [r['kind'] for r in a] == ['jax', 'torch'] and a[1]['steps_per_s'] > 0
  assert a[0]['matmul_precision'] == a[1]['matmul_precision'] == 'default'
  b = parts['b']['records']
  assert [r['compute_dtype'] for r in b if r['kind'] == 'jax'] == ['bfloat16']
  assert {r['dtype'] for r in b if r['kind'] == 'matmul_peak'} == {'bfloat16', 'float32'}
  [c] = parts['c']['records']
  assert (c['steps_per_dispatch'], c['data_on_device']) == (2, True)
  [d] = parts['d']['records']
  assert d['variant'] == f'{device_run.HAND_WRITTEN[0]},matmul_precision=default'
  [e] = parts['e']['records']
  assert list(e['runs']) == ['jax'] and e['runs']['jax']['stopped_by'] == 'step cap'
  f = parts['f']['records']
  assert [(r['kind'], r['model']) for r in f] == [('jax', 'resnet18'), ('torch', 'resnet18')]
  assert f[1]['steps_per_s'] > 0
  table = (tmp_path / 'device_run.md').read_text()
  assert [line[:5] for line in table.splitlines() if line.startswith('## ')] == [
      f'## {key}.' for key in 'abcdef']


def test_a_spent_budget_skips_the_parts_left(tmp_path):
  texts = device_run.run_parts(str(tmp_path), budget_s=1e-9, smoke=True, precision='default')
  assert len(texts) == 6 and all('Skipped: the budget' in text for text in texts)
