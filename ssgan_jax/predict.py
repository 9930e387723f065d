"""Class and probability for image files, from a run's checkpoint (the dataset is not needed).

  python -m ssgan_jax.predict --workdir=/tmp/mnist100 digit.png other.png

Images must have the size and channels of the dataset the run trained on (e.g. 28x28
grayscale for MNIST); anything else stops with one line naming the file, and exit code 2.
"""
from absl import flags
import numpy as np
from PIL import Image

from ssgan_jax.command_line import cli
from ssgan_jax import config as config_lib

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
  """'path<TAB>class<TAB>probability p' per file; ImageError if any file does not fit."""
  images = np.stack([read_image(path, run.info.image_shape) for path in paths])
  probabilities = run.class_probabilities(images, run.config.eval_params)
  return [f'{path}\t{run.class_name(int(p.argmax()))}\tprobability {p.max():.4f}'
          for path, p in zip(paths, probabilities)]


def main(argv: list[str]) -> None:
  paths = argv[1:]
  workdir = cli.require_workdir(argv, allow_arguments=True)
  if not paths:
    cli.fail('no image files given; usage: predict --workdir=DIR IMAGE...')
  from ssgan_jax.training import trained  # Heavy: after argument checks.
  try:
    run = trained.load(workdir, FLAGS.step)
    if len(run.info.image_shape) != 3:
      raise config_lib.ConfigError('workdir', workdir,
                                   f'holds a model of {run.config.dataset}, which is not images')
    lines = predictions(run, paths)
  except (config_lib.ConfigError, ImageError) as e:
    cli.fail(str(e))
  print('\n'.join(lines), flush=True)


if __name__ == '__main__':
  cli.run(main, __doc__, cli.define_checkpoint_flags)
