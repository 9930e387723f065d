"""The .npz export of the input pipeline's arrays, and compare_accuracy on a tiny budget."""
import dataclasses
import json

import numpy as np
import pytest
import tensorflow_datasets as tfds

from benchmarks import compare_accuracy, export_data, run_environment, spread
from benchmarks.torch_reference import train as torch_train
from ssgan_jax.data import input_pipeline
from ssgan_jax.config import Config, ConfigError
from without_tensorflow import run_module

TINY_FLAGS = ['--num_labeled=20', '--num_validation=20', '--batch_size=10',
              '--eval_batch_size=50', '--num_steps=2', '--checkpoint_every=2', '--eval_every=2',
              '--log_every=1', '--ema_decay=0.9']


def tiny_config(**changes) -> Config:
  return Config(num_labeled=20, num_validation=20, batch_size=10, eval_batch_size=50,
                num_steps=2, checkpoint_every=2, eval_every=2, log_every=1,
                ema_decay=0.9).replace(**changes)


def assert_same_data(actual, expected):
  for field in dataclasses.fields(expected):
    np.testing.assert_array_equal(getattr(actual, field.name), getattr(expected, field.name))


@pytest.mark.parametrize('label_seed', [0, 3])
def test_npz_export_gives_the_pipelines_arrays(tmp_path, label_seed):
  config = tiny_config(label_seed=label_seed)
  with tfds.testing.mock_data(num_examples=120):
    info = input_pipeline.dataset_info(config)
    expected = input_pipeline.load(config, info)
    splits = export_data.read_splits(config)
  path = str(tmp_path / 'mnist.npz')
  np.savez_compressed(path, **splits)
  loaded_info, loaded = export_data.semi_supervised_data(config, export_data.read_npz(path))
  assert (loaded_info.num_classes, loaded_info.image_shape) == (10, (28, 28, 1))
  assert_same_data(loaded, expected)


def test_npz_of_another_dataset_is_refused():
  splits = {'dataset': 'cifar10', 'num_classes': 10}
  with pytest.raises(ConfigError, match='--dataset=mnist: the exported data are cifar10'):
    export_data.semi_supervised_data(tiny_config(), splits)


def synthetic_splits(num_train=120, num_test=30) -> dict:
  rng = np.random.default_rng(0)
  return {'dataset': 'mnist', 'num_classes': 10,
          'train_images': rng.integers(0, 256, (num_train, 28, 28, 1), np.uint8),
          'train_labels': np.arange(num_train, dtype=np.int32) % 10,
          'test_images': rng.integers(0, 256, (num_test, 28, 28, 1), np.uint8),
          'test_labels': np.arange(num_test, dtype=np.int32) % 10}


def test_curve_steps():
  assert compare_accuracy.curve_steps(tiny_config(num_steps=1000), 4) == [250, 500, 750, 1000]
  with pytest.raises(ConfigError, match='--curve_points=2: must be 1 when'):
    compare_accuracy.curve_steps(tiny_config(lr_decay_fraction=0.5), 2)


@pytest.mark.parametrize('flags,widest', [('fpu avx avx2 fma', 'avx2'),
                                           ('avx avx2 avx512f avx512bw', 'avx512f'),
                                           ('fpu sse2', 'no AVX')])
def test_records_name_the_cpu_s_family_model_and_widest_vector_extension(tmp_path, flags,
                                                                        widest):
  cpu = 'processor\t: {}\ncpu family\t: 25\nmodel\t\t: 17\nmodel name\t: AMD EPYC\nflags\t\t: {}\n'
  (tmp_path / 'cpuinfo').write_text(cpu.format(0, flags) + '\n' + cpu.format(1, 'fpu'))
  assert (run_environment.cpu_description(str(tmp_path / 'cpuinfo'))
          == f'AMD EPYC, family 25 model 17, {widest}')
  assert run_environment.cpu_description(str(tmp_path / 'missing')) != ''


