"""Class and probability for image files, from a run's checkpoint (the dataset is not needed).

  python -m ssgan_jax.predict --workdir=/tmp/mnist100 digit.png other.png

Each image is fitted to the model as training reads images: resized (antialiased) to the
model's input size, and grayscale made RGB for an RGB model. A file that cannot be read, or
an image the model cannot take (RGB for a grayscale model, a mode other than 8-bit L or RGB),
stops it with one line naming the file, and exit code 2.
"""
from absl import flags
import numpy as np
from PIL import Image

from ssgan_jax.command_line import cli
from ssgan_jax import config as config_lib

FLAGS = flags.FLAGS
# PIL image modes a model of each channel count takes (grayscale is made RGB for RGB models).
_MODES = {1: ('L',), 3: ('RGB', 'L')}


class ImageError(ValueError):
  """An image file that cannot be read or does not fit the model."""


def read_image(path: str, shape: tuple) -> np.ndarray:
  """The file as a uint8 HxWxC array of `shape`, fitted as training fits images
  (input_pipeline.fit_image); ImageError for a file the model cannot take."""
  from ssgan_jax.data import input_pipeline  # Heavy (TensorFlow): after the flag checks.
  channels = shape[-1]
  try:
    with Image.open(path) as image:
      image.load()
  except (OSError, ValueError) as e:
    raise ImageError(f'{path}: cannot be read as an image ({type(e).__name__})') from None
  allowed = _MODES[channels]
  if image.mode not in allowed:
    raise ImageError(f'{path}: PIL mode {image.mode}; the model takes {channels}-channel 8-bit '
                     f'images (mode {" or ".join(allowed)})')
  pixels = np.asarray(image, np.uint8).reshape(image.size[1], image.size[0], -1)
  return np.asarray(input_pipeline.fit_image(pixels, shape))


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
