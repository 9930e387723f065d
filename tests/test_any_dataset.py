"""Any TFDS image dataset (sizes, channels, splits, class names), the ResNet-18 family, and a
short run on the cats-vs-dogs stand-in."""
import json
import math
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
from PIL import Image
import pytest
import tensorflow as tf
import tensorflow_datasets as tfds

from ssgan_jax import evaluate, predict
from ssgan_jax.config import Config, ConfigError
from ssgan_jax.data import input_pipeline
from ssgan_jax.networks import models
from ssgan_jax.training import train, trained
from without_tensorflow import REPO

CATS = dict(dataset='cats_vs_dogs', model='resnet18', image_size=32, num_labeled=10,
            num_validation=10, train_split='train[:80%]', test_split='train[80%:]')


def examples(images: list, labels: list):
  """A mock_data `as_dataset_fn` giving these examples (any sizes, one channel count)."""
  channels = images[0].shape[-1]

  def as_dataset(self, *args, **kwargs):
    del self, args, kwargs
    return tf.data.Dataset.from_generator(
        lambda: ({'image': image, 'label': label} for image, label in zip(images, labels)),
        output_signature={'image': tf.TensorSpec((None, None, channels), tf.uint8),
                          'label': tf.TensorSpec((), tf.int64)})
  return as_dataset


def test_images_of_varying_sizes_are_resized_to_image_size():
  with tfds.testing.mock_data(num_examples=12, policy=tfds.testing.MockPolicy.USE_CODE):
    config = Config(**CATS)
    info = input_pipeline.dataset_info(config)
    images, labels = input_pipeline.load_split(config, 'train', info.image_shape)
  assert info.image_shape == (32, 32, 3) and info.class_names == ('cat', 'dog')
  assert images.shape == (12, 32, 32, 3) and images.dtype == np.uint8
  assert set(labels) <= {0, 1}


def test_grayscale_images_of_any_size_become_rgb_where_the_model_takes_rgb():
  rng = np.random.default_rng(0)
  gray = [rng.integers(0, 256, shape, dtype=np.uint8) for shape in ((20, 30, 1), (40, 40, 1))]
  with tfds.testing.mock_data(as_dataset_fn=examples(gray, [0, 1]),
                              policy=tfds.testing.MockPolicy.USE_CODE):
    config = Config(**CATS)
    images, _ = input_pipeline.load_split(config, 'train',
                                          input_pipeline.dataset_info(config).image_shape)
  assert images.shape == (2, 32, 32, 3)
  np.testing.assert_array_equal(images[..., 0], images[..., 1])
  np.testing.assert_array_equal(images[..., 0], images[..., 2])


def test_resizing_is_antialiased():
  """Columns 255, 0, 0 repeated, shrunk 3x: a filter over the columns gives about their mean
  (85) everywhere; sampling without antialiasing would hit the 0 columns."""
  stripes = np.tile(np.array([255, 0, 0], np.uint8), 32)[None, :, None].repeat(96, 0)
  with tfds.testing.mock_data(as_dataset_fn=examples([stripes], [0]),
                              policy=tfds.testing.MockPolicy.USE_CODE):
    config = Config(**{**CATS, 'model': 'mlp'})
    images, _ = input_pipeline.load_split(config, 'train',
                                          input_pipeline.dataset_info(config).image_shape)
  assert images.shape == (1, 32, 32, 3)
  assert 60 <= images[0, 2:-2, 2:-2].min() and images[0, 2:-2, 2:-2].max() <= 110


@pytest.mark.parametrize('changes,flag,message', [
    (dict(image_size=None), 'image_size', 'has images of varying sizes; set the side'),
    (dict(image_size=48), 'image_size=48', 'the resnet18 generator makes 32x32 or 64x64'),
    (dict(model='conv_small', image_size=64), 'image_size=64', 'generator makes 32x32'),
])
def test_sizes_no_model_can_take_are_refused_from_the_metadata(changes, flag, message):
  with tfds.testing.mock_data(num_examples=1, policy=tfds.testing.MockPolicy.USE_CODE):
    with pytest.raises(ConfigError, match=message) as error:
      input_pipeline.dataset_info(Config(**{**CATS, **changes}))
  assert str(error.value).startswith(f'--{flag}')


