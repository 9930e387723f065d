"""TFDS data for semi-supervised training: labeled subset, validation split, step-indexed batches.

The train split is read into host memory once (uint8). A validation set is held out of it
(fixed, independent of --label_seed); the class-balanced labeled subset is drawn from the rest
by --label_seed, and the unlabeled stream is the whole of the rest. The batch at step t is a
pure function of (seed, t): each stream walks through seeded per-epoch permutations, so a
resumed run sees exactly the batches an uninterrupted one would.
"""
import dataclasses
import functools
import os
from typing import Iterator, Optional

from etils import epy
import numpy as np
import requests

# Lazy, so that the train step and the benchmarks import without TensorFlow.
with epy.lazy_imports():
  import tensorflow as tf
  import tensorflow_datasets as tfds

from ssgan_jax.data import embedded_datasets
from ssgan_jax.config import Config, ConfigError
from ssgan_jax.networks.models import MODEL_FAMILIES

_VALIDATION_SPLIT_SEED = 0
_LABELED_STREAM, _UNLABELED_STREAM, _UNLABELED_GEN_STREAM = 1, 2, 3
_READ_CHUNK = 10_000
# Where TFDS first looks for a prepared copy of a dataset.
_TFDS_GCS_URL = 'https://storage.googleapis.com/tfds-data/'


@dataclasses.dataclass(frozen=True)
class DatasetInfo:
  """What the run needs to know about a dataset before loading it."""
  num_classes: int
  image_shape: tuple  # what the model sees: (H, W, C) after resizing, or a vector's (D,)
  train_size: Optional[int]  # None where TFDS does not know it before preparing
  class_names: tuple[str, ...] = ()  # from the label's ClassLabel; () where it has none


def dataset_info(config: Config) -> DatasetInfo:
  """Reads a dataset's metadata and checks the config against it; raises ConfigError.

  Decodes no data: splits, sizes and shapes come from TFDS's metadata.
  """
  embedded = embedded_datasets.DATASETS.get(config.dataset)
  if embedded is not None:
    for flag, default in (('train_split', 'train'), ('test_split', 'test'),
                          ('image_size', None)):
      if getattr(config, flag) != default:
        raise ConfigError(flag, getattr(config, flag),
                          f'the embedded dataset {config.dataset} has fixed splits and '
                          f'sizes; leave --{flag} at its default')
    info = DatasetInfo(embedded.num_classes, embedded.example_shape, embedded.train_size)
    check_against_dataset(config, info)
    return info
  if config.data_dir is not None and not os.access(config.data_dir, os.R_OK | os.X_OK):
    raise ConfigError('data_dir', config.data_dir, 'must be a readable directory')
  try:
    builder = tfds.builder(config.dataset, data_dir=config.data_dir)
  except tfds.core.registered.DatasetNotFoundError:
    raise ConfigError('dataset', config.dataset,
                      'not a TFDS dataset; e.g. mnist, svhn_cropped, cifar10') from None
  except ValueError:  # a name TFDS cannot parse
    raise ConfigError('dataset', config.dataset, 'not a TFDS dataset name (name, '
                      'name:version or name/config:version; e.g. mnist, mnist:3.0.1)') from None
  except AssertionError as e:  # a version TFDS does not have
    raise ConfigError('dataset', config.dataset,
                      str(e).strip().splitlines()[0].split('": ', 1)[-1]) from None
  features = builder.info.features
  if not {'image', 'label'} <= set(features.keys()):
    raise ConfigError('dataset', config.dataset, "needs 'image' and 'label' features, has "
                      + ', '.join(sorted(features.keys())))
  splits = builder.info.splits
  sizes = {flag: split_size(config, splits, flag) for flag in ('train_split', 'test_split')}
  info = DatasetInfo(
      num_classes=features['label'].num_classes,
      image_shape=model_image_shape(config, tuple(features['image'].shape)),
      train_size=sizes['train_split'], class_names=tuple(features['label'].names))
  check_against_dataset(config, info)
  if all(size is not None for size in sizes.values()):
    check_memory(config, info, sizes['train_split'] + sizes['test_split'])
  return info


def split_size(config: Config, splits, flag: str) -> Optional[int]:
  """Examples in the TFDS split string `--flag`; None where the metadata has no splits yet
  (TFDS fills them in when it prepares the dataset). Raises ConfigError for a split string
  TFDS rejects or a split the dataset lacks."""
  split = getattr(config, flag)
  if not splits:
    return None
  try:
    return splits[split].num_examples
  except (KeyError, ValueError, AssertionError) as e:
    have = ', '.join(f'{name} ({info.num_examples})' for name, info in splits.items())
    reason = (str(e).strip().splitlines() or [''])[0][:120]
    raise ConfigError(flag, split, f'{config.dataset} has the splits {have} ({reason}); set '
                      f"--{flag} to one of them or a slice, e.g. 'train[80%:]'") from None


