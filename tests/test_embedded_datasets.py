"""The embedded datasets, representative label selection and the progress display."""
import io
import re

from absl import logging as absl_logging
import numpy as np
import pytest

from ssgan_jax.data import embedded_datasets, input_pipeline, label_selection
from ssgan_jax.training import progress
from ssgan_jax.config import Config, ConfigError


def test_rings_are_two_noisy_rings_one_class_each():
  points, labels = embedded_datasets.DATASETS['rings'].make()['train']
  assert points.shape == (4000, 2) and points.dtype == np.float32
  radius = np.linalg.norm(points, axis=1)
  for c, expected in enumerate(embedded_datasets.RINGS_RADII):
    assert abs(np.median(radius[labels == c]) - expected) < 0.02
    assert 0.4 < np.mean(labels == c) < 0.6
  # Deterministic, and test is not a copy of train.
  again, _ = embedded_datasets.make_rings(4000, seed=1)
  np.testing.assert_array_equal(points, again)
  test_points, _ = embedded_datasets.DATASETS['rings'].make()['test']
  assert not np.isin(test_points[:, 0], points[:, 0]).any()


def test_digits_load_through_the_pipeline_with_the_flagfile_settings():
  config = Config(dataset='digits', num_labeled=50, num_validation=200)
  info = input_pipeline.dataset_info(config)
  assert (info.num_classes, info.image_shape, info.train_size) == (10, (8, 8, 1), 1300)
  data = input_pipeline.load(config, info)
  assert data.labeled_images.shape == (50, 8, 8, 1) and data.labeled_images.dtype == np.uint8
  assert np.bincount(data.labeled_labels).tolist() == [5] * 10
  assert len(data.unlabeled_images) == 1100 and len(data.test_labels) == 497
  assert data.unlabeled_images.max() == 255


@pytest.mark.parametrize('changes,expected', [
    ({'dataset': 'rings'}, '--model=mlp: rings holds vectors; use --model=mlp_points'),
    ({'dataset': 'digits', 'model': 'mlp_points'},
     '--model=mlp_points: digits holds images; use --model=mlp|conv_small|conv_large'),
    ({'dataset': 'rings', 'model': 'mlp_points', 'num_labeled': 5},
     '--num_labeled=5: must be a multiple of the class count (2)'),
])
def test_embedded_datasets_check_the_config(changes, expected):
  with pytest.raises(ConfigError, match=re.escape(expected)):
    input_pipeline.dataset_info(Config(num_labeled=10, num_validation=100).replace(**changes))


def test_representative_labels_are_the_examples_nearest_each_cluster_centre():
  rng = np.random.default_rng(0)
  # Class c has three tight blobs; a representative pick takes one example from each blob.
  centres = rng.normal(size=(2, 3, 5)) * 10
  labels = np.repeat([0, 1], 300)
  blob = np.tile(np.repeat([0, 1, 2], 100), 2)
  examples = (centres[labels, blob] + 0.1 * rng.normal(size=(600, 5))).astype(np.float32)
  chosen = label_selection.representative(examples, labels, per_class=3, seed=0)
  assert len(chosen) == 6 and len(set(chosen)) == 6
  for c in (0, 1):
    picked = chosen[labels[chosen] == c]
    assert sorted(blob[picked]) == [0, 1, 2]
    for i in picked:
      assert np.linalg.norm(examples[i] - centres[c, blob[i]]) < 0.5
  np.testing.assert_array_equal(chosen,
                                label_selection.representative(examples, labels, 3, seed=0))


def test_representative_selection_through_the_pipeline_differs_from_random():
  config = Config(dataset='digits', num_labeled=20, num_validation=200)
  info = input_pipeline.dataset_info(config)
  random_data = input_pipeline.load(config, info)
  representative = input_pipeline.load(config.replace(label_selection='representative'), info)
  assert np.bincount(representative.labeled_labels).tolist() == [2] * 10
  assert not np.array_equal(random_data.labeled_images, representative.labeled_images)
  # Labeled images come from the unlabeled pool, never from validation.
  pool = {im.tobytes() for im in representative.unlabeled_images}
  assert all(im.tobytes() in pool for im in representative.labeled_images)


class _Stream(io.StringIO):

  def __init__(self, tty: bool):
    super().__init__()
    self.tty = tty

  def isatty(self):
    return self.tty


def test_progress_bar_on_a_terminal_shows_losses_and_validation():
  stream = _Stream(tty=True)
  bar = progress.Progress(num_steps=10, start_step=0, every=5, stream=stream)
  for step in range(1, 11):
    bar.record({'disc_loss': 0.5, 'gen_loss': 0.25, 'steps_per_sec': 3.0})
    if step == 5:
      bar.record({'validation_accuracy': 0.875})
    bar.update(step)
  bar.close()
  text = stream.getvalue()
  assert '10/10' in text and 'step/s' in text
  assert 'D=0.5' in text and 'G=0.25' in text and 'val=0.875' in text


def test_log_lines_during_a_bar_are_written_above_it(monkeypatch):
  stream = _Stream(tty=True)
  handler = absl_logging.get_absl_handler().python_handler
  monkeypatch.setattr(handler, 'stream', stream)
  bar = progress.Progress(num_steps=10, start_step=0, every=5, stream=stream)
  bar.update(3)
  handler.stream.write('a log line\n')
  bar.close()
  assert handler.stream is stream
  before, after = stream.getvalue().split('a log line\n')
  assert before.endswith('\r') and '/10 ' in after  # the bar was cleared, then drawn below


def test_progress_lines_off_a_terminal_and_nothing_when_quiet(caplog):
  line_bar = progress.Progress(num_steps=10, start_step=4, every=5, stream=_Stream(tty=False))
  line_bar.record({'disc_loss': 0.5, 'validation_accuracy': 0.9})
  assert line_bar.line(10).startswith('step 10/10 (100%), ')
  assert 'ETA 0s D 0.5 val 0.9' in line_bar.line(10)
  quiet_stream = _Stream(tty=True)
  quiet_bar = progress.Progress(num_steps=10, start_step=0, every=5, quiet=True,
                                stream=quiet_stream)
  with caplog.at_level('INFO'):
    for step in range(5, 11):
      line_bar.update(step)
      quiet_bar.update(step)
  quiet_bar.close()
  lines = [r.getMessage() for r in caplog.records if r.getMessage().startswith('step ')]
  assert [line.split(' ')[1] for line in lines] == ['5/10', '10/10']
  assert quiet_stream.getvalue() == ''
