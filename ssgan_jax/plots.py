"""Pictures of a run: generated samples, training curves, decision boundaries, confusion matrix.

Each picture is made as an HxWx3 uint8 array, which `save_png` writes to disk and clu's
writer sends to TensorBoard.
"""
import json
import os

import jax
import matplotlib

matplotlib.use('Agg')  # Files only; no display needed.
from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np
from PIL import Image

from ssgan_jax import models

GRID = 8            # samples per side of the image grid
NUM_POINTS = 500    # generated points in a picture of a vector dataset
MIN_TILE = 48       # image tiles are enlarged to at least this many pixels
_SAMPLE_SEED = 12345
_DPI = 100


def save_png(rgb: np.ndarray, path: str) -> None:
  os.makedirs(os.path.dirname(path) or '.', exist_ok=True)
  Image.fromarray(rgb).save(path)


def _figure_rgb(fig) -> np.ndarray:
  fig.canvas.draw()
  rgb = np.asarray(fig.canvas.buffer_rgba())[..., :3].copy()
  plt.close(fig)
  return rgb


def generate(setup, state, num: int) -> np.ndarray:
  """`num` samples of G from a fixed latent batch, in the model's input range."""
  keys = jax.random.split(jax.random.key(_SAMPLE_SEED), num)
  samples, _ = setup.generator(None).apply(
      {'params': state.gen_params, 'batch_stats': state.gen_batch_stats},
      models.sample_latent(keys), mutable=['batch_stats'])
  return np.asarray(samples)


