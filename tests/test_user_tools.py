"""The demo, the pictures, evaluate and predict, on tiny trained runs shared by the tests."""
import json
import os
import pathlib
import re
import subprocess
import sys
import types

import jax
from matplotlib import pyplot as plt
import numpy as np
import pytest
from PIL import Image

from ssgan_jax import demo, evaluate
from ssgan_jax.command_line import flag_docs
from ssgan_jax.data import embedded_datasets, input_pipeline
from ssgan_jax.networks import models
from ssgan_jax.training import plots
from ssgan_jax import predict
from ssgan_jax.training import train, trained
from ssgan_jax import main as ssgan_main
from ssgan_jax.config import ConfigError

REPO = pathlib.Path(__file__).resolve().parents[1]


def tiny(flagfile: str, *args: str):
  config, _ = ssgan_main.parse_config([f'--flagfile={REPO / "experiments" / flagfile}', '--quiet',
                                       *args])
  return config


def tiny_rings():
  """The rings demo's config, shortened to 400 steps: enough for the semi-supervised run to
  learn the rings (95 % test accuracy on this project's CPU, against 59 % from the 4 labels
  alone)."""
  return tiny('rings.flags', '--num_steps=400', '--eval_every=200', '--log_every=50',
              '--checkpoint_every=200', '--sample_every=200')


@pytest.fixture(scope='module')
def rings_demo(tmp_path_factory):
  workdir = str(tmp_path_factory.mktemp('rings_demo'))
  return workdir, demo.run_demo(tiny_rings(), workdir)


@pytest.fixture(scope='module')
def digits_run(tmp_path_factory):
  """A short supervised digits run (no G to compile): a checkpoint of an image classifier
  that has learned (87 % test accuracy on this project's CPU)."""
  workdir = str(tmp_path_factory.mktemp('digits_run'))
  config = tiny('digits.flags', '--mode=supervised', '--num_labeled=50', '--num_validation=50',
                '--batch_size=50', '--num_steps=60', '--eval_every=60', '--log_every=20',
                '--checkpoint_every=30')
  return workdir, train.train_and_evaluate(config, workdir)


def read_png(path) -> np.ndarray:
  assert os.path.isfile(path), path
  return np.asarray(Image.open(path).convert('RGB'))


def assert_not_blank(rgb: np.ndarray) -> None:
  """More than a background: many pixels differ from the most common colour."""
  flat = rgb.reshape(-1, 3)
  colours, counts = np.unique(flat, axis=0, return_counts=True)
  assert counts.max() < 0.97 * len(flat) and len(colours) > 10


def test_rings_demo_trains_both_modes_and_draws_both_boundaries(rings_demo):
  workdir, summaries = rings_demo
  assert set(summaries) == {'ssl', 'supervised'}
  # Chance is 0.5; the unlabeled points, through the GAN, place the boundary. 400 steps of a
  # GAN end in different places on different CPUs (0.754 against 0.593 supervised-only on
  # one x86 machine, over 0.85 on another), so the bar is a clear gain.
  assert summaries['ssl']['test_accuracy'] > 0.7
  assert summaries['ssl']['test_accuracy'] > summaries['supervised']['test_accuracy'] + 0.1
  for mode, summary in summaries.items():
    assert summary['step'] == 400
    assert_not_blank(read_png(os.path.join(workdir, mode, 'curves.png')))
  boundaries = read_png(os.path.join(workdir, 'decision_boundaries.png'))
  assert boundaries.shape == (500, 1100, 3)
  assert_not_blank(boundaries[:, :500])
  assert_not_blank(boundaries[:, 500:1000])
  assert_not_blank(boundaries[:, 1000:])  # the colour scale
  # Generated points are drawn in G's runs only; pictures of samples likewise.
  assert sorted(os.listdir(os.path.join(workdir, 'ssl', 'samples'))) == [
      'step_00000200.png', 'step_00000400.png']
  assert not os.path.exists(os.path.join(workdir, 'supervised', 'samples'))
  assert read_png(os.path.join(workdir, 'ssl', 'samples', 'step_00000400.png')).shape == (
      500, 500, 3)