def test_a_model_that_cannot_take_the_dataset_s_images_names_image_size(mnist_data_dir):
  with pytest.raises(ConfigError) as error:
    input_pipeline.dataset_info(Config(dataset='mnist', data_dir=mnist_data_dir,
                                       model='conv_small'))
  assert str(error.value).startswith('--model=conv_small: makes 32x32 images; mnist has 28x28; '
                                     'set --image_size=32')


@pytest.mark.parametrize('changes,flag', [
    (dict(test_split='test'), 'test_split=test'),         # the stand-in has only train
    (dict(train_split='train[:80%'), 'train_split=train[:80%'),  # TFDS cannot parse it
    (dict(test_split='validation'), 'test_split=validation'),
])
def test_splits_the_dataset_lacks_are_refused_naming_those_it_has(changes, flag,
                                                                  cats_vs_dogs_data_dir):
  config = Config(**{**CATS, **changes}, data_dir=cats_vs_dogs_data_dir)
  with pytest.raises(ConfigError) as error:
    input_pipeline.dataset_info(config)
  assert str(error.value).startswith(f'--{flag}: cats_vs_dogs has the splits train (24994)')


def test_the_stand_in_s_metadata_sizes_the_run_without_decoding(cats_vs_dogs_data_dir):
  info = input_pipeline.dataset_info(Config(**CATS, data_dir=cats_vs_dogs_data_dir))
  assert (info.num_classes, info.image_shape, info.class_names) == (2, (32, 32, 3),
                                                                    ('cat', 'dog'))
  assert info.train_size == round(0.8 * 24994)  # TFDS rounds percent slices to the closest


def parameter_count(module, *inputs) -> int:
  shapes = jax.eval_shape(module.init, jax.random.key(0), *inputs)['params']
  return sum(math.prod(x.shape) for x in jax.tree.leaves(shapes))


def test_resnet18_has_torchvision_s_parameters_and_shapes():
  """11,689,512 parameters in torchvision's 1000-class ResNet-18, less its 513,000-parameter
  classifier, plus 512 x 2 + 2 for two classes."""
  disc = models.MODEL_FAMILIES['resnet18'].discriminator(2)
  images = jnp.zeros((4, 64, 64, 3))
  assert parameter_count(disc, images) == 11_689_512 - 513_000 + 1026
  variables = jax.eval_shape(disc.init, jax.random.key(0), images)
  (outputs, features), _ = jax.eval_shape(
      lambda v: disc.apply(v, images, mutable=['batch_stats']), variables)
  assert (outputs.shape, features.shape) == ((4, 2), (4, 512))


@pytest.mark.parametrize('side,count', [
    # z -> 4x4x512 (dense, no bias, batch norm with scale and bias over its 8192 outputs),
    # three 5x5 doublings with batch norm (512 -> 256 -> 128 -> 64), a 5x5 doubling to RGB
    # (no bias).
    (64, (100 + 2) * 4 * 4 * 512 + 25 * (512 * 256 + 256 * 128 + 128 * 64 + 64 * 3)
     + 2 * (256 + 128 + 64)),
    # 32 px: one doubling fewer.
    (32, (100 + 2) * 4 * 4 * 256 + 25 * (256 * 128 + 128 * 64 + 64 * 3) + 2 * (128 + 64)),
])
def test_dcgan_generator_layout_by_size(side, count):
  gen = models.MODEL_FAMILIES['resnet18'].generator((side, side, 3), None)
  z = jnp.zeros((4, models.LATENT_DIM))
  assert parameter_count(gen, z) == count
  variables = gen.init(jax.random.key(0), z)
  fake, _ = gen.apply(variables, jax.random.uniform(jax.random.key(1), z.shape),
                      mutable=['batch_stats'])
  assert fake.shape == (4, side, side, 3) and float(jnp.max(jnp.abs(fake))) <= 1


