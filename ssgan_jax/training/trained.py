"""A run restored from its workdir (config, model, state) for evaluation, prediction and pictures.

It needs neither the dataset nor a writable workdir: the dataset's shape and class names are
saved beside the checkpoints, and the state is restored as a resumed run restores it.
"""
import dataclasses
import os
from typing import Optional

import jax
import numpy as np

from ssgan_jax.data import input_pipeline
from ssgan_jax.training import checkpointing, train
from ssgan_jax.config import Config, ConfigError


@dataclasses.dataclass(frozen=True)
class Trained:
  """A checkpoint's train state with the Setup its saved config builds."""
  setup: train.Setup
  state: train.TrainState
  info: input_pipeline.DatasetInfo
  step: int

  @property
  def config(self) -> Config:
    return self.setup.config

  def class_name(self, k: int) -> str:
    """The dataset's name for class k where it has names, else 'class k'."""
    names = getattr(self.info, 'class_names', None)
    return names[k] if names else f'class {k}'

  def class_probabilities(self, examples: np.ndarray, which: str = 'ema') -> np.ndarray:
    """NxK class probabilities of D (noise off) with raw or moving-average parameters."""
    variables = train.eval_disc_variables(self.setup, self.state, which)
    batch_size = min(self.config.eval_batch_size, len(examples))
    group = self.setup.eval_group_size()
    if group:  # whole groups of minibatch features, padded with the examples themselves
      batch_size = -(-batch_size // group) * group
    batches = input_pipeline.eval_batches(examples, np.zeros(len(examples), np.int32),
                                          batch_size, num_devices=1)
    return np.concatenate([np.asarray(_probabilities(self.setup, variables, batch['images'][0]))
                           [batch['mask'][0] > 0] for batch in batches])


@jax.jit(static_argnums=0)
def _probabilities(setup: train.Setup, variables: dict, examples):
  outputs, _ = setup.disc.apply(variables, setup.family.scale_pixels(examples),
                                group_size=setup.eval_group_size())
  return jax.nn.softmax(setup.head.class_logits(outputs, setup.num_classes), -1)


def saved_dataset_info(workdir: str, config: Config) -> input_pipeline.DatasetInfo:
  """The DatasetInfo saved in workdir; for a workdir from before it was saved, read from
  the dataset."""
  saved = checkpointing.read_dataset_info(workdir)
  if saved is None:
    return input_pipeline.dataset_info(config)
  known = {f.name for f in dataclasses.fields(input_pipeline.DatasetInfo)}
  return input_pipeline.DatasetInfo(**{k: v for k, v in saved.items() if k in known})


def load(workdir: str, step: Optional[int] = None, data_dir: Optional[str] = None) -> Trained:
  """The checkpoint at `step` (default: the newest) in workdir; ConfigError if there is none.

  `data_dir` replaces the saved config's (for evaluating on data that moved)."""
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    raise ConfigError('workdir', workdir, 'has no checkpoints/; train there first')
  checkpointer = checkpointing.Checkpointer(workdir, Config(), read_only=True)
  steps = checkpointer.all_steps()
  if not steps:
    raise ConfigError('workdir', workdir, 'has no checkpoints; train there first')
  step = steps[-1] if step is None else step
  if step not in steps:
    raise ConfigError('step', step, f'no checkpoint; {workdir} has steps '
                      + ', '.join(map(str, steps)))
  saved = checkpointer.restore_config(step)
  known = {f.name for f in dataclasses.fields(Config)}
  config = Config(**{k: v for k, v in saved.items() if k in known})
  if data_dir is not None:
    config = config.replace(data_dir=os.path.abspath(data_dir))
  info = saved_dataset_info(workdir, config)
  setup = train.Setup.create(config, info)
  state = checkpointer.restore(train.state_template(setup), step)
  checkpointer.manager.close()
  return Trained(setup=setup, state=state, info=info, step=step)