def model_image_shape(config: Config, stored_shape: tuple) -> tuple:
  """The (H, W, C) images are resized and converted to when read: --image_size square, or
  the stored size; the model family's channels, or the stored ones. Vectors stay as stored."""
  if len(stored_shape) != 3:
    return stored_shape
  family = MODEL_FAMILIES[config.model]
  height, width, channels = stored_shape
  if config.image_size is not None:
    height = width = config.image_size
  elif height is None or width is None:
    raise ConfigError('image_size', None, f'{config.dataset} has images of varying sizes; '
                      'set the side they are resized to, e.g. --image_size=64')
  channels = family.channels or channels
  if channels is None:
    raise ConfigError('model', config.model, f'{config.dataset} has images with varying '
                      'channels and this model takes any count; use --model=resnet18 (RGB)')
  return (height, width, channels)


# Host arrays of the train split: the decoded split, then its validation, labeled and
# unlabeled copies (together about as large again); the test split once.
_TRAIN_COPIES = 2


def check_memory(config: Config, info: DatasetInfo, num_images: int) -> None:
  """Refuses, naming --image_size, a run whose decoded images would not fit in host memory."""
  image_bytes = int(np.prod(info.image_shape))
  needed = (_TRAIN_COPIES * info.train_size + (num_images - info.train_size)) * image_bytes
  available = os.sysconf('SC_AVPHYS_PAGES') * os.sysconf('SC_PAGE_SIZE')
  if needed > available:
    shape = 'x'.join(map(str, info.image_shape))
    raise ConfigError('image_size', config.image_size,
                      f'{num_images} decoded {shape} images and their copies take '
                      f'{needed / 2**30:.1f} GiB, more than the {available / 2**30:.1f} GiB of '
                      'memory available; use a smaller --image_size')


def check_against_dataset(config: Config, info: DatasetInfo) -> None:
  """Raises ConfigError where the labeled subset or the model cannot fit the dataset."""
  if config.num_labeled % info.num_classes:
    raise ConfigError('num_labeled', config.num_labeled,
                      f'must be a multiple of the class count ({info.num_classes})')
  if info.train_size is not None and config.num_labeled + config.num_validation > info.train_size:
    raise ConfigError('num_labeled', config.num_labeled,
                      f'at most {info.train_size - config.num_validation} (the train split '
                      f'has {info.train_size} images, --num_validation={config.num_validation})')
  is_vector = len(info.image_shape) == 1
  if is_vector != (MODEL_FAMILIES[config.model].pixel_range is None):
    fitting = [name for name, family in MODEL_FAMILIES.items()
               if (family.pixel_range is None) == is_vector]
    raise ConfigError('model', config.model, f'{config.dataset} holds '
                      f'{"vectors" if is_vector else "images"}; use --model={"|".join(fitting)}')
  supported = MODEL_FAMILIES[config.model].supported_sizes
  if supported is None:
    return
  height, width = info.image_shape[:2]
  if not (height == width and height in supported):
    sizes = ' or '.join(f'{side}x{side}' for side in supported)
    if config.image_size is not None:
      raise ConfigError('image_size', config.image_size,
                        f'the {config.model} generator makes {sizes} images')
    raise ConfigError('model', config.model, f'makes {sizes} images; {config.dataset} has '
                      f'{height}x{width}; set --image_size={supported[0]} to resize them, '
                      'or use --model=mlp')


@dataclasses.dataclass(frozen=True)
class SemiSupervisedData:
  """The arrays of one run, uint8 images NxHxWxC and int32 labels."""
  labeled_images: np.ndarray
  labeled_labels: np.ndarray
  unlabeled_images: np.ndarray
  validation_images: np.ndarray
  validation_labels: np.ndarray
  test_images: np.ndarray
  test_labels: np.ndarray


def load_split(config: Config, split: str,
               image_shape: Optional[tuple] = None) -> tuple[np.ndarray, np.ndarray]:
  """A whole split as (uint8 images, or float32 vectors, and int32 labels).

  TFDS images are resized (antialiased) and converted to `image_shape`'s channels as they
  are read, where they differ from it.
  """
  embedded = embedded_datasets.DATASETS.get(config.dataset)
  if embedded is not None:
    return embedded.make()[split]
  dataset = tfds.load(config.dataset, split=split, data_dir=config.data_dir)
  if image_shape is not None:
    dataset = dataset.map(lambda example: {'image': fit_image(example['image'], image_shape),
                                           'label': example['label']},
                          num_parallel_calls=tf.data.AUTOTUNE)
  # Chunks rather than batch_size=-1, which needs the split size in the metadata.
  chunks = list(tfds.as_numpy(dataset.batch(_READ_CHUNK)))
  return (np.concatenate([c['image'] for c in chunks]).astype(np.uint8),
          np.concatenate([c['label'] for c in chunks]).astype(np.int32))


