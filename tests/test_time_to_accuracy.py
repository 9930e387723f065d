"""benchmarks/time_to_accuracy.py times both trainers on the same data, without TensorFlow."""
import json
import time

import numpy as np

from benchmarks import time_to_accuracy

from without_tensorflow import REPO, run_module

TINY = ['--num_labeled=20', '--num_validation=0', '--batch_size=10', '--eval_batch_size=50',
        '--eval_every=2', '--num_steps=4', '--ema_decay=0.9']


def fake_mnist(path, train_size=200, test_size=50):
  """An export_data file of 28x28 noise with a bright row 2 * label: learnable in a few steps."""
  rng = np.random.default_rng(0)
  labels = lambda n: np.arange(n, dtype=np.int64) % 10

  def images(n):
    pixels = rng.integers(0, 128, (n, 28, 28, 1), dtype=np.uint8)
    pixels[np.arange(n), 2 * labels(n)] = 255
    return pixels

  np.savez(path, dataset='mnist', num_classes=10, train_images=images(train_size),
           train_labels=labels(train_size), test_images=images(test_size),
           test_labels=labels(test_size))


def test_both_trainers_are_timed_to_each_target_until_the_step_cap(tmp_path):
  fake_mnist(tmp_path / 'mnist.npz')
  result = run_module('benchmarks.time_to_accuracy', f'--flagfile={REPO}/experiments/mnist.flags',
                      *TINY, f'--data_npz={tmp_path / "mnist.npz"}', '--targets=0,1',
                      '--torch_threads=1', f'--out_dir={tmp_path}')
  assert result.returncode == 0, result.stderr[-3000:]
  record = json.loads((tmp_path / 'time_to_accuracy.json').read_text())
  assert set(record['runs']) == {'jax', 'torch'}
  for run in record['runs'].values():
    assert [step for step, _, _, _ in run['curve']] == [2, 4]
    # The raw weights' accuracy, evaluated beside the average's.
    assert all(0 <= raw <= 1 for _, _, _, raw in run['curve'])
    assert run['reached']['0.0'] == {'step': 2, 'wall_s': run['curve'][0][2]}
    assert run['reached']['1.0'] is None and run['stopped_by'] == 'step cap'
    assert 0 < run['curve'][0][2] < run['curve'][1][2] <= run['wall_s']
  ratio = record['runs']['torch']['curve'][0][2] / record['runs']['jax']['curve'][0][2]
  assert record['torch_over_jax'] == {'0.0': round(ratio, 3), '1.0': None}
  table = (tmp_path / 'time_to_accuracy.md').read_text()
  assert 'not reached by step 4' in table and 'step cap' in table
  assert '| last test accuracy, ema | last, raw |' in table


def test_the_clock_leaves_out_paused_time():
  clock = time_to_accuracy.Clock([0.5], num_steps=10, deadline=float('inf'))
  def accuracy(which):  # the other parameters take 0.3 s to evaluate
    if which == 'raw':
      time.sleep(0.3)
    return {'ema': 0.6, 'raw': 0.4}[which]
  clock.evaluate(1, accuracy, 'ema')
  (step, ema, wall, raw), = clock.curve
  assert (step, ema, raw) == (1, 0.6, 0.4) and wall < 0.1
  assert clock.reached == {0.5: {'step': 1, 'wall_s': wall}}


def test_bad_targets_are_named_before_any_work(tmp_path):
  result = run_module('benchmarks.time_to_accuracy', f'--flagfile={REPO}/experiments/mnist.flags',
                      '--targets=0.9,high', f'--out_dir={tmp_path}')
  assert result.returncode == 2
  assert result.stderr.strip().splitlines()[-1] == (
      'error: --targets=0.9,high: must be accuracies in [0, 1], comma-separated')
