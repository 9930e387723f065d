"""MNIST with 100 labels: discriminator heads, generator losses and "Improved Techniques" switches.

Every variant trains with experiments/mnist.flags (through mnist_ssl_vs_supervised.run) for the
same number of steps on the same seeds: run k uses --label_seed=k and --seed=k. Only the
variant's own flags differ. Each finished run is saved as a record under
--out_dir/mnist_variants_runs/, so an interrupted or partial invocation (--variants, --seeds)
continues where it stopped, invocations with different --seeds can run side by side, and a last
one tabulates them all from the saved records; a record made with another budget is an error
rather than something to mix in. Prints and saves JSON and a markdown table.

  python -m benchmarks.mnist_variants --data_dir=/work/shared/tfds --epochs=1 --seeds=0,1
"""
import datetime
import json
import math
import os
import shutil
import statistics
from typing import Optional

from absl import flags

from benchmarks import common_flags, record_files
from benchmarks import mnist_ssl_vs_supervised as base
from benchmarks.run_environment import run_environment
from benchmarks.spread import difference
from ssgan_jax.config import ConfigError

# name -> (mode, flags beyond the flagfile's). salimans is the flagfile's default.
VARIANTS = {
    'salimans': ('ssl', []),
    'kplus1': ('ssl', ['--unsup_loss=kplus1']),
    'two_head': ('ssl', ['--unsup_loss=two_head']),
    'nonsaturating': ('ssl', ['--gen_loss=nonsaturating']),
    'feature_matching+nonsaturating': ('ssl', ['--gen_loss=both']),
    'historical_averaging': ('ssl', ['--historical_averaging=0.001']),
    'one_sided_label_smoothing': ('ssl', ['--one_sided_label_smoothing=0.9']),
    'minibatch_discrimination': ('ssl', ['--minibatch_kernels=100']),
    # Choices that shape the early game, where D wins at once (see docs/mnist100.md).
    'unsup_weight_0.5': ('ssl', ['--unsup_weight=0.5']),
    'learning_rate_0.001': ('ssl', ['--learning_rate=0.001']),
    'ema_0.9999': ('ssl', ['--ema_horizon=0', '--ema_decay=0.9999']),
    'weight_norm_unit_init': ('ssl', ['--weight_norm_init=unit']),
    'weight_norm_all_scales': ('ssl', ['--weight_norm_scales=all']),
    'gen_steps_2': ('ssl', ['--gen_steps=2']),
    'gen_steps_3': ('ssl', ['--gen_steps=3']),
    'gen_output_plain': ('ssl', ['--gen_output_layer=plain']),
    'weight_norm_unit_init+gen_steps_2': ('ssl', ['--weight_norm_init=unit', '--gen_steps=2']),
    'learning_rate_0.001+weight_norm_unit_init': (
        'ssl', ['--learning_rate=0.001', '--weight_norm_init=unit']),
    # The unit init and two G updates with one more change, against D's early win that stalls
    # some runs (mnist_fast.flags took the third G update).
    'weight_norm_unit_init+gen_steps_2+gen_output_plain': (
        'ssl', ['--weight_norm_init=unit', '--gen_steps=2', '--gen_output_layer=plain']),
    'weight_norm_unit_init+gen_steps_3': ('ssl', ['--weight_norm_init=unit', '--gen_steps=3']),
    'supervised_only': ('supervised', []),
}

_SEEDS = flags.DEFINE_list('seeds', ['0', '1', '2'], 'Seeds: one run per variant and seed, '
                           'with that label and training seed; the --label_seed flag is not used.')
common_flags.require_seed_list(_SEEDS)
_VARIANTS = flags.DEFINE_list('variants', list(VARIANTS), 'Variants to run and tabulate.')
_BASELINE = flags.DEFINE_string('baseline', 'salimans', 'The variant the others are compared '
                                 'with; one of --variants.')