def fit_image(image: 'tf.Tensor | np.ndarray', image_shape: tuple) -> 'tf.Tensor':
  """A uint8 HxWxC image resized to image_shape's H x W (antialiased bilinear) and grayscale
  made RGB where the model takes RGB; untouched where it already fits."""
  height, width, channels = image_shape
  image = tf.convert_to_tensor(image)
  if image.shape[-1] == 1 and channels == 3:
    image = tf.image.grayscale_to_rgb(image)
  if tuple(image.shape[:2]) != (height, width):
    resized = tf.image.resize(image, (height, width), antialias=True)
    image = tf.cast(tf.clip_by_value(tf.round(resized), 0, 255), tf.uint8)
  return tf.ensure_shape(image, image_shape)


def split_train(labels: np.ndarray, num_classes: int, num_labeled: int, num_validation: int,
                label_seed: int) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
  """Indices of (validation, labeled, unlabeled) within the train split.

  Validation is a fixed random subset; the labeled subset has num_labeled / num_classes
  images of each class, drawn from the rest by label_seed; unlabeled is all of the rest.
  """
  order = np.random.default_rng(_VALIDATION_SPLIT_SEED).permutation(len(labels))
  validation, rest = order[:num_validation], np.sort(order[num_validation:])
  shuffled_rest = np.random.default_rng(label_seed).permutation(rest)
  per_class = num_labeled // num_classes
  labeled = []
  for c in range(num_classes):
    of_class = shuffled_rest[labels[shuffled_rest] == c]
    if len(of_class) < per_class:
      raise ConfigError('num_labeled', num_labeled,
                        f'needs {per_class} images of class {c}, the train split (less '
                        f'validation) has {len(of_class)}')
    labeled.append(of_class[:per_class])
  return validation, np.sort(np.concatenate(labeled)), rest


def prepare(config: Config) -> None:
  """Has TFDS download and prepare the dataset unless it is already in data_dir."""
  builder = tfds.builder(config.dataset, data_dir=config.data_dir)
  if builder.is_prepared():
    return

  def not_there(e: Exception) -> ConfigError:
    reason = (str(e).strip().splitlines() or [''])[0][:200]
    return ConfigError('dataset', config.dataset,
                       f'is not prepared in {builder.data_dir} and TFDS could not download and '
                       f'prepare it ({type(e).__name__}: {reason}); run where TFDS can '
                       'download, or point --data_dir at a prepared copy')

  # TFDS retries an unreachable server for minutes; one quick request tells first.
  try:
    check_download_reachable(builder)
  except requests.RequestException as e:
    raise not_there(e) from None
  try:
    builder.download_and_prepare()
  except Exception as e:  # TFDS raises many kinds; all mean the data is not there.
    raise not_there(e) from None


def check_download_reachable(builder: 'tfds.core.DatasetBuilder') -> None:
  """Raises requests.RequestException unless the dataset's first source answers at all."""
  requests.head(next(iter(type(builder).url_infos or {}), _TFDS_GCS_URL), timeout=10)


def read_split(config: Config, info: DatasetInfo, which: str) -> tuple[np.ndarray, np.ndarray]:
  """(images, labels) of the run's `which` split ('train': --train_split, 'test':
  --test_split), fitted to info.image_shape as they are read."""
  if config.dataset in embedded_datasets.DATASETS:
    return load_split(config, which)
  return load_split(config, getattr(config, f'{which}_split'), info.image_shape)


def read_train_test(config: Config, info: DatasetInfo) -> tuple[np.ndarray, ...]:
  """(train images, train labels, test images, test labels) of the run (see read_split),
  prepared by TFDS first where needed."""
  if config.dataset not in embedded_datasets.DATASETS:
    prepare(config)
  return (*read_split(config, info, 'train'), *read_split(config, info, 'test'))


def load(config: Config, info: DatasetInfo) -> SemiSupervisedData:
  """Loads train and test and splits train into validation, labeled and unlabeled."""
  return split_arrays(config, info, *read_train_test(config, info))


