"""benchmarks/throughput.py runs without TensorFlow and writes its JSON lines and table."""
import json

from without_tensorflow import run_module


def test_tiny_benchmark_reports_speed_cost_and_versions_without_tensorflow(tmp_path):
  result = run_module('benchmarks.throughput', '--models=mlp', '--batch_sizes=4', '--steps=1',
                      '--warmup=1', '--repeats=1', '--matmul_size=64', '--profile_top=3',
                      f'--out_dir={tmp_path}')
  assert result.returncode == 0, result.stderr[-3000:]
  records = [json.loads(line) for line in (tmp_path / 'throughput.jsonl').read_text().splitlines()]
  header, rows = records[0], {r['kind']: r for r in records[1:]}
  assert header['platform'] == 'cpu' and header['num_local_devices'] == 1
  assert header['jax'] and header['jaxlib'] and header['device_kind']
  row = rows['jax']
  assert (row['model'], row['global_batch'], row['num_devices']) == ('mlp', 4, 1)
  assert (row['parallel'], row['compute_dtype']) == ('pmap', 'float32')
  assert row['steps_per_s'] > 0 and row['images_per_s'] == 4 * row['steps_per_s']
  assert row['compile_s'] > 0 and row['flops_per_step'] > 1e6 and row['bytes_per_step'] > 0
  assert row['fraction_of_peak'] is None and 'unknown device' in row['peak_note']
  assert rows['matmul_peak']['flops_per_s'] > 0
  assert rows['roofline_projection']['steps_per_s'] > 0
  ops = rows['profile']['top_ops']
  assert len(ops) == 3 and all(op['ms_per_step'] > 0 and op['shape'] for op in ops)
  assert ops[0]['ms_per_step'] >= ops[-1]['ms_per_step']
  assert 0 < sum(op['share'] for op in ops) <= 1 and all(op['opcode'] for op in ops)
  table = (tmp_path / 'throughput.md').read_text()
  assert '| mlp | 4 | 1 | default |' in table and 'PROJECTION, not a measurement' in table
  assert f"| {ops[0]['name']} | " in table