_SAVED_ONLY = flags.DEFINE_bool('saved_only', False, 'Train nothing: tabulate the saved records '
                                'of the chosen variants and seeds (a row shows how many exist).')


def budget() -> dict:
  """What every record of one table must share."""
  return {'epochs': base._EPOCHS.value, 'ema_decay': base._EMA_DECAY.value,
          'data_dir': base._DATA_DIR.value and os.path.abspath(base._DATA_DIR.value)}


def record_stem(variant: str, seed: int, runs_dir: str) -> str:
  """Where the record of (variant, seed) is saved under `runs_dir`, less '.json'."""
  return os.path.join(runs_dir, f'{variant}_seed{seed}')


def saved_record(variant: str, seed: int, runs_dir: str) -> Optional[dict]:
  """The saved record of (variant, seed), or None; ConfigError if it has another budget."""
  path = record_stem(variant, seed, runs_dir) + '.json'
  if not os.path.exists(path):
    return None
  with open(path) as f:
    record = json.load(f)
  if record['budget'] != budget():
    raise ConfigError('out_dir', common_flags.out_dir('mnist_variants'),
                      f'{path} was made with budget {record["budget"]}, not {budget()}; '
                      'use another --out_dir')
  return record


def train_record(variant: str, seed: int, runs_dir: str) -> dict:
  """Trains (variant, seed) and saves its record in runs_dir."""
  mode, extra_args = VARIANTS[variant]
  workdir = os.path.join(runs_dir, f'{variant}_seed{seed}.workdir')
  summary = base.run(mode, workdir, extra_args + [f'--label_seed={seed}', f'--seed={seed}'])
  record = {'variant': variant, 'seed': seed, 'flags': extra_args, 'budget': budget(),
            'date': datetime.date.today().isoformat(), **summary}
  record_files.save(record_stem(variant, seed, runs_dir), record)
  shutil.rmtree(workdir)
  return record


def error_stats(records: list[dict]) -> dict:
  """Test error in percent with the EMA parameters (mean, sample std, count) and with the raw
  ones (mean, sample std); the mean validation accuracy in percent at each evaluation step of
  every record ([step, accuracy] pairs); per record, D's lowest logged unlabeled loss as
  [step, loss] (None where the record has none); the mean wall seconds."""
  errors = [100 * (1 - r['test_accuracy']) for r in records]
  raw = [100 * (1 - r['test_accuracy_raw']) for r in records]
  spread = lambda values: statistics.stdev(values) if len(values) > 1 else math.nan
  curves = [dict(r['validation_curve']) for r in records]
  steps = sorted(set.intersection(*(set(curve) for curve in curves)))
  return {'mean': statistics.mean(errors), 'std': spread(errors), 'n': len(errors),
          'errors': errors, 'raw_mean': statistics.mean(raw), 'raw_std': spread(raw),
          'validation_curve': [[step, 100 * statistics.mean(c[step] for c in curves)]
                               for step in steps],
          'lowest_unsup_loss': [lowest_unsup_loss(r) for r in records],
          'wall_seconds': statistics.mean(r['wall_seconds'] for r in records)}


def lowest_unsup_loss(record: dict) -> Optional[list]:
  """[step, loss] where D's logged unlabeled loss was lowest: near 0 when D won the early
  game (the runs that stall), near its first value otherwise. None for supervised-only runs
  and records saved before the loss was kept."""
  points = record.get('unsup_loss_curve')
  return list(min(points, key=lambda point: point[1])) if points else None


def verdict(stats: dict, baseline: dict) -> str:
  """Better or worse than the baseline when the means differ by over two standard errors."""
  diff, _, within = difference(stats['errors'], baseline['errors'])
  if within is None:
    return 'needs 2+ seeds'
  if within:
    return 'within noise'
  return 'helps' if diff < 0 else 'hurts'


