"""Tests of ssgan_jax.data.input_pipeline: splits, samplers, batches and config checks against data.

Mocked MNIST (tfds.testing.mock_data) needs no files; the real-MNIST tests use the
`mnist_data_dir` fixture and skip where that data is absent.
"""
import contextlib
import itertools
import os
import types

import numpy as np
import pytest
import tensorflow_datasets as tfds

from ssgan_jax.data import input_pipeline as ip
from ssgan_jax.config import Config, ConfigError

MOCK_SIZE = 600  # examples per split of the mocked MNIST
NUM_CLASSES = 10


# --------------------------------------------------------------------------------------------
# Mocked MNIST.
#
# With the default mock_data policy (no metadata on disk) TFDS reports 0 examples per split,
# and tfds.load(..., batch_size=-1) then batches by sys.maxsize, which aborts the interpreter
# inside TensorFlow (std::length_error). So the mock gets a data_dir holding only mnist's
# metadata with 600 examples per split, and MockPolicy.USE_FILES.
# --------------------------------------------------------------------------------------------


@pytest.fixture(scope='module')
def mock_mnist_dir(tmp_path_factory) -> str:
  root = tmp_path_factory.mktemp('mock_tfds')
  builder = tfds.builder('mnist', data_dir=str(root))
  builder.info.set_splits(tfds.core.SplitDict([
      tfds.core.SplitInfo(name=split, shard_lengths=[MOCK_SIZE], num_bytes=0,
                          filename_template=None)
      for split in ('train', 'test')]))
  os.makedirs(builder.data_dir, exist_ok=True)
  builder.info.write_to_directory(builder.data_dir)
  return str(root)


@contextlib.contextmanager
def mocked_tfds(data_dir: str):
  with tfds.testing.mock_data(num_examples=MOCK_SIZE, data_dir=data_dir,
                              policy=tfds.testing.MockPolicy.USE_FILES):
    yield


def mock_config(data_dir: str, **changes) -> Config:
  return Config(dataset='mnist', data_dir=data_dir, num_labeled=100, num_validation=100,
                label_seed=0).replace(**changes)


def mock_load(data_dir: str, **changes) -> ip.SemiSupervisedData:
  config = mock_config(data_dir, **changes)
  with mocked_tfds(data_dir):
    return ip.load(config, ip.dataset_info(config))


def train_positions(images: np.ndarray, position_of: dict) -> np.ndarray:
  """Where each image sits in the train split (mock images are random, hence unique)."""
  return np.array([position_of[image.tobytes()] for image in images], dtype=np.int64)


@pytest.fixture(scope='module')
def mock_run(mock_mnist_dir):
  """One mocked load (label_seed 0), the raw train split, and the split as train positions."""
  config = mock_config(mock_mnist_dir)
  with mocked_tfds(mock_mnist_dir):
    info = ip.dataset_info(config)
    data = ip.load(config, info)
    train_images, train_labels = ip.load_split(config, 'train')
  position_of = {image.tobytes(): i for i, image in enumerate(train_images)}
  assert len(position_of) == len(train_images), 'mock train images are not all distinct'
  return types.SimpleNamespace(
      config=config, info=info, data=data, train_images=train_images,
      train_labels=train_labels,
      validation=train_positions(data.validation_images, position_of),
      labeled=train_positions(data.labeled_images, position_of),
      unlabeled=train_positions(data.unlabeled_images, position_of),
      position_of=position_of)


def test_mock_dataset_info(mock_run):
  assert mock_run.info == ip.DatasetInfo(num_classes=10, image_shape=(28, 28, 1),
                                         train_size=MOCK_SIZE,
                                         class_names=tuple(map(str, range(10))))
  assert mock_run.train_images.shape == (MOCK_SIZE, 28, 28, 1)
  assert mock_run.train_images.dtype == np.uint8
  assert set(np.unique(mock_run.train_labels)) <= set(range(NUM_CLASSES))


