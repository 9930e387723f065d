"""Test error of the JAX trainer and the PyTorch reference at equal steps, over label seeds.

For a flagfile (plus any flag overriding it), trains the JAX model with
`train.train_and_evaluate` and the PyTorch reference with `TorchTrainer` on the same arrays
and batches, for each --label_seeds, in ssl mode and supervised-only; reports test error
(--eval_params, EMA by default, the same for both) mean ± std over seeds (each run's
--seed is its --label_seed, so both the labeled subset and the initialisation vary) per
trainer and mode, and a learning curve (test error with those weights and with the raw
ones, against step and wall seconds) per run. Writes compare_accuracy.json and
compare_accuracy.md under --out_dir.

  python -m benchmarks.compare_accuracy --flagfile=experiments/mnist.flags \
      --data_dir=../shared/tfds --ema_decay=0.999 --num_steps=2000

The JAX curve comes from resuming train_and_evaluate at each curve point (its summary has the
test error), so its wall seconds include a restart (setup, compilation, checkpointing) per
point; the torch run is one loop that stops to evaluate. JAX runs keep their workdirs under
<out_dir>/runs/ and the same command run again resumes them from their last curve point
(a long run can span several sessions; SIGTERM or Ctrl-C during a JAX run saves it at the
current step first); torch runs start over. With --data_npz (written by
benchmarks/export_data.py) no TFDS is read.
"""
import dataclasses
import json
import os
import sys
import time
from typing import Callable, Optional

from absl import flags
import numpy as np
import torch

from benchmarks import common_flags, export_data, record_files
from benchmarks.run_environment import run_environment
from benchmarks.spread import difference, mean_std
from benchmarks.torch_reference.train import TorchTrainer, check_supported
from ssgan_jax import config as config_lib
from ssgan_jax.data import input_pipeline
from ssgan_jax import main as ssgan_main
from ssgan_jax.training import preemption, train

RUNS = ('jax_ssl', 'torch_ssl', 'jax_supervised', 'torch_supervised')
_RUNS = flags.DEFINE_list('runs', list(RUNS), f'Which of {", ".join(RUNS)} to train.')
_CURVE_POINTS = flags.DEFINE_integer('curve_points', 4, 'Evaluations of test error per run.')
_TORCH_DEVICE = flags.DEFINE_string('torch_device', 'cpu', 'Device of the torch runs.')
_MERGE = flags.DEFINE_list('merge', None, 'Instead of training, merge the records in these '
                           'output folders into one under --out_dir.')


def curve_steps(config: config_lib.Config, points: int) -> list[int]:
  """The steps at which each run's test error is measured; the last is num_steps."""
  if points < 1 or points > config.num_steps:
    raise config_lib.ConfigError('curve_points', points, f'must be in [1, {config.num_steps}]')
  if points > 1 and config.lr_decay_fraction > 0:
    # A JAX run resumed with a smaller num_steps would decay its rate earlier.
    raise config_lib.ConfigError('curve_points', points,
                                 'must be 1 when --lr_decay_fraction > 0')
  return [round(config.num_steps * (i + 1) / points) for i in range(points)]


def recorded_summaries(workdir: str) -> dict[int, dict]:
  """The end-of-run summaries (test accuracy, wall seconds) in workdir's metrics.jsonl, by step."""
  path = os.path.join(workdir, 'metrics.jsonl')
  if not os.path.exists(path):
    return {}
  with open(path) as f:
    lines = f.read().splitlines()
  records = []
  for line in lines:
    try:
      records.append(json.loads(line))
    except json.JSONDecodeError:  # the last line of a killed run
      pass
  return {r['step']: r for r in records if 'test_accuracy' in r}


def check_resumable(workdir: str, steps: list[int]) -> None:
  """Raises ConfigError unless workdir's recorded curve points are the first of `steps`."""
  recorded = sorted(recorded_summaries(workdir))
  if recorded != steps[:len(recorded)]:
    out_dir = os.path.dirname(os.path.dirname(workdir))
    raise config_lib.ConfigError(
        'out_dir', out_dir, f'its run {os.path.basename(workdir)} has curve points {recorded}, '
        f'not the first of {steps}; give the same --num_steps and --curve_points, or another '
        '--out_dir')


def leg_config(config, step: int):
  """`config` trained up to `step`, one leg of a run resumed at each curve point, averaging
  D with the whole run's decay (--ema_horizon would fit the decay to each leg)."""
  return config.replace(num_steps=step, checkpoint_every=step, eval_every=step,
                        log_every=min(config.log_every, step),
                        ema_decay=config_lib.ema_decay(config), ema_horizon=0.0)