def test_resnet18_steps_lower_the_losses():
  """Six steps on one fixed batch of 32 px images at batch 4, supervised (the semi-supervised
  step is compared with torch in test_torch_reference.py and across devices in
  test_parallel.py)."""
  config = Config(**CATS, mode='supervised', batch_size=4, learning_rate=2e-3, adam_beta1=0.5,
                  num_steps=6)
  setup = train.Setup.create(config, input_pipeline.DatasetInfo(2, (32, 32, 3), 100))
  rng = np.random.default_rng(0)
  images = rng.integers(0, 256, (4, 32, 32, 3), dtype=np.uint8)
  batch = {'labeled_images': images, 'labels': np.array([0, 1, 0, 1]),
           'unlabeled_images': images[::-1], 'unlabeled_images_gen': images}
  state = train.create_train_state(setup, images)
  step = jax.jit(lambda s: train.train_step(setup, s, batch, axis_name=None))
  history = []
  for _ in range(6):
    state, metrics = step(state)
    history.append(jax.device_get(metrics))
  assert history[-1]['sup_loss'] < 0.5 * history[0]['sup_loss']


def test_a_short_run_on_the_stand_in_trains_evaluates_and_predicts(cats_vs_dogs_data_dir,
                                                                   tmp_path):
  """The command line on the real photos, a slice of them at 32 px, to the end-of-run test,
  then evaluate and predict on the run (in-process: their command lines are tested in
  test_main.py and test_user_tools.py).
  With the MLP, which compiles in seconds: the ResNet-18 steps are tested above and in
  test_parallel.py; this is the data's path from the flagfile to the test accuracy."""
  result = subprocess.run(
      [sys.executable, '-m', 'ssgan_jax.main', '--flagfile=experiments/cats_vs_dogs_64.flags',
       f'--data_dir={cats_vs_dogs_data_dir}', f'--workdir={tmp_path}', '--image_size=32',
       '--model=mlp', '--gen_loss=feature_matching',
       '--train_split=train[:600]', '--test_split=train[24000:24200]', '--num_validation=100',
       '--num_labeled=10', '--batch_size=4', '--eval_batch_size=100', '--num_steps=2'],
      capture_output=True, text=True, timeout=600)
  assert result.returncode == 0, result.stderr[-3000:]
  summary = json.loads(result.stdout.strip().splitlines()[-1])
  assert summary['step'] == 2 and 0 <= summary['test_accuracy'] <= 1
  saved = json.loads((tmp_path / 'dataset_info.json').read_text())
  assert saved['class_names'] == ['cat', 'dog'] and saved['image_shape'] == [32, 32, 3]
  # evaluate reads the run's own test split (there is no `test`), resized as in training.
  evaluation = evaluate.evaluate(str(tmp_path))
  assert evaluation['num_test'] == 200 and evaluation['class_names'] == ['cat', 'dog']
  assert evaluation['test_accuracy_raw'] == pytest.approx(summary['test_accuracy_raw'])
  assert evaluation['per_class_params'] == 'raw'  # the flagfile's --eval_params
  assert 'per-class accuracy (raw): cat: ' in evaluate.report(evaluation)
  # predict fits a photo to the model exactly as training read it, and names its class.
  config = Config(dataset='cats_vs_dogs', data_dir=cats_vs_dogs_data_dir)
  [photo], [label] = input_pipeline.load_split(config, 'train[:1]')
  [fitted], _ = input_pipeline.load_split(config, 'train[:1]', (32, 32, 3))
  Image.fromarray(photo).save(tmp_path / 'photo.png')
  assert np.array_equal(predict.read_image(str(tmp_path / 'photo.png'), (32, 32, 3)), fitted)
  [line] = predict.predictions(trained.load(str(tmp_path)), [str(tmp_path / 'photo.png')])
  assert line.split('\t')[1] in ('cat', 'dog')


@pytest.mark.parametrize('flag,error', [
    ('--modes=ssl,semi', '--modes=ssl,semi: allowed: ssl, supervised'),
    ('--selections=curated', '--selections=curated: allowed: random, representative'),
])
def test_the_cats_vs_dogs_benchmark_refuses_bad_flags_in_one_line(tmp_path, flag, error):
  result = subprocess.run(
      [sys.executable, '-m', 'benchmarks.cats_vs_dogs',
       f'--flagfile={REPO / "experiments" / "cats_vs_dogs_64.flags"}', flag,
       f'--out_dir={tmp_path}'], capture_output=True, text=True, timeout=600, cwd=REPO)
  assert (result.returncode, result.stderr, result.stdout) == (2, f'error: {error}\n', '')
  assert not list(tmp_path.iterdir())