def test_curves_label_both_axes_and_name_the_run_with_its_accuracies(rings_demo):
  workdir, summaries = rings_demo
  ssl_dir = os.path.join(workdir, 'ssl')
  records = plots.read_metrics(ssl_dir)
  validation = [r['validation_accuracy'] for r in records if 'validation_accuracy' in r][-1]
  fig = plots.curves_figure(records, 'a run')
  try:
    loss_ax, acc_ax = fig.axes
    assert (loss_ax.get_ylabel(), acc_ax.get_ylabel()) == ('loss', 'accuracy')
    assert fig.get_suptitle() == (
        f'a run: validation accuracy {100 * validation:.1f} % (step 400), '
        f'test accuracy {100 * summaries["ssl"]["test_accuracy"]:.1f} % (step 400)')
    assert [t.get_text() for t in acc_ax.get_legend().get_texts()] == [
        'train_accuracy', 'validation_accuracy', 'test_accuracy']
  finally:
    plt.close(fig)
  name = plots.run_name(tiny_rings().replace(mode='ssl'), ssl_dir + '/')
  assert name == 'ssl (rings, ssl, mlp_points)'
  # Training drew its curves.png with that name.
  assert np.array_equal(read_png(os.path.join(ssl_dir, 'curves.png')),
                        plots.curves_picture(records, name))


def test_point_frames_keep_the_axes_of_the_real_points():
  real = embedded_datasets.DATASETS['rings'].make()['train'][0][:2000]
  low, high = plots.point_limits(real)
  assert low < real.min() and real.max() < high
  limits = []
  for generated in (real[:500] * 0.1, real[:500] * 3 + 1):
    fig = plots.points_figure(generated, real, 'frame')
    try:
      [ax] = fig.axes
      limits.append((ax.get_xlim(), ax.get_ylim(), ax.get_title()))
    finally:
      plt.close(fig)
  outside = int((np.abs(real[:500] * 3 + 1 - (low + high) / 2) > (high - low) / 2).any(1).sum())
  assert 0 < outside < 500
  assert limits == [((low, high), (low, high), 'frame'),
                    ((low, high), (low, high), f'frame ({outside} of 500 outside)')]


def test_decision_boundaries_have_a_colour_scale_and_a_legend_for_the_boundary(rings_demo):
  workdir, _ = rings_demo
  config = tiny_rings()
  data = input_pipeline.load(config, input_pipeline.dataset_info(config))
  panels = [(mode, trained.load(os.path.join(workdir, mode))) for mode in ('supervised', 'ssl')]
  fig = plots.decision_boundaries_figure(panels, data, grid=20)
  try:
    *panel_axes, scale_ax = fig.axes
    assert scale_ax.get_ylabel() == plots.PROBABILITY_LABEL
    common = ['labeled, class 0', 'labeled, class 1']
    for ax, entries in zip(panel_axes, (['unlabeled', *common],
                                        ['unlabeled', 'generated', *common])):
      assert [t.get_text() for t in ax.get_legend().get_texts()] == [plots.BOUNDARY_LABEL,
                                                                     *entries]
  finally:
    plt.close(fig)