def run_jax(config, data, steps: list[int], workdir: str,
            stop_requested: Callable[[int], bool] = lambda step: False) -> Optional[dict]:
  """Trains with train_and_evaluate, resumed at each of `steps`; test errors and wall seconds.

  Curve points that workdir already has a summary for (from an earlier call) are read, not
  trained again. Once stop_requested(step) turns True, saves a checkpoint at that step and
  returns None: the next call resumes there.
  """
  curve, wall = [], 0.0
  recorded = recorded_summaries(workdir)
  for step in steps:
    summary = recorded.get(step) or train.train_and_evaluate(
        leg_config(config, step), workdir, stop_requested, data=data)
    if summary.get('stopped'):
      return None
    wall += summary['wall_seconds']
    curve.append((step, 1 - summary['test_accuracy'], round(wall, 2),
                  1 - summary['test_accuracy_raw']))
  return {'test_error': 1 - summary['test_accuracy'],
          'test_error_raw': 1 - summary['test_accuracy_raw'], 'wall_seconds': round(wall, 2),
          'curve': curve}


def run_torch(config, data, steps: list[int], device: str) -> dict:
  """Trains TorchTrainer on the pipeline's batches; test errors and wall seconds at `steps`."""
  start = time.time()
  info, arrays = data
  init_images = arrays.unlabeled_images if config.mode == 'ssl' else arrays.labeled_images
  trainer = TorchTrainer(config, info.num_classes, info.image_shape, init_images,
                         device=device)
  points = set(steps)
  batches = input_pipeline.train_batches(arrays, config, 0, num_devices=1)
  curve = []
  for step in range(1, config.num_steps + 1):
    metrics = trainer.train_step({k: v[0] for k, v in next(batches).items()})
    if step in points:
      if not all(np.isfinite(float(v)) for v in metrics.values()):
        raise FloatingPointError(f'torch training diverged by step {step}: {metrics}')
      error = 1 - trainer.accuracy(arrays.test_images, arrays.test_labels, config.eval_params)
      raw = error if config.eval_params == 'raw' else 1 - trainer.accuracy(
          arrays.test_images, arrays.test_labels, 'raw')
      curve.append((step, error, round(time.time() - start, 2), raw))
  return {'test_error': curve[-1][1], 'test_error_raw': curve[-1][3],
          'wall_seconds': round(time.time() - start, 2), 'curve': curve}


def per_seed(runs) -> str:
  return ', '.join(f'{100 * r["test_error"]:.2f}' for r in runs)


def markdown(record: dict) -> str:
  """Summary (mean ± std over seeds) and the mean learning curves."""
  by_run = {}
  for r in record['runs']:
    by_run.setdefault(r['run'], []).append(r)
  rows = [f"| run | steps | seeds (--label_seed = --seed) | test error "
          f"({record['config']['eval_params']}), mean ± std | per seed | "
          'test error (raw), mean ± std | wall s, mean |', '|---|---|---|---|---|---|---|']
  for name, runs in by_run.items():
    rows.append(f"| {name} | {record['config']['num_steps']} | "
                f"{', '.join(str(r['label_seed']) for r in runs)} | "
                f"{mean_std([100 * r['test_error'] for r in runs])} | "
                f"{per_seed(runs)} | "
                f"{mean_std([100 * r['test_error_raw'] for r in runs])} | "
                f"{np.mean([r['wall_seconds'] for r in runs]):.0f} |")
  rows += ['', '| step | ' + ' | '.join(
      f"{n} test error, {record['config']['eval_params']} / raw (wall s)" for n in by_run) + ' |',
           '|---|' + '---|' * len(by_run)]
  steps = [p[0] for p in next(iter(by_run.values()))[0]['curve']]
  for i, step in enumerate(steps):
    cells = []
    for runs in by_run.values():
      points = [r['curve'][i] for r in runs if len(r['curve']) > i]
      # Records from before the raw error was kept have (step, error, wall) points.
      raw = (f' / {100 * np.mean([p[3] for p in points]):.2f} %'
             if all(len(p) > 3 for p in points) else '')
      cells.append(f'{100 * np.mean([p[1] for p in points]):.2f} %{raw} '
                   f'({np.mean([p[2] for p in points]):.0f})')
    rows.append(f'| {step} | ' + ' | '.join(cells) + ' |')
  return '\n'.join(rows + trainer_differences(record, by_run, steps)) + '\n'


def difference_text(jax_percents, torch_percents) -> str:
  """'JAX mean less torch mean ± two standard errors, and whether that is within noise'."""
  diff, noise, within = difference(jax_percents, torch_percents)
  if within is None:
    return f'{diff:+.2f} (needs 2+ seeds)'
  return f"{diff:+.2f} ± {noise:.2f}, {'within noise' if within else 'beyond noise'}"


