"""Small datasets that ship with the code, so that a first run needs no download.

- `rings`: two concentric noisy rings of 2-D points, one class each (float32 vectors).
- `digits`: scikit-learn's bundled 8x8 handwritten digits, 1797 images, as uint8 8x8x1.

Each is made deterministically, and split into train and test by a fixed seed.
"""
import dataclasses
import functools
from typing import Callable

import numpy as np

_SPLIT_SEED = 0


@dataclasses.dataclass(frozen=True)
class EmbeddedDataset:
  """A dataset made in memory: (train, test) splits of (examples, int32 labels)."""
  num_classes: int
  example_shape: tuple
  train_size: int
  make: Callable[[], dict]  # -> {'train': (x, y), 'test': (x, y)}


RINGS_RADII = (0.35, 0.8)
RINGS_NOISE = 0.06
_RINGS_TRAIN, _RINGS_TEST = 4000, 1000


def make_rings(num_points: int, seed: int) -> tuple[np.ndarray, np.ndarray]:
  """Points on two rings (radii RINGS_RADII, Gaussian noise RINGS_NOISE); label = ring."""
  rng = np.random.default_rng(seed)
  labels = rng.integers(0, 2, num_points).astype(np.int32)
  angles = rng.uniform(0, 2 * np.pi, num_points)
  radii = np.asarray(RINGS_RADII)[labels]
  points = radii[:, None] * np.stack([np.cos(angles), np.sin(angles)], -1)
  points += RINGS_NOISE * rng.standard_normal(points.shape)
  return points.astype(np.float32), labels


def _rings() -> dict:
  return {'train': make_rings(_RINGS_TRAIN, seed=1), 'test': make_rings(_RINGS_TEST, seed=2)}


_DIGITS_TEST = 497  # 1300 train, 497 test


def _digits() -> dict:
  from sklearn import datasets  # Imported here: only this dataset needs it.
  digits = datasets.load_digits()
  # Pixel values are 0..16; spread them over uint8 like the TFDS images.
  images = np.round(digits.images * (255 / 16)).astype(np.uint8)[..., None]
  labels = digits.target.astype(np.int32)
  order = np.random.default_rng(_SPLIT_SEED).permutation(len(labels))
  test, train = np.sort(order[:_DIGITS_TEST]), np.sort(order[_DIGITS_TEST:])
  return {'train': (images[train], labels[train]), 'test': (images[test], labels[test])}


DATASETS = {
    'rings': EmbeddedDataset(num_classes=2, example_shape=(2,), train_size=_RINGS_TRAIN,
                             make=functools.cache(_rings)),
    'digits': EmbeddedDataset(num_classes=10, example_shape=(8, 8, 1),
                              train_size=1797 - _DIGITS_TEST, make=functools.cache(_digits)),
}
