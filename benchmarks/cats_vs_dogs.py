"""Cats vs dogs with 100 labels: semi-supervised against supervised-only, random against
representative labels, over label seeds, and JAX against the PyTorch reference for one seed.

Each run trains experiments/cats_vs_dogs_64.flags (or --flagfile, with any flag overriding
it) to its --num_steps and is scored by its raw D's test accuracy (the seed evaluates its raw
model). The splits are read once; every run of a label seed and selection trains on the same
labeled subset. Writes cats_vs_dogs.json and cats_vs_dogs.md under --out_dir, rewritten as
each run finishes; JAX runs keep their workdirs under <out_dir>/runs/, so the same command
run again resumes them.

  python -m benchmarks.cats_vs_dogs --flagfile=experiments/cats_vs_dogs_64.flags \
      --data_dir=../shared/tfds
"""
import dataclasses
import json
import os

from absl import flags
import numpy as np
import torch

from benchmarks import common_flags, compare_accuracy, export_data, record_files
from benchmarks.run_environment import run_environment
from benchmarks.spread import mean_std
from ssgan_jax import config as config_lib, main as ssgan_main

MODES = ('ssl', 'supervised')
# The seed's figures (its README and talk), on the real photos at 224 px.
SEED_FIGURES = {'ssl': 72.4, 'supervised': 60.2}
_SELECTIONS = flags.DEFINE_list('selections', list(config_lib.LABEL_SELECTIONS),
                                'Label selections to compare.')
_MODES = flags.DEFINE_list('modes', list(MODES), 'Modes to compare.')
_TORCH_SEED = flags.DEFINE_integer('torch_label_seed', 0, 'Label seed of the PyTorch '
                                   'reference runs (random labels, every mode); -1: none.')


def planned_runs() -> list[dict]:
  """(framework, selection, mode, label seed) of every run, JAX first."""
  runs = [{'framework': 'jax', 'selection': selection, 'mode': mode, 'label_seed': seed}
          for selection in _SELECTIONS.value for seed in map(int, common_flags.LABEL_SEEDS.value)
          for mode in _MODES.value]
  if _TORCH_SEED.value >= 0:
    runs += [{'framework': 'torch', 'selection': 'random', 'mode': mode,
              'label_seed': _TORCH_SEED.value} for mode in _MODES.value]
  return runs


def train_one(config: config_lib.Config, splits: dict, run: dict, workroot: str) -> dict:
  """Trains one planned run to config.num_steps; its test accuracy (raw D) and wall seconds."""
  run_config = config.replace(label_seed=run['label_seed'], mode=run['mode'],
                              label_selection=run['selection'])
  data = export_data.semi_supervised_data(run_config, splits)
  steps = [config.num_steps]
  if run['framework'] == 'jax':
    name = f"{run['selection']}_{run['mode']}_{run['label_seed']}"
    result = compare_accuracy.run_jax(run_config, data, steps, os.path.join(workroot, name))
  else:
    result = compare_accuracy.run_torch(run_config, data, steps, 'cpu')
  return {**run, 'test_accuracy': 100 * (1 - result['test_error_raw']),
          'wall_seconds': result['wall_seconds']}


def markdown(record: dict) -> str:
  """Test accuracy mean ± std per (framework, selection, mode), and SSL's gain."""
  groups = {}
  for r in record['runs']:
    groups.setdefault((r['framework'], r['selection'], r['mode']), []).append(r)
  steps = record['config']['num_steps']
  rows = ['| trainer | labels | mode | steps | label seeds | test accuracy, mean ± std | '
          'per seed | wall s, mean |', '|---|---|---|---|---|---|---|---|']
  for (framework, selection, mode), runs in groups.items():
    accuracies = [r['test_accuracy'] for r in runs]
    rows.append(f"| {framework} | {selection} | {mode} | {steps} | "
                f"{', '.join(str(r['label_seed']) for r in runs)} | {mean_std(accuracies)} | "
                f"{', '.join(f'{a:.2f}' for a in accuracies)} | "
                f"{np.mean([r['wall_seconds'] for r in runs]):.0f} |")
  rows += ['', '| trainer | labels | SSL − supervised (mean over seeds) |', '|---|---|---|']
  for framework, selection in dict.fromkeys(key[:2] for key in groups):
    ssl, sup = (groups.get((framework, selection, mode)) for mode in MODES)
    if ssl and sup:
      gain = (np.mean([r['test_accuracy'] for r in ssl])
              - np.mean([r['test_accuracy'] for r in sup]))
      rows.append(f'| {framework} | {selection} | {gain:+.2f} points |')
  rows += ['', f"The seed: {SEED_FIGURES['ssl']} % (SSL) against {SEED_FIGURES['supervised']} % "
           '(supervised-only), 224 px real photos, 14 epochs.']
  return '\n'.join(rows) + '\n'


def write(record: dict, out_dir: str) -> str:
  """Saves the record as JSON and its tables as markdown; returns the tables."""
  table = markdown(record)
  record_files.save(os.path.join(out_dir, 'cats_vs_dogs'), record, table)
  return table


def main():
  config = ssgan_main.config_from_flags()
  config_lib.validate(config)
  for name, values, allowed in (('selections', _SELECTIONS.value, config_lib.LABEL_SELECTIONS),
                                ('modes', _MODES.value, MODES)):
    if not values or set(values) - set(allowed):
      raise config_lib.ConfigError(name, ','.join(values), f'allowed: {", ".join(allowed)}')
  splits = export_data.read_splits(config)
  record = {'benchmark': 'cats_vs_dogs', **run_environment(), 'torch': torch.__version__,
            'torch_threads': torch.get_num_threads(), 'config': dataclasses.asdict(config),
            'runs': []}
  out_dir = common_flags.out_dir('cats_vs_dogs')
  for run in planned_runs():
    record['runs'].append(train_one(config, splits, run, os.path.join(out_dir, 'runs')))
    print(json.dumps(record['runs'][-1]), flush=True)
    write(record, out_dir)
  print(write(record, out_dir))


if __name__ == '__main__':
  ssgan_main.define_flags()
  common_flags.run(main)