def test_spread_is_the_sample_standard_deviation():
  assert spread.mean_std([1.0, 2.0]) == '1.50 ± 0.71 %'
  assert spread.mean_std([0.82]) == '0.82 %'


def test_two_standard_errors_of_a_difference_of_means():
  # Sample variances 2 and 4 over 2 and 3 values: 2 * sqrt(2 / 2 + 4 / 3).
  assert spread.two_standard_errors([1.0, 3.0], [0.0, 2.0, 4.0]) == pytest.approx(
      2 * np.sqrt(1 + 4 / 3))
  assert spread.two_standard_errors([1.0], [1.0, 2.0]) is None


def curve_run(name, seed, errors):
  """A record's run with test errors (average, raw) at steps 10 and 20."""
  curve = [(10 * (i + 1), ema, 1.0, raw) for i, (ema, raw) in enumerate(errors)]
  return {'run': name, 'label_seed': seed, 'test_error': curve[-1][1],
          'test_error_raw': curve[-1][3], 'wall_seconds': 1.0, 'curve': curve}


def test_the_table_says_where_jax_and_torch_differ_beyond_noise():
  runs = [curve_run('jax_ssl', 0, [(0.20, 0.22), (0.10, 0.30)]),
          curve_run('jax_ssl', 1, [(0.22, 0.24), (0.12, 0.10)]),
          curve_run('torch_ssl', 0, [(0.21, 0.22), (0.05, 0.12)]),
          curve_run('torch_ssl', 1, [(0.23, 0.24), (0.05, 0.14)]),
          curve_run('jax_supervised', 0, [(0.3, 0.3), (0.3, 0.3)])]
  table = compare_accuracy.markdown({'config': {'num_steps': 20, 'eval_params': 'ema'},
                                     'runs': runs})
  header, _, step_10, step_20 = table.splitlines()[-4:]
  # Only ssl has both trainers; supervised-only has no column.
  assert header == '| step | ssl: JAX − PyTorch test error (points), ema / raw |'
  assert step_10 == ('| 10 | -1.00 ± 2.83, within noise / +0.00 ± 2.83, within noise |')
  # At step 20 the averages differ by 6 points against 2 standard errors of 2 (sample std 1.41
  # and 0): beyond noise; the raw errors differ by 7 against 2 * sqrt(200/2 + 2/2) = 20.1.
  assert step_20 == ('| 20 | +6.00 ± 2.00, beyond noise / +7.00 ± 20.10, within noise |')
  one_seed = compare_accuracy.markdown({'config': {'num_steps': 20, 'eval_params': 'ema'},
                                        'runs': runs[::2][:2]})
  assert one_seed.splitlines()[-1] == ('| 20 | +5.00 (needs 2+ seeds) / +18.00 (needs 2+ seeds) |')


def test_jax_and_torch_runs_make_one_table(tmp_path):
  config = tiny_config()
  data = export_data.semi_supervised_data(config, synthetic_splits())
  runs = [{'run': 'jax_ssl', 'label_seed': 0,
           **compare_accuracy.run_jax(config, data, [2], str(tmp_path / 'jax'))},
          {'run': 'torch_supervised', 'label_seed': 0,
           **compare_accuracy.run_torch(config.replace(mode='supervised'), data, [1, 2], 'cpu')}]
  for run in runs:
    assert 0 <= run['test_error'] <= 1 and run['curve'][-1][0] == 2
  assert [p[0] for p in runs[1]['curve']] == [1, 2]
  for i, run in enumerate(runs):
    compare_accuracy.write({'command': f'run {i}', 'config': {'num_steps': 2, 'eval_params': 'ema'},
                            'runs': [run]},
                           str(tmp_path / str(i)))
  merged = compare_accuracy.merge([str(tmp_path / '0'), str(tmp_path / '1')])
  table = compare_accuracy.markdown(merged)
  assert merged['command'] == ['run 0', 'run 1']
  assert '| jax_ssl | 2 | 0 |' in table and '| torch_supervised | 2 | 0 |' in table
  assert f"| 0 | {100 * runs[0]['test_error']:.2f} % |" in table
  for run in runs:  # each curve point has the raw weights' error beside the average's
    assert run['curve'][-1][3] == run['test_error_raw']
  assert (f"| 2 | {100 * runs[0]['test_error']:.2f} % / {100 * runs[0]['test_error_raw']:.2f} % "
          in compare_accuracy.markdown({'config': {'num_steps': 2, 'eval_params': 'ema'},
                                        'runs': runs[:1]}))
  old = {**runs[0], 'curve': [p[:3] for p in runs[0]['curve']]}  # records from before raw points
  assert (f"| 2 | {100 * runs[0]['test_error']:.2f} % ("
          in compare_accuracy.markdown({'config': {'num_steps': 2, 'eval_params': 'ema'},
                                        'runs': [old]}))
  with pytest.raises(ConfigError, match=f'--merge={tmp_path / "0"},{tmp_path / "2"}: '
                     f'{tmp_path / "2" / "compare_accuracy.json"} does not exist'):
    compare_accuracy.merge([str(tmp_path / '0'), str(tmp_path / '2')])


