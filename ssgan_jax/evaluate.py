"""Test accuracy of a run's checkpoint: raw and moving-average weights; per class and confusion
matrix with the parameters the run evaluates with (--eval_params). The test split is the run's
own (--test_split), its images fitted to the model as in training.

  python -m ssgan_jax.evaluate --workdir=/tmp/mnist100 [--step=N] [--data_dir=...]

Prints the results and writes <workdir>/evaluation/step_<N>.json and confusion_step_<N>.png
(or, where the workdir cannot be written, says so and writes nothing).
"""
import json
import os

from absl import flags, logging
import numpy as np
from sklearn import metrics

from ssgan_jax.command_line import cli
from ssgan_jax import config as config_lib

FLAGS = flags.FLAGS
_NAMES = {'ema': 'EMA', 'raw': 'raw'}


def define_flags() -> None:
  cli.define_checkpoint_flags()
  flags.DEFINE_string('data_dir', None, "TFDS data_dir; default: the run's own.")


def evaluate(workdir: str, step=None, data_dir=None) -> dict:
  """Accuracy (EMA and raw), per-class accuracy and confusion matrix (the run's --eval_params)
  on the run's test split; saved in workdir/evaluation where it can be written."""
  from ssgan_jax.data import input_pipeline
  from ssgan_jax.training import plots, trained  # Heavy: after flag checks.
  run = trained.load(workdir, step, data_dir)
  images, labels = input_pipeline.read_split(run.config, run.info, 'test')
  predictions = {which: run.class_probabilities(images, which).argmax(-1)
                 for which in config_lib.EVAL_PARAMS}
  scored = run.config.eval_params
  confusion = metrics.confusion_matrix(labels, predictions[scored],
                                       labels=range(run.info.num_classes))
  result = {
      'workdir': os.path.abspath(workdir), 'step': run.step, 'dataset': run.config.dataset,
      'num_test': len(labels),
      'class_names': [run.class_name(k) for k in range(run.info.num_classes)],
      **{f'test_accuracy_{which}': float(np.mean(p == labels)) for which, p in predictions.items()},
      'per_class_params': scored,
      'per_class_accuracy': (np.diag(confusion) / np.maximum(confusion.sum(1), 1)).tolist(),
      'confusion_matrix': confusion.tolist(),
  }
  out_dir = os.path.join(workdir, 'evaluation')
  try:
    os.makedirs(out_dir, exist_ok=True)
    with open(os.path.join(out_dir, f'step_{run.step}.json'), 'w') as f:
      json.dump(result, f, indent=1)
  except OSError as e:
    logging.warning('Not saved: %s cannot be written (%s).', out_dir, e.strerror)
    return result
  title = (f'{run.config.dataset}, step {run.step}: test accuracy '
           f'{100 * result[f"test_accuracy_{scored}"]:.2f} % ({_NAMES[scored]})')
  plots.save_png(plots.confusion_picture(confusion, title),
                 os.path.join(out_dir, f'confusion_step_{run.step}.png'))
  result['saved_in'] = out_dir
  return result


def report(result: dict) -> str:
  """The result as text: accuracies, per-class accuracy and the confusion matrix."""
  confusion = np.asarray(result['confusion_matrix'])
  names = result['class_names']
  scored = _NAMES[result['per_class_params']]
  width = max(5, len(str(confusion.max())) + 1)
  lines = [f"{result['dataset']}, step {result['step']}, {result['num_test']} test examples",
           f"test accuracy: {100 * result['test_accuracy_ema']:.2f} % (EMA), "
           f"{100 * result['test_accuracy_raw']:.2f} % (raw)",
           f'per-class accuracy ({scored}): ' + ', '.join(
               f'{name}: {100 * a:.1f} %' for name, a in zip(names, result['per_class_accuracy'])),
           f'confusion matrix ({scored}; rows true, columns predicted):',
           'true\\pred'.rjust(9) + ''.join(str(k).rjust(width) for k in range(len(confusion)))]
  lines += [str(k).rjust(9) + ''.join(str(n).rjust(width) for n in row)
            for k, row in enumerate(confusion)]
  if any(name != f'class {k}' for k, name in enumerate(names)):
    lines.append('classes: ' + ', '.join(f'{k} {name}' for k, name in enumerate(names)))
  if 'saved_in' in result:
    lines.append(f"saved: {result['saved_in']}/")
  return '\n'.join(lines)


def main(argv: list[str]) -> None:
  workdir = cli.require_workdir(argv)
  cli.import_tensorflow_quietly()
  try:
    result = evaluate(workdir, FLAGS.step, FLAGS.data_dir)
  except config_lib.ConfigError as e:
    cli.fail(str(e))
  print(report(result), flush=True)


if __name__ == '__main__':
  cli.run(main, __doc__, define_flags)
