"""Random against representative labeled subsets (--label_selection), over several label seeds.

For each dataset and selection, trains one run per --label_seeds on a short budget (each
seed is the run's --label_seed and --seed, so the labeled subset and the initialisation vary) and
reports test accuracy as mean ± std over the seeds. Prints and saves a JSON record
and a markdown table under --out_dir (rewritten after every run, so a cut-short benchmark
keeps what it measured).

  python -m benchmarks.label_selection --data_dir=../shared/tfds
"""
import os
import pathlib
import tempfile

from absl import flags
import numpy as np

from ssgan_jax import main as ssgan_main
from ssgan_jax.config import ConfigError
from ssgan_jax.training import train
from benchmarks import common_flags, record_files
from benchmarks.run_environment import run_environment
from benchmarks.spread import mean_std

REPO = pathlib.Path(__file__).resolve().parents[1]
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data_dir holding mnist.')
_DATASETS = flags.DEFINE_list('datasets', ['digits', 'mnist'], 'Flagfiles in experiments/ to run.')
_STEPS = flags.DEFINE_list('steps', ['digits:1000', 'mnist:1100'],
                           'Train steps per dataset (short budgets), as name:steps.')
_MODE = flags.DEFINE_enum('mode', 'ssl', ('ssl', 'supervised'), 'Training mode of every run.')
SELECTIONS = ('random', 'representative')


def run(dataset: str, selection: str, label_seed: int, steps: int, workdir: str) -> dict:
  """One quiet training run; returns its settings and summary."""
  args = [f'--flagfile={REPO / "experiments" / f"{dataset}.flags"}', f'--mode={_MODE.value}',
          f'--label_selection={selection}', f'--label_seed={label_seed}', f'--seed={label_seed}',
          f'--num_steps={steps}', f'--checkpoint_every={steps}', f'--eval_every={steps}',
          '--sample_every=0', '--quiet']
  if _DATA_DIR.value:
    args.append(f'--data_dir={_DATA_DIR.value}')
  config, _ = ssgan_main.parse_config(args)
  summary = train.train_and_evaluate(config, workdir)
  return {'dataset': dataset, 'selection': selection, 'label_seed': label_seed,
          'num_labeled': config.num_labeled, 'num_steps': steps, **summary}


def markdown(record: dict) -> str:
  rows = ['| dataset | labels | steps | selection | test accuracy (EMA), mean ± std over seeds '
          '(--label_seed = --seed) | per seed | test accuracy (raw) | wall s (mean) |',
          '|---|---|---|---|---|---|---|---|']
  groups = {}
  for r in record['runs']:
    groups.setdefault((r['dataset'], r['selection']), []).append(r)
  for (dataset, selection), runs in groups.items():
    acc = 100 * np.array([r['test_accuracy'] for r in runs])
    rows.append(f"| {dataset} | {runs[0]['num_labeled']} | {runs[0]['num_steps']} | {selection} | "
                f"{mean_std(acc)} | "
                + ', '.join(f'{a:.2f}' for a in acc)
                + f" | {mean_std(100 * np.array([r['test_accuracy_raw'] for r in runs]))}"
                + f" | {np.mean([r['wall_seconds'] for r in runs]):.0f} |")
  return '\n'.join(rows) + '\n'


def steps_per_dataset() -> dict[str, int]:
  """--steps as {dataset: steps}; ConfigError unless it gives every --datasets a flagfile in
  experiments/ a positive step count."""
  try:
    steps = {name: int(n) for name, n in (item.split(':') for item in _STEPS.value)}
  except ValueError:
    steps = {}
  if not steps or any(n < 1 for n in steps.values()):
    raise ConfigError('steps', ','.join(_STEPS.value), 'must be name:steps pairs, steps >= 1')
  for dataset in _DATASETS.value:
    if not (REPO / 'experiments' / f'{dataset}.flags').is_file():
      raise ConfigError('datasets', dataset, f'no experiments/{dataset}.flags')
    if dataset not in steps:
      raise ConfigError('steps', ','.join(_STEPS.value), f'gives no steps for {dataset}')
  return steps


def main():
  steps = steps_per_dataset()
  out_dir = common_flags.out_dir('label_selection')
  os.makedirs(out_dir, exist_ok=True)
  workroot = tempfile.mkdtemp(prefix='label_selection_', dir=out_dir)
  record = {
      'benchmark': 'label_selection', 'mode': _MODE.value,
      **run_environment(), 'runs': []}
  stem = os.path.join(out_dir, 'label_selection')
  for dataset in _DATASETS.value:
    # Seeds outermost: a cut-short run stays balanced.
    for seed in map(int, common_flags.LABEL_SEEDS.value):
      for selection in SELECTIONS:
        workdir = os.path.join(workroot, f'{dataset}_{selection}_{seed}')
        record['runs'].append(run(dataset, selection, seed, steps[dataset], workdir))
        record_files.save(stem, record, markdown(record))
  print(markdown(record))


if __name__ == '__main__':
  common_flags.run(main)