@pytest.fixture(scope='module')
def uninterrupted(tmp_path_factory):
  """A 4-step run with curve points [2, 4], never stopped: (config, data, its record)."""
  config = tiny_config(num_steps=4)
  data = export_data.semi_supervised_data(config, synthetic_splits())
  return config, data, compare_accuracy.run_jax(config, data, [2, 4],
                                                str(tmp_path_factory.mktemp('whole')))


def test_jax_run_resumes_from_its_last_curve_point(uninterrupted, tmp_path, monkeypatch):
  """A run stopped after its first curve point and run again ends where an uninterrupted
  run ends; points already recorded are read back, not trained again."""
  config, data, whole = uninterrupted
  workdir = str(tmp_path / 'runs' / 'resumed')
  compare_accuracy.run_jax(config, data, [2], workdir)
  compare_accuracy.check_resumable(workdir, [2, 4])
  resumed = compare_accuracy.run_jax(config, data, [2, 4], workdir)
  assert [p[:2] for p in resumed['curve']] == [p[:2] for p in whole['curve']]
  monkeypatch.setattr(compare_accuracy.train, 'train_and_evaluate', None)  # must not be called
  again = compare_accuracy.run_jax(config, data, [2, 4], workdir)
  assert again['curve'] == resumed['curve']
  with pytest.raises(ConfigError, match=f'--out_dir={tmp_path}: its run resumed has curve '
                     r'points \[2, 4\], not the first of \[1, 2, 3, 4\]'):
    compare_accuracy.check_resumable(workdir, [1, 2, 3, 4])


def test_a_jax_run_stopped_between_curve_points_resumes_exactly(uninterrupted, tmp_path):
  """A stop request (SIGTERM, Ctrl-C) saves the run where it is and run_jax returns None;
  run again, it ends where an uninterrupted run ends."""
  config, data, whole = uninterrupted
  workdir = str(tmp_path / 'stopped')
  assert compare_accuracy.run_jax(config, data, [2, 4], workdir,
                                  stop_requested=lambda step: step == 3) is None
  assert sorted(compare_accuracy.recorded_summaries(workdir)) == [2]
  assert (tmp_path / 'stopped' / 'checkpoints' / '3').is_dir()
  resumed = compare_accuracy.run_jax(config, data, [2, 4], workdir)
  assert [p[:2] + p[3:] for p in resumed['curve']] == [p[:2] + p[3:] for p in whole['curve']]


def test_a_run_resumed_at_curve_points_averages_as_one_run(tmp_path):
  """With --ema_horizon, every leg of a run resumed at its curve points averages D with the
  whole run's decay, so the curve points do not change the result."""
  config = tiny_config(num_steps=4, ema_decay=0.9999, ema_horizon=0.5)
  data = export_data.semi_supervised_data(config, synthetic_splits())
  legs = compare_accuracy.run_jax(config, data, [2, 4], str(tmp_path / 'legs'))
  whole = compare_accuracy.run_jax(config, data, [4], str(tmp_path / 'whole'))
  assert legs['curve'][-1][1::2] == whole['curve'][-1][1::2]
  assert compare_accuracy.leg_config(config, 2).ema_decay == 0.5


