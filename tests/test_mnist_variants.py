"""benchmarks/mnist_variants.py: the statistics and the table of saved per-seed records."""
import pytest

from benchmarks import mnist_variants


def record(variant, seed, accuracy, raw, curve):
  return {'variant': variant, 'seed': seed, 'test_accuracy': accuracy,
          'test_accuracy_raw': raw, 'validation_curve': curve, 'wall_seconds': 100.0 + seed}


def test_the_table_shows_per_seed_errors_raw_weights_and_the_mean_curve():
  runs = {'salimans': [record('salimans', 0, 0.90, 0.88, [[600, 0.80], [1200, 0.84]]),
                       record('salimans', 1, 0.92, 0.90, [[600, 0.82], [1200, 0.86]])],
          'gen_steps_2': [record('gen_steps_2', 0, 0.95, 0.96, [[600, 0.85], [1200, 0.90]]),
                          record('gen_steps_2', 1, 0.96, 0.95, [[600, 0.87], [1200, 0.92]])]}
  variants = {name: mnist_variants.error_stats(records) for name, records in runs.items()}
  assert variants['salimans']['validation_curve'] == [[600, pytest.approx(81.0)],
                                                      [1200, pytest.approx(85.0)]]
  assert variants['gen_steps_2']['raw_mean'] == pytest.approx(4.5)
  table = mnist_variants.markdown({'variants': variants})
  header, _, baseline, variant = table.splitlines()
  assert 'at steps 600 / 1,200' in header
  assert baseline == ('| salimans | `--mode=ssl` | 9.00 ± 1.41 (10.00, 8.00) | – | baseline | '
                      '11.00 ± 1.41 | 81.0 / 85.0 | 100 |')
  assert variant.startswith('| gen_steps_2 | `--gen_steps=2` | 4.50 ± 0.71 (5.00, 4.00) | -4.50 '
                            '| helps | 4.50 ± 0.71 | 86.0 / 91.0 |')