def test_digit_samples_are_an_image_grid(tmp_path):
  config = tiny('digits.flags')
  info = input_pipeline.dataset_info(config)
  setup = train.Setup.create(config, info)
  images, _ = embedded_datasets.DATASETS['digits'].make()['train']
  gen_variables = setup.generator(None).init(
      jax.random.key(0), models.sample_latent(jax.random.split(jax.random.key(1), 100)))
  state = types.SimpleNamespace(gen_params=gen_variables['params'],
                                gen_batch_stats=gen_variables['batch_stats'])
  tile = 8 * -(-plots.MIN_TILE // 8)
  side = plots.GRID * (tile + 2) + 2
  grid = plots.samples_picture(setup, state, images, step=0)
  assert grid.shape == (side, side, 3)
  assert_not_blank(grid)


def test_samples_and_curves_also_go_to_tensorboard(rings_demo):
  import tensorflow as tf  # pylint: disable=g-import-not-at-top
  workdir, _ = rings_demo
  [events] = pathlib.Path(workdir, 'ssl').glob('events.out.tfevents.*')
  tags = {v.tag for e in tf.compat.v1.train.summary_iterator(str(events))
          for v in e.summary.value}
  assert {'samples', 'curves', 'disc_loss', 'steps_per_sec', 'validation_accuracy'} <= tags


def test_evaluate_matches_training_and_writes_json_and_confusion_png(digits_run):
  workdir, summary = digits_run
  result = evaluate.evaluate(workdir)
  assert result['step'] == 60 and result['num_test'] == 497
  assert result['test_accuracy_ema'] > 0.5  # chance: 0.1
  assert result['test_accuracy_ema'] == pytest.approx(summary['test_accuracy'])
  assert result['test_accuracy_raw'] == pytest.approx(summary['test_accuracy_raw'])
  assert result['per_class_params'] == 'ema'  # the run's --eval_params
  confusion = np.asarray(result['confusion_matrix'])
  assert confusion.shape == (10, 10) and confusion.sum() == 497
  assert np.trace(confusion) / 497 == pytest.approx(result['test_accuracy_ema'])
  saved = json.loads(pathlib.Path(workdir, 'evaluation', 'step_60.json').read_text())
  assert result['saved_in'] == os.path.join(workdir, 'evaluation')
  assert saved == {k: v for k, v in result.items() if k != 'saved_in'}
  assert_not_blank(read_png(os.path.join(workdir, 'evaluation', 'confusion_step_60.png')))
  text = evaluate.report(result)
  assert f"{100 * result['test_accuracy_ema']:.2f} % (EMA)" in text


def test_evaluate_refuses_a_missing_step_or_workdir(digits_run, tmp_path):
  workdir, _ = digits_run
  assert trained.load(workdir, step=30).step == 30
  with pytest.raises(ConfigError,
                     match=re.escape(f'--step=40: no checkpoint; {workdir} has steps 30, 60')):
    trained.load(workdir, step=40)
  with pytest.raises(ConfigError, match='has no checkpoints/; train there first'):
    trained.load(str(tmp_path / 'empty'))
  assert not (tmp_path / 'empty').exists()


def write_digit_files(directory: pathlib.Path) -> dict:
  images, labels = embedded_datasets.DATASETS['digits'].make()['test']
  paths = {}
  for i in range(3):
    paths[str(directory / f'digit{i}.png')] = labels[i]
    Image.fromarray(images[i, :, :, 0]).save(directory / f'digit{i}.png')
  Image.fromarray(images[0, :, :, 0]).convert('RGB').save(directory / 'rgb.png')
  Image.new('L', (16, 12), 200).save(directory / 'gray_16x12.png')
  Image.new('RGBA', (8, 8)).save(directory / 'rgba.png')
  (directory / 'text.png').write_text('not an image')
  return paths


def test_predict_gives_the_class_and_probability_of_each_file(digits_run, tmp_path):
  workdir, _ = digits_run
  paths = write_digit_files(tmp_path)
  run = trained.load(workdir)
  images, _ = embedded_datasets.DATASETS['digits'].make()['test']
  probabilities = run.class_probabilities(images[:3])
  assert predict.predictions(run, list(paths)) == [
      f'{path}\tclass {p.argmax()}\tprobability {p.max():.4f}'
      for path, p in zip(paths, probabilities)]
  assert np.allclose(probabilities.sum(-1), 1, atol=1e-5)


@pytest.mark.parametrize('name,expected', [
    ('rgb.png', 'PIL mode RGB; the model takes 1-channel 8-bit images (mode L)'),
    ('rgba.png', 'PIL mode RGBA; the model takes 1-channel 8-bit images (mode L)'),
    ('text.png', 'cannot be read as an image (UnidentifiedImageError)'),
    ('missing.png', 'cannot be read as an image (FileNotFoundError)'),
])
def test_predict_reads_only_images_that_fit(name, expected, tmp_path):
  write_digit_files(tmp_path)
  with pytest.raises(predict.ImageError, match=re.escape(f'{tmp_path / name}: {expected}')):
    predict.read_image(str(tmp_path / name), (8, 8, 1))


def test_predict_fits_other_sizes_and_grayscale_to_the_model(tmp_path):
  write_digit_files(tmp_path)
  path = str(tmp_path / 'gray_16x12.png')
  assert np.array_equal(predict.read_image(path, (8, 8, 1)), np.full((8, 8, 1), 200, np.uint8))
  assert np.array_equal(predict.read_image(path, (4, 4, 3)), np.full((4, 4, 3), 200, np.uint8))


def test_predict_command_on_a_bad_file_exits_2_with_one_line(digits_run, tmp_path):
  workdir, _ = digits_run
  paths = list(write_digit_files(tmp_path))
  result = subprocess.run([sys.executable, '-m', 'ssgan_jax.predict', f'--workdir={workdir}',
                           paths[0], str(tmp_path / 'rgb.png')], capture_output=True, text=True,
                          timeout=300, cwd=REPO)
  assert result.returncode == 2
  errors = [line for line in result.stderr.splitlines() if line.startswith('error: ')]
  assert errors == [f'error: {tmp_path / "rgb.png"}: PIL mode RGB; the model takes 1-channel '
                    '8-bit images (mode L)']
  assert 'Traceback' not in result.stderr and result.stdout == ''


def test_flag_reference_is_up_to_date():
  text = flag_docs.FLAGS_DOC.read_text()
  assert flag_docs.updated_doc(text) == text, 'run: python -m ssgan_jax.command_line.flag_docs'