def image_grid(images_NxHxWxC: np.ndarray, pixel_range) -> np.ndarray:
  """Images in `pixel_range` tiled GRID per row, enlarged to MIN_TILE pixels, 2-pixel gaps."""
  low, high = pixel_range
  images = np.clip((images_NxHxWxC - low) / (high - low), 0, 1)
  if images.shape[-1] == 1:
    images = np.repeat(images, 3, -1)
  n, h, w, _ = images.shape
  zoom = max(1, -(-MIN_TILE // h))
  images = images.repeat(zoom, 1).repeat(zoom, 2)
  rows = -(-n // GRID)
  th, tw, gap = h * zoom, w * zoom, 2
  grid = np.ones((rows * (th + gap) + gap, GRID * (tw + gap) + gap, 3))
  for i, image in enumerate(images):
    r, c = divmod(i, GRID)
    grid[gap + r * (th + gap):gap + r * (th + gap) + th,
         gap + c * (tw + gap):gap + c * (tw + gap) + tw] = image
  return (grid * 255).round().astype(np.uint8)


def points_picture(generated_Nx2: np.ndarray, real_Nx2: np.ndarray, title: str) -> np.ndarray:
  """Generated points over real ones."""
  fig, ax = plt.subplots(figsize=(5, 5), dpi=_DPI)
  ax.scatter(*real_Nx2.T, s=4, c='0.75', label='real (unlabeled)')
  ax.scatter(*generated_Nx2.T, s=6, c='tab:red', marker='x', label='generated')
  ax.set_aspect('equal')
  ax.set_title(title)
  ax.legend(loc='upper right', fontsize=8)
  return _figure_rgb(fig)


def samples_picture(setup, state, real_examples: np.ndarray, step: int) -> np.ndarray:
  """G's samples: an image grid, or for vectors a scatter over the real points."""
  if setup.family.pixel_range is None:
    return points_picture(generate(setup, state, NUM_POINTS), real_examples[:2000],
                          f'generated points, step {step}')
  return image_grid(generate(setup, state, GRID * GRID), setup.family.pixel_range)


def write_samples(writer, workdir: str, step: int, setup, state, real_examples) -> str:
  """Saves workdir/samples/step_<step>.png and sends it to TensorBoard; returns the path."""
  rgb = samples_picture(setup, state, real_examples, step)
  path = os.path.join(workdir, 'samples', f'step_{step:08d}.png')
  save_png(rgb, path)
  writer.write_images(step, {'samples': rgb[None]})
  return path


def read_metrics(workdir: str) -> list[dict]:
  with open(os.path.join(workdir, 'metrics.jsonl')) as f:
    return [json.loads(line) for line in f if line.strip()]


def curves_picture(records: list[dict]) -> np.ndarray:
  """Losses (left) and accuracies (right) against the step."""
  fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4), dpi=_DPI)
  for ax, names in ((loss_ax, ('disc_loss', 'sup_loss', 'unsup_loss', 'gen_loss')),
                    (acc_ax, ('train_accuracy', 'validation_accuracy'))):
    for name in names:
      points = [(r['step'], r[name]) for r in records if name in r]
      if points:
        ax.plot(*zip(*points), marker='.' if len(points) < 30 else None, label=name)
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
    ax.legend(fontsize=8)
  loss_ax.set_title('losses')
  acc_ax.set_title('accuracy')
  fig.tight_layout()
  return _figure_rgb(fig)


def write_curves(writer, workdir: str, step: int) -> str:
  """Saves workdir/curves.png from metrics.jsonl and sends it to TensorBoard."""
  rgb = curves_picture(read_metrics(workdir))
  path = os.path.join(workdir, 'curves.png')
  save_png(rgb, path)
  writer.write_images(step, {'curves': rgb[None]})
  return path


def decision_boundaries_picture(panels, data, extent: float = 1.25, grid: int = 200) -> np.ndarray:
  """Side by side, for each (title, Trained) of a 2-D dataset: p(class 1) over the plane,
  the labeled points (by class), the unlabeled points and, where there is a G, its samples."""
  axis = np.linspace(-extent, extent, grid, dtype=np.float32)
  plane = np.stack(np.meshgrid(axis, axis), -1).reshape(-1, 2)
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels), 5), dpi=_DPI, squeeze=False)
  for ax, (title, trained) in zip(axes[0], panels):
    probability = trained.class_probabilities(plane)[:, 1].reshape(grid, grid)
    ax.contourf(axis, axis, probability, levels=np.linspace(0, 1, 11), cmap='coolwarm', alpha=0.5)
    ax.contour(axis, axis, probability, levels=[0.5], colors='k', linewidths=1)
    ax.scatter(*data.unlabeled_images[:2000].T, s=3, c='0.5', label='unlabeled')
    if trained.state.gen_params is not None:
      ax.scatter(*generate(trained.setup, trained.state, NUM_POINTS).T, s=8, c='tab:green',
                 marker='x', label='generated')
    for c, color in ((0, 'tab:blue'), (1, 'tab:red')):
      ax.scatter(*data.labeled_images[data.labeled_labels == c].T, s=120, c=color,
                 edgecolors='k', label=f'labeled, class {c}')
    ax.set_xlim(-extent, extent)
    ax.set_ylim(-extent, extent)
    ax.set_aspect('equal')
    ax.set_title(title)
    ax.legend(loc='upper right', fontsize=7)
  fig.tight_layout()
  return _figure_rgb(fig)


def confusion_picture(matrix_KxK: np.ndarray, title: str) -> np.ndarray:
  """The confusion matrix (rows: true class, columns: predicted) with counts."""
  k = len(matrix_KxK)
  fig, ax = plt.subplots(figsize=(1 + 0.6 * k, 1 + 0.6 * k), dpi=_DPI)
  ax.imshow(matrix_KxK, cmap='Blues')
  for (i, j), count in np.ndenumerate(matrix_KxK):
    ax.text(j, i, str(count), ha='center', va='center', fontsize=8,
            color='white' if count > matrix_KxK.max() / 2 else 'black')
  ax.set_xticks(range(k))
  ax.set_yticks(range(k))
  ax.set_xlabel('predicted')
  ax.set_ylabel('true')
  ax.set_title(title, fontsize=9)
  fig.tight_layout()
  return _figure_rgb(fig)
