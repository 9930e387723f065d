"""A run restored from its workdir (config, model, state) for evaluation, prediction and pictures."""
import dataclasses
import os
from typing import Optional

import jax
import jax.numpy as jnp
import numpy as np
import orbax.checkpoint as ocp

from ssgan_jax import checkpointing, input_pipeline, train
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


def load(workdir: str, step: Optional[int] = None, data_dir: Optional[str] = None) -> Trained:
  """The checkpoint at `step` (default: the newest) in workdir; ConfigError if there is none."""
  if not os.path.isdir(os.path.join(workdir, 'checkpoints')):
    raise ConfigError('workdir', workdir, 'has no checkpoints/; train there first')
  manager = checkpointing.Checkpointer(workdir, Config()).manager
  steps = sorted(manager.all_steps())
  if not steps:
    raise ConfigError('workdir', workdir, 'has no checkpoints; train there first')
  step = steps[-1] if step is None else step
  if step not in steps:
    raise ConfigError('step', step, f'no checkpoint; {workdir} has steps '
                      + ', '.join(map(str, steps)))
  saved = manager.restore(step, args=ocp.args.Composite(config=ocp.args.JsonRestore()))['config']
  known = {f.name for f in dataclasses.fields(Config)}
  config = Config(**{k: v for k, v in saved.items() if k in known})
  if data_dir is not None:
    config = config.replace(data_dir=data_dir)
  info = input_pipeline.dataset_info(config)
  setup = train.Setup.create(config, info)
  example_dtype = jnp.float32 if setup.family.pixel_range is None else jnp.uint8
  abstract_state = jax.eval_shape(
      lambda x: train.create_train_state(setup, x),
      jax.ShapeDtypeStruct((train.INIT_BATCH_SIZE, *info.image_shape), example_dtype))
  state = manager.restore(step, args=ocp.args.Composite(
      state=ocp.args.StandardRestore(abstract_state)))['state']
  manager.close()
  return Trained(setup=setup, state=state, info=info, step=step)
