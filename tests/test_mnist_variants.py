"""benchmarks/mnist_variants.py: the statistics and the table of saved per-seed records."""
import json
import subprocess
import sys

import pytest

from benchmarks import mnist_variants
from without_tensorflow import REPO


def record(variant, seed, accuracy, raw, curve, unsup_losses=None):
  saved = {'variant': variant, 'seed': seed, 'test_accuracy': accuracy,
           'test_accuracy_raw': raw, 'validation_curve': curve, 'wall_seconds': 100.0 + seed}
  if unsup_losses:  # records saved before D's unlabeled loss was kept have none
    saved['unsup_loss_curve'] = unsup_losses
  return saved


def test_the_table_shows_per_seed_errors_raw_weights_and_the_mean_curve():
  runs = {'salimans': [record('salimans', 0, 0.90, 0.88, [[600, 0.80], [1200, 0.84]]),
                       record('salimans', 1, 0.92, 0.90, [[600, 0.82], [1200, 0.86]])],
          'gen_steps_2': [record('gen_steps_2', 0, 0.95, 0.96, [[600, 0.85], [1200, 0.90]],
                                 [[550, 0.2], [1100, 0.03], [1650, 0.3]]),
                          record('gen_steps_2', 1, 0.96, 0.95, [[600, 0.87], [1200, 0.92]],
                                 [[550, 0.21], [1100, 0.35], [1650, 0.4]])]}
  variants = {name: mnist_variants.error_stats(records) for name, records in runs.items()}
  assert variants['salimans']['validation_curve'] == [[600, pytest.approx(81.0)],
                                                      [1200, pytest.approx(85.0)]]
  assert variants['gen_steps_2']['raw_mean'] == pytest.approx(4.5)
  table = mnist_variants.markdown({'variants': variants, 'baseline': 'salimans'})
  header, _, baseline, variant = table.splitlines()
  assert 'at steps 600 / 1,200' in header
  assert baseline == ('| salimans | `--mode=ssl` | 9.00 ± 1.41 (10.00, 8.00) | – | baseline | '
                      '11.00 ± 1.41 | 81.0 / 85.0 | –, – | 100 |')
  # Per seed, where D's unlabeled loss was lowest: seed 0's D won the game for a while.
  assert variant.startswith('| gen_steps_2 | `--gen_steps=2` | 4.50 ± 0.71 (5.00, 4.00) | -4.50 '
                            '| helps | 4.50 ± 0.71 | 86.0 / 91.0 | 0.030 (1,100), 0.210 (550) |')
  # Any variant can be the baseline (--baseline): the others are compared with it.
  table = mnist_variants.markdown({'variants': variants, 'baseline': 'gen_steps_2'})
  header, _, salimans, gen_steps_2 = table.splitlines()
  assert '| vs gen_steps_2 (pts) |' in header
  assert '| +4.50 | hurts |' in salimans and '| – | baseline |' in gen_steps_2


def test_a_short_run_saves_ds_unlabeled_loss_and_tabulates_it(tmp_path, mnist_data_dir):
  """The whole benchmark on a few steps of the real MNIST: each saved record keeps D's logged
  unlabeled loss, and the table shows where it was lowest."""
  result = subprocess.run(
      [sys.executable, '-m', 'benchmarks.mnist_variants', f'--data_dir={mnist_data_dir}',
       '--epochs=0.02', '--seeds=0', '--variants=salimans', f'--out_dir={tmp_path}'],
      capture_output=True, text=True, timeout=600, cwd=REPO)
  assert result.returncode == 0, result.stderr[-3000:]
  saved = json.loads((tmp_path / 'mnist_variants_runs' / 'salimans_seed0.json').read_text())
  [(step, loss)] = saved['unsup_loss_curve']  # 11 steps: one log line, at the end
  assert step == saved['num_steps'] == 11 and 0 < loss < 10
  assert f"| {loss:.3f} (11) |" in (tmp_path / 'mnist_variants.md').read_text()


@pytest.mark.parametrize('args,error', [
    (['--variants=salimans,gen_steps_9'], '--variants=salimans,gen_steps_9: allowed: salimans, '),
    (['--variants=gen_steps_2'], '--baseline=salimans: must be one of --variants (gen_steps_2)'),
    (['--variants=gen_steps_2', '--baseline=gen_steps_2', '--saved_only'],
     '--baseline=gen_steps_2: no saved record of it in '),
])
def test_bad_flags_exit_2_with_one_line_before_any_work(tmp_path, args, error):
  result = subprocess.run([sys.executable, '-m', 'benchmarks.mnist_variants', *args,
                           f'--out_dir={tmp_path}'],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
  assert result.returncode == 2 and result.stderr.startswith(f'error: {error}'), result.stderr
  assert len(result.stderr.splitlines()) == 1 and not result.stdout


def test_a_record_of_another_budget_is_refused_before_any_training(tmp_path):
  runs_dir = tmp_path / 'mnist_variants_runs'
  runs_dir.mkdir()
  (runs_dir / 'salimans_seed0.json').write_text(json.dumps({'budget': {'epochs': 99}}))
  result = subprocess.run([sys.executable, '-m', 'benchmarks.mnist_variants', '--epochs=1',
                           '--seeds=1,0', '--variants=salimans', f'--out_dir={tmp_path}'],
                          capture_output=True, text=True, timeout=600, cwd=REPO)
  assert result.returncode == 2, result.stderr[-3000:]
  assert result.stderr.startswith(f'error: --out_dir={tmp_path}: {runs_dir}/salimans_seed0.json '
                                  "was made with budget {'epochs': 99}, not {'epochs': 1.0, ")
  assert sorted(p.name for p in runs_dir.iterdir()) == ['salimans_seed0.json']  # seed 1 untrained