def test_load_shapes_and_dtypes(mock_run):
  data = mock_run.data
  image = (28, 28, 1)
  expected = {
      'labeled_images': ((100,) + image, np.uint8),
      'labeled_labels': ((100,), np.int32),
      'unlabeled_images': ((MOCK_SIZE - 100,) + image, np.uint8),
      'validation_images': ((100,) + image, np.uint8),
      'validation_labels': ((100,), np.int32),
      'test_images': ((MOCK_SIZE,) + image, np.uint8),
      'test_labels': ((MOCK_SIZE,), np.int32),
  }
  actual = {name: (array.shape, array.dtype) for name, array in vars(data).items()}
  assert actual == expected


def test_load_labeled_subset_is_class_balanced(mock_run):
  counts = np.bincount(mock_run.data.labeled_labels, minlength=NUM_CLASSES)
  np.testing.assert_array_equal(counts, np.full(NUM_CLASSES, 100 // NUM_CLASSES))


def test_load_labels_belong_to_their_images(mock_run):
  np.testing.assert_array_equal(mock_run.data.labeled_labels,
                                mock_run.train_labels[mock_run.labeled])
  np.testing.assert_array_equal(mock_run.data.validation_labels,
                                mock_run.train_labels[mock_run.validation])


def test_load_partitions_the_train_split(mock_run):
  validation, labeled, unlabeled = (set(mock_run.validation), set(mock_run.labeled),
                                    set(mock_run.unlabeled))
  assert len(validation) == 100 and len(labeled) == 100 and len(unlabeled) == MOCK_SIZE - 100
  assert not validation & labeled
  assert not validation & unlabeled
  assert labeled <= unlabeled
  assert validation | unlabeled == set(range(MOCK_SIZE))


def test_load_matches_split_train(mock_run):
  """load() applies split_train to the train split as read."""
  validation, labeled, unlabeled = ip.split_train(mock_run.train_labels, NUM_CLASSES, 100, 100,
                                                  label_seed=0)
  np.testing.assert_array_equal(mock_run.validation, validation)
  np.testing.assert_array_equal(mock_run.labeled, labeled)
  np.testing.assert_array_equal(mock_run.unlabeled, unlabeled)


def test_load_label_seed_reproducible_and_changes_only_the_labeled_subset(mock_run,
                                                                          mock_mnist_dir):
  same = mock_load(mock_mnist_dir, label_seed=0)
  np.testing.assert_array_equal(same.labeled_images, mock_run.data.labeled_images)
  np.testing.assert_array_equal(same.labeled_labels, mock_run.data.labeled_labels)

  other = mock_load(mock_mnist_dir, label_seed=1)
  other_labeled = train_positions(other.labeled_images, mock_run.position_of)
  assert set(other_labeled) != set(mock_run.labeled), 'label_seed does not change the subset'
  np.testing.assert_array_equal(np.bincount(other.labeled_labels, minlength=NUM_CLASSES),
                                np.full(NUM_CLASSES, 10))
  # Validation and unlabeled stream do not depend on label_seed.
  np.testing.assert_array_equal(other.validation_images, mock_run.data.validation_images)
  np.testing.assert_array_equal(other.unlabeled_images, mock_run.data.unlabeled_images)


@pytest.mark.parametrize('changes, flag', [
    ({'num_labeled': 105}, '--num_labeled=105: '),
    ({'num_labeled': 510, 'num_validation': 100}, '--num_labeled=510: '),
    ({'model': 'conv_small'}, '--model=conv_small: '),
])
def test_mock_dataset_info_config_errors(mock_mnist_dir, changes, flag):
  with mocked_tfds(mock_mnist_dir), pytest.raises(ConfigError) as error:
    ip.dataset_info(mock_config(mock_mnist_dir, **changes))
  assert str(error.value).startswith(flag)


# --------------------------------------------------------------------------------------------
# split_train on synthetic labels.
# --------------------------------------------------------------------------------------------


def synthetic_labels(n: int, num_classes: int, seed: int = 0) -> np.ndarray:
  return np.random.default_rng(seed).integers(0, num_classes, n).astype(np.int32)


@pytest.mark.parametrize('n, num_classes, num_labeled, num_validation', [
    (1000, 10, 100, 200),
    (1000, 10, 100, 0),
    (357, 3, 30, 57),
    (50, 2, 50, 0),    # as many labeled as there are examples of the rarer class allows
])
def test_split_train_partition(n, num_classes, num_labeled, num_validation):
  labels = synthetic_labels(n, num_classes)
  if np.bincount(labels, minlength=num_classes).min() < num_labeled // num_classes:
    labels = np.arange(n, dtype=np.int32) % num_classes
  validation, labeled, unlabeled = ip.split_train(labels, num_classes, num_labeled,
                                                  num_validation, label_seed=3)
  for name, idx in [('validation', validation), ('labeled', labeled),
                    ('unlabeled', unlabeled)]:
    assert len(np.unique(idx)) == len(idx), f'{name} has repeated indices'
    assert np.all((idx >= 0) & (idx < n)), f'{name} out of range'
  assert len(validation) == num_validation
  assert len(labeled) == num_labeled
  assert len(unlabeled) == n - num_validation
  validation, labeled, unlabeled = set(validation), set(labeled), set(unlabeled)
  assert not validation & labeled
  assert not validation & unlabeled
  assert labeled <= unlabeled
  assert validation | unlabeled == set(range(n))


def test_split_train_class_balanced():
  labels = synthetic_labels(2000, 10)
  _, labeled, _ = ip.split_train(labels, 10, 250, 300, label_seed=5)
  np.testing.assert_array_equal(np.bincount(labels[labeled], minlength=10), np.full(10, 25))


def test_split_train_label_seed():
  labels = synthetic_labels(1000, 10)
  first = ip.split_train(labels, 10, 100, 200, label_seed=0)
  again = ip.split_train(labels, 10, 100, 200, label_seed=0)
  other = ip.split_train(labels, 10, 100, 200, label_seed=1)
  for a, b in zip(first, again):
    np.testing.assert_array_equal(a, b)
  assert set(first[1]) != set(other[1]), 'label_seed does not change the labeled subset'
  np.testing.assert_array_equal(first[0], other[0])  # validation
  np.testing.assert_array_equal(first[2], other[2])  # unlabeled


def test_split_train_validation_independent_of_labeled_settings():
  labels = synthetic_labels(1000, 10)
  validations = [set(ip.split_train(labels, 10, num_labeled, 200, label_seed)[0])
                 for num_labeled, label_seed in [(10, 0), (100, 7), (500, 123)]]
  assert validations[0] == validations[1] == validations[2]


def test_split_train_too_few_of_a_class():
  labels = np.array([0] * 20 + [1] * 3, dtype=np.int32)
  with pytest.raises(ConfigError) as error:
    ip.split_train(labels, 2, 10, 0, label_seed=0)
  assert str(error.value).startswith('--num_labeled=10: ')


# --------------------------------------------------------------------------------------------
# EpochSampler.
# --------------------------------------------------------------------------------------------


def positions_through(sampler: ip.EpochSampler, num_steps: int) -> np.ndarray:
  return np.concatenate([sampler.indices(step) for step in range(num_steps)])


def test_sampler_each_example_once_per_epoch_when_batch_divides():
  n, b = 60, 10
  sampler = ip.EpochSampler(n, b, seed=0, stream=1)
  flat = positions_through(sampler, 3 * n // b)
  epochs = flat.reshape(3, n)
  for epoch in epochs:
    np.testing.assert_array_equal(np.sort(epoch), np.arange(n))
  assert not np.array_equal(epochs[0], epochs[1]), 'epochs reuse the same order'
  for step in range(3 * n // b):
    assert sampler.indices(step).shape == (b,)


@pytest.mark.parametrize('n, b', [(25, 10), (7, 3), (3, 10)])
def test_sampler_each_example_once_per_epoch_across_boundaries(n, b):
  sampler = ip.EpochSampler(n, b, seed=1, stream=2)
  num_epochs = 6
  num_steps = num_epochs * n // b + 1
  flat = positions_through(sampler, num_steps)
  for step in range(num_steps):
    batch = sampler.indices(step)
    assert batch.shape == (b,)
    assert np.issubdtype(batch.dtype, np.integer)
  for epoch in range(num_epochs):
    np.testing.assert_array_equal(np.sort(flat[epoch * n:(epoch + 1) * n]), np.arange(n),
                                  err_msg=f'epoch {epoch}')


def test_sampler_batch_spanning_two_epochs():
  n, b = 25, 10
  sampler = ip.EpochSampler(n, b, seed=4, stream=1)
  first_epoch = np.concatenate([sampler.indices(0), sampler.indices(1)])
  spanning = sampler.indices(2)  # positions 20..29: 5 from epoch 0, 5 from epoch 1
  np.testing.assert_array_equal(np.sort(np.concatenate([first_epoch, spanning[:5]])),
                                np.arange(n))
  second_epoch = np.concatenate([spanning[5:], sampler.indices(3), sampler.indices(4)])
  np.testing.assert_array_equal(np.sort(second_epoch), np.arange(n))


def test_sampler_indices_is_a_pure_function_of_step():
  n, b, num_steps = 23, 5, 40  # 40 steps span 9 epochs, more than the permutation cache holds
  sequential = [ip.EpochSampler(n, b, seed=7, stream=1).indices(s) for s in range(num_steps)]
  shuffled_steps = np.random.default_rng(0).permutation(num_steps)
  sampler = ip.EpochSampler(n, b, seed=7, stream=1)
  for step in shuffled_steps:
    np.testing.assert_array_equal(sampler.indices(int(step)), sequential[step],
                                  err_msg=f'step {step}')
  for step in (num_steps - 1, 0, 17):  # a fresh sampler, as after a restart
    np.testing.assert_array_equal(ip.EpochSampler(n, b, seed=7, stream=1).indices(step),
                                  sequential[step])


def test_sampler_seed_and_stream_change_the_order():
  n, b = 100, 100
  base = ip.EpochSampler(n, b, seed=0, stream=1).indices(0)
  other_seed = ip.EpochSampler(n, b, seed=1, stream=1).indices(0)
  other_stream = ip.EpochSampler(n, b, seed=0, stream=2).indices(0)
  assert not np.array_equal(base, other_seed)
  assert not np.array_equal(base, other_stream)
  assert not np.array_equal(other_seed, other_stream)


# --------------------------------------------------------------------------------------------
# train_batches on small synthetic data whose pixels name their example.
# --------------------------------------------------------------------------------------------


def synthetic_data(num_labeled: int = 40, num_unlabeled: int = 90,
                   image_shape=(4, 4, 1)) -> ip.SemiSupervisedData:
  def images(n, offset):  # every pixel of image i is offset + i
    return (offset + np.arange(n, dtype=np.uint8)[:, None, None, None]
            * np.ones(image_shape, np.uint8))
  labeled_labels = (np.arange(num_labeled) % NUM_CLASSES).astype(np.int32)
  empty = np.zeros((0,) + image_shape, np.uint8)
  return ip.SemiSupervisedData(
      labeled_images=images(num_labeled, 0), labeled_labels=labeled_labels,
      unlabeled_images=images(num_unlabeled, 100),
      validation_images=empty, validation_labels=np.zeros(0, np.int32),
      test_images=empty, test_labels=np.zeros(0, np.int32))


def take(iterator, count):
  return list(itertools.islice(iterator, count))


@pytest.mark.parametrize('num_devices', [1, 4])
@pytest.mark.parametrize('mode', ['ssl', 'supervised'])
def test_train_batches_shapes_and_keys(num_devices, mode):
  data = synthetic_data()
  config = Config(batch_size=20, mode=mode, seed=0)
  per_device = config.batch_size // num_devices
  for batch in take(ip.train_batches(data, config, 0, num_devices), 6):
    assert batch['labeled_images'].shape == (num_devices, per_device, 4, 4, 1)
    assert batch['labeled_images'].dtype == np.uint8
    assert batch['labels'].shape == (num_devices, per_device)
    if config.mode == 'ssl':
      assert 'unlabeled_images' in batch
      for key in batch.keys() - {'labeled_images', 'labels'}:
        assert batch[key].shape == (num_devices, per_device, 4, 4, 1), key
    else:
      assert not any(key.startswith('unlabeled') for key in batch), sorted(batch)


def test_train_batches_labels_match_images_and_streams_use_their_own_arrays():
  data = synthetic_data()
  config = Config(batch_size=20, mode='ssl', seed=0)
  for batch in take(ip.train_batches(data, config, 0, 2), 5):
    labeled_ids = batch['labeled_images'][..., 0, 0, 0].astype(int)
    np.testing.assert_array_equal(batch['labels'], labeled_ids % NUM_CLASSES)
    assert np.all(labeled_ids < 40)
    unlabeled_ids = batch['unlabeled_images'][..., 0, 0, 0].astype(int)
    assert np.all((unlabeled_ids >= 100) & (unlabeled_ids < 190))


def test_train_batches_labeled_and_unlabeled_streams_are_independent():
  """With equally many labeled and unlabeled images the two streams still differ in order."""
  data = synthetic_data(num_labeled=60, num_unlabeled=60)
  config = Config(batch_size=20, mode='ssl', seed=0)
  for batch in take(ip.train_batches(data, config, 0, 1), 3):
    labeled_ids = batch['labeled_images'][..., 0, 0, 0].astype(int)
    unlabeled_ids = batch['unlabeled_images'][..., 0, 0, 0].astype(int) - 100
    assert not np.array_equal(labeled_ids, unlabeled_ids)


def test_train_batches_labeled_stream_covers_each_labeled_example_per_epoch():
  data = synthetic_data(num_labeled=40)
  config = Config(batch_size=20, mode='ssl', seed=3)
  batches = take(ip.train_batches(data, config, 0, 4), 4)  # two epochs of the labeled stream
  ids = np.concatenate([b['labeled_images'][..., 0, 0, 0].reshape(-1) for b in batches])
  np.testing.assert_array_equal(np.sort(ids[:40]), np.arange(40))
  np.testing.assert_array_equal(np.sort(ids[40:]), np.arange(40))


@pytest.mark.parametrize('num_devices', [1, 4])
@pytest.mark.parametrize('start_step', [1, 3, 7])
def test_train_batches_resume_matches_uninterrupted_run(num_devices, start_step):
  data = synthetic_data()
  config = Config(batch_size=20, mode='ssl', seed=11)
  uninterrupted = take(ip.train_batches(data, config, 0, num_devices), start_step + 3)
  resumed = take(ip.train_batches(data, config, start_step, num_devices), 3)
  for offset, batch in enumerate(resumed):
    expected = uninterrupted[start_step + offset]
    assert batch.keys() == expected.keys()
    for key in batch:
      np.testing.assert_array_equal(batch[key], expected[key],
                                    err_msg=f'step {start_step + offset}, {key}')


def test_train_batches_sharding_keeps_the_global_batch():
  data = synthetic_data()
  config = Config(batch_size=20, mode='ssl', seed=2)
  single = take(ip.train_batches(data, config, 0, 1), 3)
  sharded = take(ip.train_batches(data, config, 0, 4), 3)
  for one, four in zip(single, sharded):
    for key in one:
      np.testing.assert_array_equal(four[key].reshape(one[key].shape), one[key], err_msg=key)


def test_train_batches_seed_changes_the_order():
  data = synthetic_data()
  first = next(ip.train_batches(data, Config(batch_size=20, seed=0), 0, 1))
  second = next(ip.train_batches(data, Config(batch_size=20, seed=1), 0, 1))
  assert not np.array_equal(first['labeled_images'], second['labeled_images'])
  assert not np.array_equal(first['unlabeled_images'], second['unlabeled_images'])


# --------------------------------------------------------------------------------------------
# eval_batches.
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize('n, batch_size, num_devices', [
    (23, 8, 4), (24, 8, 4), (5, 8, 2), (1, 4, 4), (10, 10, 1), (11, 10, 1)])
def test_eval_batches_cover_each_example_once(n, batch_size, num_devices):
  images = (np.arange(n, dtype=np.uint8)[:, None, None, None] + 1) * np.ones((3, 3, 2), np.uint8)
  labels = (np.arange(n) % 7).astype(np.int32)
  batches = list(ip.eval_batches(images, labels, batch_size, num_devices))
  assert len(batches) == -(-n // batch_size)
  per_device = batch_size // num_devices
  seen_images, seen_labels = [], []
  for batch in batches:
    assert batch['images'].shape == (num_devices, per_device, 3, 3, 2)
    assert batch['labels'].shape == (num_devices, per_device)
    assert batch['mask'].shape == (num_devices, per_device)
    mask = batch['mask'].reshape(-1)
    assert set(np.unique(mask)) <= {0.0, 1.0}
    flat_images = batch['images'].reshape((batch_size, 3, 3, 2))
    real = mask == 1
    # Real examples come first; padding (mask 0) repeats examples from the start.
    assert np.all(real[:real.sum()])
    np.testing.assert_array_equal(flat_images[~real], images[np.arange((~real).sum()) % n])
    seen_images.append(flat_images[real])
    seen_labels.append(batch['labels'].reshape(-1)[real])
  assert sum(float(b['mask'].sum()) for b in batches) == n
  np.testing.assert_array_equal(np.concatenate(seen_images), images)
  np.testing.assert_array_equal(np.concatenate(seen_labels), labels)


# --------------------------------------------------------------------------------------------
# ConfigError from dataset_info.
# --------------------------------------------------------------------------------------------


def test_unknown_dataset_is_a_config_error():
  with pytest.raises(ConfigError) as error:
    ip.dataset_info(Config(dataset='no_such_dataset_xyz'))
  assert str(error.value).startswith('--dataset=no_such_dataset_xyz: ')


def test_missing_data_dir_is_a_config_error(tmp_path):
  missing = tmp_path / 'does_not_exist'
  with pytest.raises(ConfigError) as error:
    ip.dataset_info(Config(data_dir=str(missing)))
  assert str(error.value).startswith(f'--data_dir={missing}: ')


@pytest.mark.parametrize('changes, prefix', [
    ({'num_labeled': 105}, '--num_labeled=105: '),
    ({'num_labeled': 55010, 'num_validation': 5000}, '--num_labeled=55010: '),
    ({'num_labeled': 100, 'num_validation': 59950}, '--num_labeled=100: '),
    ({'model': 'conv_small'}, '--model=conv_small: '),
    ({'model': 'conv_large'}, '--model=conv_large: '),
])
def test_real_mnist_config_errors(mnist_data_dir, changes, prefix):
  with pytest.raises(ConfigError) as error:
    ip.dataset_info(Config(dataset='mnist', data_dir=mnist_data_dir).replace(**changes))
  assert str(error.value).startswith(prefix)


def test_real_mnist_largest_num_labeled_passes_dataset_info(mnist_data_dir):
  info = ip.dataset_info(Config(data_dir=mnist_data_dir, num_labeled=55000,
                                num_validation=5000))
  assert info.train_size == 60000


# --------------------------------------------------------------------------------------------
# Real MNIST.
# --------------------------------------------------------------------------------------------

MNIST_TRAIN_COUNTS = [5923, 6742, 5958, 6131, 5842, 5421, 5918, 6265, 5851, 5949]
MNIST_TEST_COUNTS = [980, 1135, 1032, 1010, 982, 892, 958, 1028, 974, 1009]


@pytest.fixture(scope='module')
def real_mnist(mnist_data_dir):
  config = Config(dataset='mnist', data_dir=mnist_data_dir, model='mlp', num_labeled=100,
                  num_validation=5000, label_seed=0)
  info = ip.dataset_info(config)
  arrays = ip.read_train_test(config, info)  # what load reads, read once
  data = ip.split_arrays(config, info, *arrays)
  train_images, train_labels = arrays[:2]
  validation, labeled, unlabeled = ip.split_train(train_labels, info.num_classes, 100, 5000, 0)
  return types.SimpleNamespace(config=config, info=info, data=data, train_images=train_images,
                               train_labels=train_labels, validation=validation,
                               labeled=labeled, unlabeled=unlabeled)


def test_real_mnist_dataset_info(real_mnist):
  assert real_mnist.info == ip.DatasetInfo(num_classes=10, image_shape=(28, 28, 1),
                                           train_size=60000,
                                           class_names=tuple(map(str, range(10))))


def test_real_mnist_split_sizes_and_balance(real_mnist):
  data = real_mnist.data
  assert data.labeled_images.shape == (100, 28, 28, 1)
  assert data.unlabeled_images.shape == (55000, 28, 28, 1)
  assert data.validation_images.shape == (5000, 28, 28, 1)
  assert data.test_images.shape == (10000, 28, 28, 1)
  assert data.test_labels.shape == (10000,)
  for array in (data.labeled_images, data.unlabeled_images, data.validation_images,
                data.test_images):
    assert array.dtype == np.uint8
  np.testing.assert_array_equal(np.bincount(data.labeled_labels, minlength=10), np.full(10, 10))
  np.testing.assert_array_equal(np.bincount(real_mnist.train_labels, minlength=10),
                                MNIST_TRAIN_COUNTS)
  np.testing.assert_array_equal(np.bincount(data.test_labels, minlength=10), MNIST_TEST_COUNTS)


def test_real_mnist_subsets_are_the_split_s_images(real_mnist):
  data, train_images, train_labels = real_mnist.data, real_mnist.train_images, real_mnist.train_labels
  np.testing.assert_array_equal(data.labeled_images, train_images[real_mnist.labeled])
  np.testing.assert_array_equal(data.labeled_labels, train_labels[real_mnist.labeled])
  np.testing.assert_array_equal(data.validation_images, train_images[real_mnist.validation])
  np.testing.assert_array_equal(data.validation_labels, train_labels[real_mnist.validation])
  np.testing.assert_array_equal(data.unlabeled_images, train_images[real_mnist.unlabeled])


def test_real_mnist_validation_disjoint_from_training(real_mnist):
  validation, labeled, unlabeled = (set(real_mnist.validation), set(real_mnist.labeled),
                                    set(real_mnist.unlabeled))
  assert not validation & labeled
  assert not validation & unlabeled
  assert labeled <= unlabeled
  assert validation | unlabeled == set(range(60000))


def test_real_mnist_same_label_seed_same_labeled_images(real_mnist):
  """The subsets are split_train's (above), which depends on its seed alone."""
  again = ip.split_train(real_mnist.train_labels, 10, 100, 5000, 0)
  for before, after in zip((real_mnist.validation, real_mnist.labeled, real_mnist.unlabeled),
                           again):
    np.testing.assert_array_equal(after, before)
  assert not np.array_equal(ip.split_train(real_mnist.train_labels, 10, 100, 5000, 1)[1],
                            real_mnist.labeled)


class _UnpreparedBuilder:
  """Stands in for a TFDS builder whose data is absent and cannot be downloaded."""
  data_dir = '/data/cifar10/3.0.2'

  def is_prepared(self):
    return False

  def download_and_prepare(self):
    raise ConnectionError('Max retries exceeded with url: /cifar-10-binary.tar.gz')


def test_dataset_that_cannot_be_downloaded_gives_one_clear_error(monkeypatch):
  monkeypatch.setattr(tfds, 'builder', lambda *args, **kwargs: _UnpreparedBuilder())
  with pytest.raises(ConfigError) as error:
    ip.prepare(Config(dataset='cifar10'))
  message = str(error.value)
  assert message.startswith('--dataset=cifar10: is not prepared in /data/cifar10/3.0.2')
  assert 'ConnectionError: Max retries exceeded' in message and '--data_dir' in message
  assert '\n' not in message
