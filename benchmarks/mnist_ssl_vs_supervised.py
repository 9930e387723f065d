"""MNIST with 100 labels: the semi-supervised GAN against supervised-only on the same labeled subset.

Both runs use experiments/mnist.flags with the same steps, seeds and labeled subset; only
--mode differs. Prints and saves a JSON record and a markdown table (with validation-accuracy
curves) under --out_dir.

  python -m benchmarks.mnist_ssl_vs_supervised --data_dir=../shared/tfds --epochs=20
"""
import json
import os
import pathlib
import tempfile
from typing import Sequence

from absl import flags

from ssgan_jax import main as ssgan_main
from ssgan_jax.training import train
from benchmarks import common_flags, record_files
from benchmarks.run_environment import run_environment

REPO = pathlib.Path(__file__).resolve().parents[1]
MNIST_TRAIN_SIZE = 60_000
_DATA_DIR = flags.DEFINE_string('data_dir', None, 'TFDS data_dir holding mnist.')
_EPOCHS = flags.DEFINE_float('epochs', 20, 'Passes over the unlabeled images.')
_LABEL_SEED = flags.DEFINE_integer('label_seed', 0, 'Labeled subset seed.')
_EMA_DECAY = flags.DEFINE_float('ema_decay', 0.999, 'EMA decay (the flagfile has 0.9999, '
                                'tuned for 300 epochs).')


def run(mode: str, workdir: str, extra_args: Sequence[str] = ()) -> dict:
  """One training run; returns its summary plus its validation curve and, in ssl mode, D's
  unlabeled loss at each logged step (means over the steps since the last log).

  `extra_args` are flags that override the flagfile and this benchmark's flags.
  """
  args = [f'--flagfile={REPO / "experiments" / "mnist.flags"}', f'--mode={mode}',
          f'--label_seed={_LABEL_SEED.value}', f'--ema_decay={_EMA_DECAY.value}']
  if _DATA_DIR.value:
    args.append(f'--data_dir={_DATA_DIR.value}')
  args += extra_args
  config, _ = ssgan_main.parse_config(args)
  unlabeled = MNIST_TRAIN_SIZE - config.num_validation
  steps = int(round(_EPOCHS.value * unlabeled / config.batch_size))
  config = config.replace(num_steps=steps, eval_every=max(1, steps // 10))
  summary = train.train_and_evaluate(config, workdir)
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    lines = [json.loads(line) for line in f]
  curve = [(r['step'], r['validation_accuracy']) for r in lines
           if 'validation_accuracy' in r and 'test_accuracy' not in r]
  unsup_losses = [(r['step'], r['unsup_loss']) for r in lines if 'unsup_loss' in r]
  return {'mode': mode, 'num_steps': steps, **summary, 'validation_curve': curve,
          'unsup_loss_curve': unsup_losses}


def markdown(record: dict) -> str:
  rows = ['| mode | steps | epochs | test accuracy (EMA) | test accuracy (raw) | wall s |',
          '|---|---|---|---|---|---|']
  for r in record['runs']:
    rows.append(f"| {r['mode']} | {r['num_steps']} | {record['epochs']:g} | "
                f"{100 * r['test_accuracy']:.2f} % | {100 * r['test_accuracy_raw']:.2f} % | "
                f"{r['wall_seconds']:.0f} |")
  rows += ['', '| step | ' + ' | '.join(r['mode'] + ' validation accuracy'
                                         for r in record['runs']) + ' |',
           '|---|' + '---|' * len(record['runs'])]
  for points in zip(*(r['validation_curve'] for r in record['runs'])):
    rows.append(f'| {points[0][0]} | ' + ' | '.join(f'{100 * acc:.2f} %' for _, acc in points)
                + ' |')
  return '\n'.join(rows) + '\n'


def main():
  out_dir = common_flags.out_dir('mnist_ssl_vs_supervised')
  os.makedirs(out_dir, exist_ok=True)
  workroot = tempfile.mkdtemp(prefix='mnist_ssl_vs_supervised_', dir=out_dir)
  record = {
      'benchmark': 'mnist_ssl_vs_supervised', 'epochs': _EPOCHS.value,
      'label_seed': _LABEL_SEED.value, 'ema_decay': _EMA_DECAY.value,
      **run_environment(),
      'runs': [run(mode, os.path.join(workroot, mode)) for mode in ('ssl', 'supervised')],
  }
  table = markdown(record)
  stem = os.path.join(out_dir, 'mnist_ssl_vs_supervised')
  record_files.save(stem, record, table)
  print(table)
  print(json.dumps({k: v for k, v in record.items() if k != 'runs'}))


if __name__ == '__main__':
  common_flags.run(main)
