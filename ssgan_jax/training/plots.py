"""Pictures of a run: generated samples, training curves, decision boundaries, confusion matrix.

Each picture is made as an HxWx3 uint8 array, which `save_png` writes to disk and clu's
writer sends to TensorBoard. The `*_figure` functions return the matplotlib figures behind
the curves, the point frames and the decision boundaries, for tests to inspect.
"""
import json
import os

import jax
import matplotlib

matplotlib.use('Agg')  # Files only; no display needed.
from matplotlib import lines  # pylint: disable=g-import-not-at-top
from matplotlib import pyplot as plt  # pylint: disable=g-import-not-at-top
import numpy as np
from PIL import Image

from ssgan_jax.networks import models

GRID = 8            # samples per side of the image grid
NUM_POINTS = 500    # generated points in a picture of a vector dataset
MIN_TILE = 48       # image tiles are enlarged to at least this many pixels
POINTS_MARGIN = 0.4  # a points picture's axes reach this fraction past the real points
PROBABILITY_LABEL = 'p(class 1)'
BOUNDARY_LABEL = 'p(class 1) = 0.5'
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


def point_limits(real_Nx2: np.ndarray) -> tuple[float, float]:
  """The axis range of a points picture, for x and y alike: the real points' square extent
  widened by POINTS_MARGIN, so that every frame of a run has the same axes."""
  low, high = real_Nx2.min(0), real_Nx2.max(0)
  centre, half = (low + high) / 2, (high - low).max() / 2 * (1 + POINTS_MARGIN)
  return float(centre.mean() - half), float(centre.mean() + half)


def points_figure(generated_Nx2: np.ndarray, real_Nx2: np.ndarray, title: str):
  """Generated points over real ones, on axes fixed by `point_limits(real_Nx2)`; the title
  counts the generated points that fall outside them."""
  low, high = point_limits(real_Nx2)
  outside = int(np.any((generated_Nx2 < low) | (generated_Nx2 > high), axis=1).sum())
  fig, ax = plt.subplots(figsize=(5, 5), dpi=_DPI)
  ax.scatter(*real_Nx2.T, s=4, c='0.75', label='real (unlabeled)')
  ax.scatter(*generated_Nx2.T, s=6, c='tab:red', marker='x', label='generated')
  ax.set_xlim(low, high)
  ax.set_ylim(low, high)
  ax.set_aspect('equal')
  ax.set_title(f'{title} ({outside} of {len(generated_Nx2)} outside)' if outside else title)
  ax.legend(loc='upper right', fontsize=8)
  return fig


def points_picture(generated_Nx2: np.ndarray, real_Nx2: np.ndarray, title: str) -> np.ndarray:
  """`points_figure` as an RGB array."""
  return _figure_rgb(points_figure(generated_Nx2, real_Nx2, title))


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


def run_name(config, workdir: str) -> str:
  """What a picture calls a run: its workdir's base name, dataset, mode and model."""
  return (f'{os.path.basename(os.path.normpath(workdir))} '
          f'({config.dataset}, {config.mode}, {config.model})')


def _points(records: list[dict], name: str) -> list[tuple[int, float]]:
  """(step, value) of each record that has `name`."""
  return [(r['step'], r[name]) for r in records if name in r]


def curves_title(records: list[dict], name: str) -> str:
  """`name` and the last validation and test accuracies recorded, with their steps."""
  parts = []
  for metric, label in (('validation_accuracy', 'validation'), ('test_accuracy', 'test')):
    if points := _points(records, metric):
      step, value = points[-1]
      parts.append(f'{label} accuracy {100 * value:.1f} % (step {step})')
  return f'{name}: {", ".join(parts)}' if parts else name


def curves_figure(records: list[dict], name: str):
  """Losses (left) and accuracies (right) against the step, titled by `curves_title`; test
  accuracies are stars at their steps."""
  fig, (loss_ax, acc_ax) = plt.subplots(1, 2, figsize=(11, 4.3), dpi=_DPI, layout='constrained')
  for ax, names in ((loss_ax, ('disc_loss', 'sup_loss', 'unsup_loss', 'gen_loss')),
                    (acc_ax, ('train_accuracy', 'validation_accuracy'))):
    for metric in names:
      if points := _points(records, metric):
        ax.plot(*zip(*points), marker='.' if len(points) < 30 else None, label=metric)
    ax.set_xlabel('step')
    ax.grid(alpha=0.3)
  if points := _points(records, 'test_accuracy'):
    acc_ax.plot(*zip(*points), ls='', marker='*', ms=12, c='k', label='test_accuracy')
  for ax in (loss_ax, acc_ax):
    ax.legend(fontsize=8)
  loss_ax.set_ylabel('loss')
  acc_ax.set_ylabel('accuracy')
  fig.suptitle(curves_title(records, name), fontsize=11)
  return fig


def curves_picture(records: list[dict], name: str) -> np.ndarray:
  """`curves_figure` as an RGB array."""
  return _figure_rgb(curves_figure(records, name))


def write_curves(writer, workdir: str, step: int, name: str) -> str:
  """Saves workdir/curves.png from metrics.jsonl, titled `name`, and sends it to TensorBoard."""
  rgb = curves_picture(read_metrics(workdir), name)
  path = os.path.join(workdir, 'curves.png')
  save_png(rgb, path)
  writer.write_images(step, {'curves': rgb[None]})
  return path


def decision_boundaries_figure(panels, data, extent: float = 1.25, grid: int = 200):
  """Side by side, for each (title, Trained) of a 2-D dataset: p(class 1) over the plane with
  its colour scale, the p = 0.5 boundary, the labeled points (by class), the unlabeled points
  and, where there is a G, its samples."""
  axis = np.linspace(-extent, extent, grid, dtype=np.float32)
  plane = np.stack(np.meshgrid(axis, axis), -1).reshape(-1, 2)
  fig, axes = plt.subplots(1, len(panels), figsize=(5 * len(panels) + 1, 5), dpi=_DPI,
                           squeeze=False, layout='constrained')
  for ax, (title, trained) in zip(axes[0], panels):
    probability = trained.class_probabilities(plane)[:, 1].reshape(grid, grid)
    filled = ax.contourf(axis, axis, probability, levels=np.linspace(0, 1, 11), cmap='coolwarm',
                         alpha=0.5)
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
    handles, labels = ax.get_legend_handles_labels()
    # A contour line has no legend entry of its own: a line of its style stands in.
    boundary = lines.Line2D([], [], color='k', linewidth=1)
    ax.legend([boundary, *handles], [BOUNDARY_LABEL, *labels], loc='upper right', fontsize=7)
  fig.colorbar(filled, ax=axes[0].tolist(), label=PROBABILITY_LABEL, shrink=0.8)
  return fig


def decision_boundaries_picture(panels, data) -> np.ndarray:
  """`decision_boundaries_figure` as an RGB array."""
  return _figure_rgb(decision_boundaries_figure(panels, data))


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
