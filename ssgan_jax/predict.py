"""Class and probability for image files, from a run's checkpoint.

  python -m ssgan_jax.predict --workdir=/tmp/mnist100 digit.png other.png

Images must have the size and channels of the dataset the run trained on (e.g. 28x28
grayscale for MNIST); anything else stops with one line naming the file, and exit code 2.
"""
from absl import app, flags, logging
import numpy as np
from PIL import Image

from ssgan_jax import config as config_lib
from ssgan_jax import evaluate
from ssgan_jax import main as ssgan_main
from ssgan_jax import xla_cpu

FLAGS = flags.FLAGS
_MODES = {1: 'L', 3: 'RGB'}  # PIL image mode for each channel count


class ImageError(ValueError):
  """An image file that cannot be read or does not fit the model."""


def read_image(path: str, shape: tuple) -> np.ndarray:
  """The file as a uint8 HxWxC array of `shape`; ImageError otherwise."""
  height, width, channels = shape
  try:
    with Image.open(path) as image:
      image.load()
  except (OSError, ValueError) as e:
    raise ImageError(f'{path}: cannot be read as an image ({type(e).__name__})') from None
  if image.mode != _MODES.get(channels):
    raise ImageError(f'{path}: PIL mode {image.mode}; the model takes {channels}-channel 8-bit '
                     f'images (mode {_MODES.get(channels)})')
  if image.size != (width, height):
    raise ImageError(f'{path}: is {image.size[0]}x{image.size[1]}; the model takes '
                     f'{width}x{height}')
  return np.asarray(image, np.uint8).reshape(shape)


def predictions(run, paths: list[str]) -> list[str]:
  """'path<TAB>class k<TAB>probability p' per file; ImageError if any file does not fit."""
  images = np.stack([read_image(path, run.info.image_shape) for path in paths])
  probabilities = run.class_probabilities(images, run.config.eval_params)
  return [f'{path}\tclass {int(p.argmax())}\tprobability {p.max():.4f}'
          for path, p in zip(paths, probabilities)]


def main(argv: list[str]) -> None:
  xla_cpu.apply_entry_point_choice()
  paths = argv[1:]
  if not FLAGS.workdir:
    ssgan_main.fail('--workdir is required')
  if not paths:
    ssgan_main.fail('no image files given; usage: predict --workdir=DIR IMAGE...')
  logging.get_absl_handler().addFilter(ssgan_main._QuietOrbax())  # pylint: disable=protected-access
  from ssgan_jax import trained  # Heavy: after argument checks.
  try:
    run = trained.load(FLAGS.workdir, FLAGS.step, FLAGS.data_dir)
    if len(run.info.image_shape) != 3:
      raise config_lib.ConfigError('workdir', FLAGS.workdir,
                                   f'holds a model of {run.config.dataset}, which is not images')
    lines = predictions(run, paths)
  except (config_lib.ConfigError, ImageError) as e:
    ssgan_main.fail(str(e))
  print('\n'.join(lines), flush=True)


if __name__ == '__main__':
  evaluate.define_checkpoint_flags()
  app.run(main, flags_parser=ssgan_main.parse_flags)