def split_arrays(config: Config, info: DatasetInfo, train_images: np.ndarray,
                 train_labels: np.ndarray, test_images: np.ndarray,
                 test_labels: np.ndarray) -> SemiSupervisedData:
  """Splits train into validation, labeled (by --label_selection) and unlabeled."""
  validation, labeled, unlabeled = split_train(
      train_labels, info.num_classes, config.num_labeled, config.num_validation,
      config.label_seed)
  if config.label_selection == 'representative':
    # Imported here: scikit-learn takes a second to import, and only this option needs it.
    from ssgan_jax.data import label_selection  # pylint: disable=g-import-not-at-top
    labeled = unlabeled[label_selection.representative(
        train_images[unlabeled], train_labels[unlabeled], config.num_labeled // info.num_classes,
        config.label_seed)]
  return SemiSupervisedData(
      labeled_images=train_images[labeled], labeled_labels=train_labels[labeled],
      unlabeled_images=train_images[unlabeled],
      validation_images=train_images[validation], validation_labels=train_labels[validation],
      test_images=test_images, test_labels=test_labels)


class EpochSampler:
  """Batch indices for step t: positions [t*B, (t+1)*B) of seeded per-epoch permutations."""

  def __init__(self, num_examples: int, batch_size: int, seed: int, stream: int):
    self.num_examples, self.batch_size = num_examples, batch_size
    self._permutation = functools.lru_cache(maxsize=2)(
        lambda epoch: np.random.default_rng((seed, stream, epoch)).permutation(num_examples))

  def indices(self, step: int) -> np.ndarray:
    positions = step * self.batch_size + np.arange(self.batch_size)
    epochs, offsets = np.divmod(positions, self.num_examples)
    return np.concatenate([self._permutation(int(e))[offsets[epochs == e]]
                           for e in np.unique(epochs)])


def shard(array: np.ndarray, num_shards: int) -> np.ndarray:
  """Splits the leading batch axis into (num_shards, batch / num_shards, ...)."""
  return array.reshape((num_shards, -1) + array.shape[1:])


def train_indices(data: SemiSupervisedData, config: Config, start_step: int) -> Iterator[dict]:
  """Global batch indices for steps start_step, start_step + 1, ...

  Keys: labeled (into labeled_images and labeled_labels) and, in ssl mode,
  unlabeled_images and unlabeled_images_gen (into unlabeled_images).
  """
  samplers = {'labeled': EpochSampler(len(data.labeled_labels), config.batch_size,
                                      config.seed, _LABELED_STREAM)}
  if config.mode == 'ssl':
    for key, stream in (('unlabeled_images', _UNLABELED_STREAM),
                        ('unlabeled_images_gen', _UNLABELED_GEN_STREAM)):
      samplers[key] = EpochSampler(len(data.unlabeled_images), config.batch_size, config.seed,
                                   stream)
  step = start_step
  while True:
    yield {key: sampler.indices(step) for key, sampler in samplers.items()}
    step += 1


def gather_batch(data: dict, indices: dict) -> dict:
  """The train batch that `indices` (from train_indices) select from the arrays in `data`.

  Works on numpy arrays and, inside a jitted step, on device arrays alike.
  """
  lab = indices['labeled']
  batch = {'labeled_images': data['labeled_images'][lab], 'labels': data['labeled_labels'][lab]}
  for key in ('unlabeled_images', 'unlabeled_images_gen'):
    if key in indices:
      batch[key] = data['unlabeled_images'][indices[key]]
  return batch


def train_arrays(data: SemiSupervisedData) -> dict:
  """The arrays train batches are gathered from."""
  return {'labeled_images': data.labeled_images, 'labeled_labels': data.labeled_labels,
          'unlabeled_images': data.unlabeled_images}


def train_batches(data: SemiSupervisedData, config: Config, start_step: int,
                  num_devices: int) -> Iterator[dict]:
  """Per-device sharded batches for steps start_step, start_step + 1, ...

  Keys: labeled_images, labels and, in ssl mode, unlabeled_images (for D's step) and
  unlabeled_images_gen (an independently shuffled batch for G's step, as in the reference).
  """
  arrays = train_arrays(data)
  for indices in train_indices(data, config, start_step):
    yield {key: shard(value, num_devices)
           for key, value in gather_batch(arrays, indices).items()}


def eval_batches(images: np.ndarray, labels: np.ndarray, batch_size: int,
                 num_devices: int) -> Iterator[dict]:
  """Sharded batches covering every example once; padding is marked by mask == 0.

  The last batch is padded with examples from the start rather than zeros, so that D's
  minibatch features, which compare the examples of a group, still compare real images.
  """
  for start in range(0, len(labels), batch_size):
    indices = np.arange(start, start + batch_size) % len(labels)
    count = min(batch_size, len(labels) - start)
    batch = {'images': images[indices], 'labels': labels[indices],
             'mask': (np.arange(batch_size) < count).astype(np.float32)}
    yield {k: shard(v, num_devices) for k, v in batch.items()}