def trainer_differences(record: dict, by_run: dict, steps: list[int]) -> list[str]:
  """Table rows: per mode that both trainers ran, JAX's mean test error less PyTorch's at
  every curve point (with --eval_params's weights and the raw ones), against two standard
  errors over seeds."""
  modes = [m for m in ('ssl', 'supervised') if f'jax_{m}' in by_run and f'torch_{m}' in by_run]
  if not modes:
    return []
  rows = ['', '| step | ' + ' | '.join(
      f"{mode}: JAX − PyTorch test error (points), {record['config']['eval_params']} / raw"
      for mode in modes) + ' |', '|---|' + '---|' * len(modes)]
  for i, step in enumerate(steps):
    cells = []
    for mode in modes:
      points = [[r['curve'][i] for r in by_run[f'{framework}_{mode}'] if len(r['curve']) > i]
                for framework in ('jax', 'torch')]
      texts = [difference_text(*([100 * p[k] for p in ps] for ps in points))
               for k in (1, 3) if all(len(p) > k for ps in points for p in ps)]
      cells.append(' / '.join(texts))
    rows.append(f'| {step} | ' + ' | '.join(cells) + ' |')
  return rows


def write(record: dict, out_dir: str) -> str:
  """Saves the record as JSON and its tables as markdown; returns the tables."""
  table = markdown(record)
  record_files.save(os.path.join(out_dir, 'compare_accuracy'), record, table)
  return table


def merge(out_dirs: list[str]) -> dict:
  """One record holding the runs of several records (e.g. one process per label seed)."""
  records = []
  for out_dir in out_dirs:
    path = os.path.join(out_dir, 'compare_accuracy.json')
    if not os.path.exists(path):
      raise config_lib.ConfigError('merge', ','.join(out_dirs),
                                   f'{path} does not exist (no run there has finished)')
    with open(path) as f:
      records.append(json.load(f))
  return {**records[0], 'command': [r['command'] for r in records],
          'runs': [run for r in records for run in r['runs']]}


def main():
  config = ssgan_main.config_from_flags()
  out_dir = common_flags.out_dir('compare_accuracy')
  if _MERGE.value:
    print(write(merge(_MERGE.value), out_dir))
    return
  config_lib.validate(config)
  steps = curve_steps(config, _CURVE_POINTS.value)
  unknown = set(_RUNS.value) - set(RUNS)
  if unknown:
    raise config_lib.ConfigError('runs', ','.join(_RUNS.value), f'allowed: {", ".join(RUNS)}')
  if any(name.startswith('torch') for name in _RUNS.value):
    check_supported(config)
  workroot = os.path.join(out_dir, 'runs')
  for seed in map(int, common_flags.LABEL_SEEDS.value):
    for name in _RUNS.value:
      if name.startswith('jax'):
        check_resumable(os.path.join(workroot, f'{name}_{seed}'), steps)
  splits = export_data.read_data(config)
  if common_flags.TORCH_THREADS.value:
    torch.set_num_threads(common_flags.TORCH_THREADS.value)
  record = {
      'benchmark': 'compare_accuracy', **run_environment(), 'torch': torch.__version__,
      'torch_device': _TORCH_DEVICE.value, 'torch_threads': torch.get_num_threads(),
      'config': dataclasses.asdict(config), 'runs': []}
  for seed in map(int, common_flags.LABEL_SEEDS.value):
    for name in _RUNS.value:
      framework, mode = name.split('_')
      # Both seeds vary: the spread holds the labeled subset's and the initialisation's.
      run_config = config.replace(label_seed=seed, seed=seed, mode=mode)
      data = export_data.semi_supervised_data(run_config, splits)
      if framework == 'jax':
        # SIGTERM or Ctrl-C saves the JAX run where it is; a torch run cannot resume.
        with preemption.stop_on_signals() as stop_requested:
          result = run_jax(run_config, data, steps, os.path.join(workroot, f'{name}_{seed}'),
                           stop_requested)
        if result is None:
          print(f'{name} of label seed {seed} stopped and saved; the same command resumes it.',
                file=sys.stderr)
          return
      else:
        result = run_torch(run_config, data, steps, _TORCH_DEVICE.value)
      record['runs'].append({'run': name, 'label_seed': seed, 'seed': seed, **result})
      print(json.dumps(record['runs'][-1]), flush=True)
      write(record, out_dir)
  print(write(record, out_dir))


if __name__ == '__main__':
  ssgan_main.define_flags()
  common_flags.run(main)
