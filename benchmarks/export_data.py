"""Exports a dataset's train and test splits to one .npz, for machines without TFDS.

  python -m benchmarks.export_data --flagfile=experiments/mnist.flags --data_dir=../shared/tfds --out=mnist.npz

`load` rebuilds the input pipeline's arrays (`input_pipeline.SemiSupervisedData`) from the
file for any --label_seed with `input_pipeline.split_train`, so they are the arrays that
reading TFDS gives.
"""
from absl import app, flags
import numpy as np

from ssgan_jax.data import input_pipeline
from ssgan_jax import main as ssgan_main
from ssgan_jax.networks import xla_cpu
from ssgan_jax.config import Config, ConfigError


def read_splits(config: Config) -> dict:
  """The dataset's train and test splits and class count, read from TFDS."""
  info = input_pipeline.dataset_info(config)
  train_images, train_labels, test_images, test_labels = input_pipeline.read_train_test(
      config, info)
  return {'dataset': config.dataset, 'num_classes': info.num_classes,
          'train_images': train_images, 'train_labels': train_labels,
          'test_images': test_images, 'test_labels': test_labels}


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


def main(argv):
  xla_cpu.apply_entry_point_choice()
  del argv
  config = ssgan_main.config_from_flags()
  np.savez_compressed(_OUT.value, **read_splits(config))
  print(f'wrote {_OUT.value}')


if __name__ == '__main__':
  ssgan_main.define_flags()
  flags.mark_flag_as_required('out')
  app.run(main)
