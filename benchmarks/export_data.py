"""Exports a dataset's train and test splits to one .npz, for machines without TFDS.

  python -m benchmarks.export_data --flagfile=experiments/mnist.flags --data_dir=../shared/tfds --out=mnist.npz

`load` rebuilds the input pipeline's arrays (`input_pipeline.SemiSupervisedData`) from the
file for any --label_seed with `input_pipeline.split_train`, so they are the arrays that
reading TFDS gives.
"""
import os

from absl import flags
import numpy as np

from benchmarks import common_flags
from ssgan_jax import config as config_lib, main as ssgan_main
from ssgan_jax.data import input_pipeline
from ssgan_jax.config import Config, ConfigError


def read_splits(config: Config) -> dict:
  """The dataset's train and test splits and class count, read from TFDS."""
  info = input_pipeline.dataset_info(config)
  train_images, train_labels, test_images, test_labels = input_pipeline.read_train_test(
      config, info)
  return {'dataset': config.dataset, 'num_classes': info.num_classes,
          'train_images': train_images, 'train_labels': train_labels,
          'test_images': test_images, 'test_labels': test_labels}


def read_data(config: Config) -> dict:
  """What `read_splits` returns: from --data_npz when it is set, else from TFDS."""
  path = common_flags.DATA_NPZ.value
  return read_npz(path) if path else read_splits(config)


def read_npz(path: str) -> dict:
  """What `read_splits` returned, from a file written by this module."""
  with np.load(path) as f:
    splits = {k: f[k] for k in f.files}
  splits['dataset'], splits['num_classes'] = str(splits['dataset']), int(splits['num_classes'])
  return splits


def semi_supervised_data(config: Config, splits: dict) -> tuple[
    input_pipeline.DatasetInfo, input_pipeline.SemiSupervisedData]:
  """(info, arrays) of one run, split as `input_pipeline.load` splits TFDS data."""
  if splits['dataset'] != config.dataset:
    raise ConfigError('dataset', config.dataset, f"the exported data are {splits['dataset']}")
  train_images, train_labels = splits['train_images'], splits['train_labels']
  info = input_pipeline.DatasetInfo(num_classes=splits['num_classes'],
                                    image_shape=tuple(train_images.shape[1:]),
                                    train_size=len(train_labels))
  input_pipeline.check_against_dataset(config, info)
  return info, input_pipeline.split_arrays(config, info, train_images, train_labels,
                                           splits['test_images'], splits['test_labels'])


_OUT = flags.DEFINE_string('out', None, 'The .npz file to write.')


def main():
  if not _OUT.value.endswith('.npz'):
    raise ConfigError('out', _OUT.value, 'must end in .npz')
  config = ssgan_main.config_from_flags()
  config_lib.validate(config)
  splits = read_splits(config)
  # Written whole or not at all: an existing file survives a failed export.
  with open(_OUT.value + '.tmp', 'wb') as f:
    np.savez_compressed(f, **splits)
  os.replace(_OUT.value + '.tmp', _OUT.value)
  print(f'wrote {_OUT.value}')


if __name__ == '__main__':
  ssgan_main.define_flags()
  flags.mark_flag_as_required('out')
  common_flags.run(main)