def test_both_trainers_run_from_an_npz_without_tensorflow(tmp_path):
  """The GPU machine has neither TensorFlow nor TFDS: training reads the export, writes
  metrics.jsonl (with steps/s) and logs its scalars instead of writing TensorBoard events."""
  np.savez_compressed(tmp_path / 'mnist.npz', **synthetic_splits())
  out_dir = tmp_path / 'out'
  result = run_module('benchmarks.compare_accuracy', *TINY_FLAGS,
                      f'--data_npz={tmp_path / "mnist.npz"}', '--runs=jax_ssl,torch_ssl',
                      '--label_seeds=0', '--curve_points=1', f'--out_dir={out_dir}')
  assert result.returncode == 0, result.stderr[-3000:]
  assert 'No TensorBoard events' in result.stderr
  record = json.loads((out_dir / 'compare_accuracy.json').read_text())
  assert [r['run'] for r in record['runs']] == ['jax_ssl', 'torch_ssl']
  [workdir] = out_dir.glob('runs/jax_ssl_0')
  metrics = [json.loads(line) for line in (workdir / 'metrics.jsonl').read_text().splitlines()]
  assert [m['step'] for m in metrics if 'steps_per_sec' in m] == [1, 2]
  assert all(m['steps_per_sec'] > 0 for m in metrics if 'steps_per_sec' in m)
  assert not list(workdir.glob('events.out.tfevents*'))


@pytest.mark.parametrize('changes,flag', [
    (dict(minibatch_kernels=3), '--minibatch_kernels=3'),
    (dict(historical_averaging=0.1), '--historical_averaging=0.1'),
    (dict(one_sided_label_smoothing=0.9), '--one_sided_label_smoothing=0.9'),
    (dict(compute_dtype='bfloat16'), '--compute_dtype=bfloat16'),
])
def test_the_reference_refuses_what_it_does_not_implement(changes, flag):
  config = tiny_config(**changes)
  assert torch_train.unsupported_settings(config) == [flag]
  with pytest.raises(ConfigError, match=f'^{flag}: the PyTorch reference does not implement'):
    torch_train.check_supported(config)
  # What changes only how ssgan_jax computes the same step is no obstacle.
  assert not torch_train.unsupported_settings(tiny_config(parallel='shard_map', eval_params='raw',
                                                          steps_per_dispatch=2))
  # Nor is the data, which both frameworks read from the same arrays, or a model it has.
  assert not torch_train.unsupported_settings(tiny_config(image_size=32, train_split='train[:80%]',
                                                          model='resnet18'))


def test_compare_accuracy_refuses_a_setting_the_reference_lacks_in_one_line(tmp_path):
  result = run_module('benchmarks.compare_accuracy', *TINY_FLAGS, '--minibatch_kernels=3',
                      '--curve_points=1',
                      f'--out_dir={tmp_path}')
  assert result.returncode == 2, result.stderr[-3000:]
  assert result.stderr.strip().splitlines() == [
      'error: --minibatch_kernels=3: the PyTorch reference does not implement it, so a '
      'comparison would compare different models; use the default (0) to compare']


def test_the_torch_run_evaluates_the_weights_asked_for(monkeypatch):
  """As the JAX run's test error does: --eval_params's weights, and the raw ones beside, at
  every curve point."""
  asked = []
  monkeypatch.setattr(compare_accuracy.TorchTrainer, 'accuracy',
                      lambda self, images, labels, which='ema': asked.append(which) or 0.5)
  config = tiny_config(mode='supervised', eval_params='ema')
  data = export_data.semi_supervised_data(config, synthetic_splits())
  compare_accuracy.run_torch(config, data, [1, 2], 'cpu')
  assert asked == ['ema', 'raw', 'ema', 'raw']
