"""Semi-supervised against supervised-only on the same labels, with pictures.

  python -m ssgan_jax.demo --flagfile=experiments/rings.flags --workdir=/tmp/rings_demo

Trains the flagfile's run twice, in <workdir>/supervised and <workdir>/ssl (the same D, labels,
steps and seeds; only --mode differs), prints both test accuracies and, for a 2-D dataset,
draws both decision boundaries side by side in <workdir>/decision_boundaries.png.
"""
import json
import os

from ssgan_jax.command_line import cli
from ssgan_jax import config as config_lib

MODES = (('supervised', 'supervised-only'), ('ssl', 'semi-supervised GAN'))


def run_demo(config: config_lib.Config, workdir: str) -> dict:
  """Trains both modes; returns {mode: summary} and writes the pictures."""
  from ssgan_jax.data import input_pipeline
  from ssgan_jax.training import plots, train, trained  # Heavy: after flag checks.
  summaries = {mode: train.train_and_evaluate(config.replace(mode=mode),
                                              os.path.join(workdir, mode))
               for mode, _ in MODES}
  info = input_pipeline.dataset_info(config)
  if len(info.image_shape) == 1:
    data = input_pipeline.load(config, info)
    panels = [(f'{title}: test accuracy {100 * summaries[mode]["test_accuracy"]:.1f} %',
               trained.load(os.path.join(workdir, mode))) for mode, title in MODES]
    path = os.path.join(workdir, 'decision_boundaries.png')
    plots.save_png(plots.decision_boundaries_picture(panels, data), path)
    print(f'decision boundaries: {path}')
  return summaries


def main(argv: list[str]) -> None:
  workdir = cli.require_workdir(argv)
  try:
    config = cli.resolved_config()
    cli.import_tensorflow_quietly()
    summaries = run_demo(config, workdir)
  except config_lib.ConfigError as e:
    cli.fail(str(e))
  labels = f'{config.num_labeled} labels'
  for mode, title in MODES:
    print(f'{title:>20} ({labels}): test accuracy {100 * summaries[mode]["test_accuracy"]:.1f} %'
          f'  [{os.path.join(workdir, mode)}]')
  print(json.dumps({mode: summaries[mode]['test_accuracy'] for mode, _ in MODES}), flush=True)


if __name__ == '__main__':
  cli.run(main, __doc__)