def markdown(record: dict) -> str:
  """One row per variant: test error with the average (per seed) and raw, the verdict
  against record['baseline'], the mean validation curve and the mean wall clock."""
  baseline_name = record['baseline']
  baseline = record['variants'][baseline_name]
  steps = [f'{step:,}' for step, _ in baseline['validation_curve']]
  rows = [f'| variant | flags | test error (%), EMA (per seed) | vs {baseline_name} (pts) | '
          'verdict | '
          f'test error (%), raw | mean validation accuracy (%) at steps {" / ".join(steps)} | '
          "D's lowest unlabeled loss (step), per seed | mean wall s |",
          '|---|---|---|---|---|---|---|---|---|']
  for name, stats in record['variants'].items():
    if not stats:
      continue
    flags_text = ' '.join(f'`{a}`' for a in VARIANTS[name][1] or [f'--mode={VARIANTS[name][0]}'])
    if name == baseline_name:
      diff_text, verdict_text = '–', 'baseline'
    else:
      diff_text = f"{stats['mean'] - baseline['mean']:+.2f}"
      verdict_text = verdict(stats, baseline)
    spread = lambda key: f" ± {stats[key]:.2f}" if stats['n'] > 1 else ''
    per_seed = ', '.join(f'{e:.2f}' for e in stats['errors'])
    curve = ' / '.join(f'{accuracy:.1f}' for _, accuracy in stats['validation_curve'])
    lowest = ', '.join('–' if point is None else f'{point[1]:.3f} ({point[0]:,})'
                       for point in stats['lowest_unsup_loss'])
    rows.append(f"| {name} | {flags_text} | {stats['mean']:.2f}{spread('std')} ({per_seed}) | "
                f"{diff_text} | {verdict_text} | {stats['raw_mean']:.2f}{spread('raw_std')} | "
                f"{curve} | {lowest} | {stats['wall_seconds']:.0f} |")
  return '\n'.join(rows) + '\n'


def check_variants() -> None:
  """Raises ConfigError unless --variants names known variants, the --baseline among them."""
  if set(_VARIANTS.value) - set(VARIANTS):
    raise ConfigError('variants', ','.join(_VARIANTS.value), f'allowed: {", ".join(VARIANTS)}')
  if _BASELINE.value not in _VARIANTS.value:
    raise ConfigError('baseline', _BASELINE.value,
                      f'must be one of --variants ({",".join(_VARIANTS.value)})')


def main():
  runs_dir = os.path.join(common_flags.out_dir('mnist_variants'), 'mnist_variants_runs')
  seeds = [int(seed) for seed in _SEEDS.value]
  check_variants()
  saved = {(name, seed): saved_record(name, seed, runs_dir)
           for seed in seeds for name in _VARIANTS.value}
  if _SAVED_ONLY.value and not any(saved[_BASELINE.value, seed] for seed in seeds):
    raise ConfigError('baseline', _BASELINE.value, f'no saved record of it in {runs_dir} '
                      '(--saved_only trains nothing)')
  # Seed-major order: a budget that runs short still leaves every variant on the first seeds.
  runs = {name: [] for name in _VARIANTS.value}
  for seed in seeds:
    for name in _VARIANTS.value:
      record = saved[name, seed]
      if record is None and not _SAVED_ONLY.value:
        record = train_record(name, seed, runs_dir)
      if record is not None:
        runs[name].append(record)
  record = {
      'benchmark': 'mnist_variants', **budget(),
      'num_steps': sorted({r['num_steps'] for records in runs.values() for r in records}),
      'seeds': seeds, 'baseline': _BASELINE.value, **run_environment(),
      'variants': {name: error_stats(records) if records else None
                   for name, records in runs.items()},
      'runs': runs,
  }
  table = markdown(record)
  record_files.save(os.path.join(common_flags.out_dir('mnist_variants'), 'mnist_variants'),
                    record, table)
  print(table)
  print(json.dumps({k: v for k, v in record.items() if k not in ('runs', 'variants')}))


if __name__ == '__main__':
  common_flags.run(main)
