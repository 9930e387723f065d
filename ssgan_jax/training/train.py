"""Train state, the per-device train and eval steps, and the training loop."""
import dataclasses
import functools
import os
import time
from typing import Any, Callable, Optional

from absl import logging
from etils import epy
import flax
import flax.struct
import jax
import jax.numpy as jnp
import numpy as np
import optax

# Lazy: clu imports TensorFlow, which training does not otherwise need.
with epy.lazy_imports():
  from clu import parameter_overview

from ssgan_jax.data import input_pipeline
from ssgan_jax.networks import kernels, models
from ssgan_jax.training import checkpointing, losses, metrics_record, multihost, parallel, plots
from ssgan_jax.config import (Config, ConfigError, check_divisible_by_devices, ema_decay,
                             lr_decay_start, with_group_size)

AXIS = 'batch'
# Per-step random streams: each folds the step key with its own id. G's k-th update after
# the first (--gen_steps) draws its latents and noise from these ids plus k * _NUM_STREAMS.
_NUM_STREAMS = 7
(_LABELED_NOISE, _UNLABELED_NOISE, _FAKE_NOISE, _DISC_LATENT, _GEN_LATENT,
 _GEN_UNLABELED_NOISE, _GEN_FAKE_NOISE) = range(_NUM_STREAMS)
# Images for the data-dependent initialisation, as in the reference code.
INIT_BATCH_SIZE = 500


class NonFiniteLossError(FloatingPointError):
  """Training produced a NaN or infinite loss."""


@flax.struct.dataclass
class TrainState:
  step: jax.Array
  disc_params: Any
  disc_constants: Any      # D's untrained variables: weight-norm scales, batch-norm averages
  disc_opt_state: Any
  disc_ema: optax.EmaState
  gen_params: Any          # G's fields are None in supervised mode
  gen_batch_stats: Any
  gen_opt_state: Any
  # Means of each player's past parameters, for historical averaging (else None).
  disc_past_mean: Any = None
  gen_past_mean: Any = None


@dataclasses.dataclass(frozen=True)
class Setup:
  """The pieces a run builds once from its config and dataset."""
  config: Config
  family: models.ModelFamily
  head: losses.Head
  num_classes: int
  image_shape: tuple
  disc: Any
  optimizer: optax.GradientTransformation      # D's
  gen_optimizer: optax.GradientTransformation  # G's: its schedule counts steps, not updates
  ema: optax.GradientTransformation

  @classmethod
  def create(cls, config: Config, info: input_pipeline.DatasetInfo) -> 'Setup':
    family = models.MODEL_FAMILIES[config.model]
    head = losses.HEADS[config.unsup_loss]
    return cls(config=config, family=family, head=head, num_classes=info.num_classes,
               image_shape=info.image_shape,
               disc=with_weight_norm(family.discriminator(
                   info.num_classes + head.extra_outputs, kernel_choices(config)).clone(
                       minibatch_kernels=config.minibatch_kernels,
                       minibatch_kernel_dim=config.minibatch_kernel_dim,
                       dtype=jnp.dtype(config.compute_dtype)), config),
               optimizer=adam(config, learning_rate_schedule(config)),
               gen_optimizer=adam(config, learning_rate_schedule(
                   config, functools.partial(step_of_gen_update, config))),
               ema=optax.ema(ema_decay(config), debias=True))

  def eval_group_size(self) -> Optional[int]:
    """The examples D's minibatch features compare, in training and evaluation alike (the
    features are sums over the group). None where D has no minibatch features."""
    if not self.config.minibatch_kernels:
      return None
    # Checkpoints from before the group size was saved grouped each device's share.
    return self.config.minibatch_group_size or self.config.batch_size // jax.device_count()

  def generator(self, axis_name: Optional[str]):
    generator = self.family.generator(self.image_shape, axis_name, kernel_choices(self.config))
    if hasattr(generator, 'output_layer'):
      generator = generator.clone(output_layer=self.config.gen_output_layer)
    return with_weight_norm(generator.clone(dtype=jnp.dtype(self.config.compute_dtype)),
                            self.config)


def with_weight_norm(module: flax.linen.Module, config: Config) -> flax.linen.Module:
  """`module` with the config's weight normalisation where it has the `weight_norm` field
  (models with batch norm have none, nor does the MLP generator, whose one weight-normalised
  layer starts at g = 1 and trains g, as the reference's does)."""
  if not hasattr(module, 'weight_norm'):
    return module
  return module.clone(weight_norm=models.WeightNorm(config.weight_norm_init,
                                                    config.weight_norm_scales))


def kernel_choices(config: Config) -> kernels.KernelChoices:
  """The config's kernel algorithms, 'auto' resolved for JAX's default backend."""
  return kernels.KernelChoices(config.conv_transpose, config.conv_input_gradient,
                               config.conv_kernel_gradient, config.dropout_sampler,
                               config.conv_tiny_maps).resolve()


def step_of_gen_update(config: Config, count):
  """The train step that makes G's update number `count` (from 0): --gen_steps a step, or
  one a step from --gen_steps_until on."""
  k, until = config.gen_steps, config.gen_steps_until
  if not until:
    return count // k
  return jnp.minimum(count // k, until) + jnp.maximum(count - k * until, 0)


def learning_rate_schedule(config: Config,
                           step_of_update: Callable = lambda count: count) -> optax.Schedule:
  """Constant, then linear to 0 over the last `lr_decay_fraction` of the steps, for an
  optimizer whose update number `count` is made by train step `step_of_update(count)`."""
  decay_start = lr_decay_start(config)
  if decay_start == config.num_steps:
    return optax.constant_schedule(config.learning_rate)
  schedule = optax.join_schedules(
      [optax.constant_schedule(config.learning_rate),
       optax.linear_schedule(config.learning_rate, 0.0, config.num_steps - decay_start)],
      [decay_start])
  return lambda count: schedule(step_of_update(count))


def adam(config: Config, schedule: optax.Schedule, eps_root: float = 1e-8):
  """The reference's Adam, which adds its epsilon inside the square root."""
  return optax.adam(schedule, b1=config.adam_beta1, eps=0.0, eps_root=eps_root)


def example_keys(step_key: jax.Array, stream: int, batch_size: int,
                 axis_name: Optional[str]) -> jax.Array:
  """One key per example of this device's shard, indexed by the example's global position."""
  offset = 0 if axis_name is None else jax.lax.axis_index(axis_name) * batch_size
  return jax.vmap(jax.random.fold_in, (None, 0))(
      jax.random.fold_in(step_key, stream), offset + jnp.arange(batch_size))


def create_train_state(setup: Setup, init_images_uint8: np.ndarray) -> TrainState:
  """Initialises D (data-dependent, on real images with noise on) and, in ssl mode, G.

  One compiled computation: run eagerly, each of the init's many small ops compiles on its own.
  """
  return jax.jit(functools.partial(_initial_state, setup))(init_images_uint8)


def _initial_state(setup: Setup, init_images_uint8: jax.Array) -> TrainState:
  config = setup.config
  init_key = jax.random.fold_in(jax.random.key(config.seed), 2**31 - 1)  # no train step uses it
  keys = functools.partial(example_keys, init_key, batch_size=len(init_images_uint8),
                           axis_name=None)
  disc_key, gen_key = jax.random.split(init_key)
  # In float32 whatever the compute dtype: a bfloat16 run starts from the float32 run's weights.
  disc_variables = setup.disc.clone(dtype=jnp.float32).init(
      disc_key, setup.family.scale_pixels(init_images_uint8), keys(_UNLABELED_NOISE))
  disc_params = disc_variables.pop('params')
  gen_params = gen_batch_stats = gen_opt_state = None
  if config.mode == 'ssl':
    gen_variables = setup.generator(None).clone(dtype=jnp.float32).init(
        gen_key, models.sample_latent(keys(_DISC_LATENT)))
    gen_params, gen_batch_stats = gen_variables['params'], gen_variables['batch_stats']
    gen_opt_state = setup.gen_optimizer.init(gen_params)
  history = config.historical_averaging > 0
  return TrainState(step=jnp.zeros([], jnp.int32), disc_params=disc_params,
                    disc_constants=disc_variables, disc_opt_state=setup.optimizer.init(disc_params),
                    disc_ema=setup.ema.init(disc_params), gen_params=gen_params,
                    gen_batch_stats=gen_batch_stats, gen_opt_state=gen_opt_state,
                    disc_past_mean=disc_params if history else None,
                    gen_past_mean=gen_params if history else None)


def eval_disc_variables(setup: Setup, state: TrainState, which: str) -> dict:
  """D's variables with raw parameters, or with their bias-corrected moving average."""
  params = state.disc_params
  if which == 'ema' and int(state.disc_ema.count) > 0:
    params = optax.tree.bias_correction(state.disc_ema.ema, ema_decay(setup.config),
                                        state.disc_ema.count)
  return {'params': params, **state.disc_constants}


def train_step(setup: Setup, state: TrainState, batch: dict,
               axis_name: Optional[str] = AXIS) -> tuple[TrainState, dict]:
  """One update of D (supervised + unsupervised loss) and then --gen_steps of G (one from
  --gen_steps_until on), on one device's shard.

  Gradients and metrics are averaged over `axis_name` (G's metrics are its last update's).
  Randomness comes from (seed, step, stream, global example index) only.
  """
  config, disc, head = setup.config, setup.disc, setup.head
  mean = (lambda x: x) if axis_name is None else functools.partial(jax.lax.pmean,
                                                                      axis_name=axis_name)
  batch_norm = setup.family.disc_batch_norm
  if batch_norm:
    disc = disc.clone(axis_name=axis_name)

  def disc_apply(variables, *args, **kwargs):
    """D's (outputs, features) and its updated batch-norm averages ({} without batch norm).

    With batch norm, D normalises with batch statistics in both players' steps, as the seed
    runs it in train mode (ssgan_jax.networks.resnet explains the per-group statistics).
    """
    if not batch_norm:
      return disc.apply(variables, *args, **kwargs), {}
    return disc.apply(variables, *args, mutable=['batch_stats'], **kwargs)
  step_key = jax.random.fold_in(jax.random.key(config.seed), state.step)
  x_lab = setup.family.scale_pixels(batch['labeled_images'])
  labels = batch['labels']
  b = x_lab.shape[0]
  keys = functools.partial(example_keys, step_key, batch_size=b, axis_name=axis_name)
  ssl = config.mode == 'ssl'

  if ssl:
    x_unl = setup.family.scale_pixels(batch['unlabeled_images'])
    generator = setup.generator(axis_name)
    gen_vars = {'params': state.gen_params, 'batch_stats': state.gen_batch_stats}
    fake, _ = generator.apply(gen_vars, models.sample_latent(keys(_DISC_LATENT)),
                              mutable=['batch_stats'])
    d_inputs = jnp.concatenate([x_lab, x_unl, jax.lax.stop_gradient(fake)])
    d_keys = jnp.concatenate([keys(_LABELED_NOISE), keys(_UNLABELED_NOISE), keys(_FAKE_NOISE)])
  else:
    d_inputs, d_keys = x_lab, keys(_LABELED_NOISE)
  history = config.historical_averaging > 0
  # Minibatch features compare groups of the saved size; batch norm (ResNet-18) normalises
  # each kind of batch (labeled, unlabeled, generated) on its own, in groups of b.
  group_size = setup.eval_group_size()
  disc_group_size = b if batch_norm else group_size
  # The running averages follow the real groups: labeled and, in ssl mode, unlabeled.
  stats_groups = {'stats_groups': 2 if ssl else 1} if batch_norm else {}

  def disc_loss(params):
    (outputs, _), updated = disc_apply({'params': params, **state.disc_constants}, d_inputs,
                                       d_keys, group_size=disc_group_size, **stats_groups)
    sup = losses.supervised_cross_entropy(head.supervised_logits(outputs[:b]), labels)
    metrics = {'sup_loss': sup, 'train_accuracy': jnp.mean(
        jnp.argmax(head.class_logits(outputs[:b], setup.num_classes), -1) == labels)}
    total = sup
    if ssl:
      real_logit = head.real_logit(outputs[b:])
      unsup = losses.unsupervised_real_fake(real_logit[:b], real_logit[b:],
                                            config.one_sided_label_smoothing)
      total = sup + config.unsup_weight * unsup
      metrics['unsup_loss'] = unsup
    if history:
      total += config.historical_averaging * losses.historical_averaging(
          params, state.disc_past_mean)
    return total, (metrics, updated)

  (d_loss, (metrics, updated)), d_grads = jax.value_and_grad(disc_loss, has_aux=True)(
      state.disc_params)
  d_grads = mean(d_grads)
  updates, disc_opt_state = setup.optimizer.update(d_grads, state.disc_opt_state,
                                                   state.disc_params)
  disc_params = optax.apply_updates(state.disc_params, updates)
  _, disc_ema = setup.ema.update(disc_params, state.disc_ema)
  metrics.update(disc_loss=d_loss, disc_grad_norm=optax.tree.norm(d_grads),
                 disc_param_norm=optax.tree.norm(disc_params))
  step = state.step
  if history:
    state = state.replace(disc_past_mean=losses.update_past_mean(
        state.disc_past_mean, state.disc_params, step))
  state = state.replace(step=step + 1, disc_params=disc_params,
                        disc_constants={**state.disc_constants, **updated},
                        disc_opt_state=disc_opt_state, disc_ema=disc_ema)
  if not ssl:
    return state, mean(metrics)

  disc_variables = {'params': disc_params, **state.disc_constants}
  feature_matching = config.gen_loss in ('feature_matching', 'both')
  if feature_matching:
    # Outside gen_loss: no gradient flows through the real images' pass, so none is computed.
    x_unl_gen = setup.family.scale_pixels(batch['unlabeled_images_gen'])
    (_, real_features), _ = disc_apply(disc_variables, x_unl_gen, keys(_GEN_UNLABELED_NOISE),
                                       group_size=group_size)
  past_mean = state.gen_past_mean

  def gen_loss(params, batch_stats, z, fake_keys):
    fake, updated = generator.apply({'params': params, 'batch_stats': batch_stats},
                                    z, mutable=['batch_stats'])
    (outputs, fake_features), _ = disc_apply(disc_variables, fake, fake_keys,
                                             group_size=group_size)
    loss = 0.0
    if feature_matching:
      loss += losses.feature_matching(real_features, fake_features, config.feature_norm,
                                      axis_name)
    if config.gen_loss in ('nonsaturating', 'both'):
      loss += losses.nonsaturating(head.real_logit(outputs))
    if history:
      loss += config.historical_averaging * losses.historical_averaging(params, past_mean)
    return loss, updated['batch_stats']

  if history:
    state = state.replace(gen_past_mean=losses.update_past_mean(
        past_mean, state.gen_params, step))
  def gen_update(k, state):
    """G's k-th update of this step: (state, (its loss, its gradients))."""
    stream = lambda name: keys(name + k * _NUM_STREAMS)
    (g_loss, gen_batch_stats), g_grads = jax.value_and_grad(gen_loss, has_aux=True)(
        state.gen_params, state.gen_batch_stats, models.sample_latent(stream(_GEN_LATENT)),
        stream(_GEN_FAKE_NOISE))
    g_grads = mean(g_grads)
    updates, gen_opt_state = setup.gen_optimizer.update(g_grads, state.gen_opt_state,
                                                        state.gen_params)
    return state.replace(gen_params=optax.apply_updates(state.gen_params, updates),
                         gen_batch_stats=gen_batch_stats,
                         gen_opt_state=gen_opt_state), (g_loss, g_grads)

  state, (g_loss, g_grads) = gen_update(0, state)
  for k in range(1, config.gen_steps):
    if config.gen_steps_until:
      # Every device takes the same branch (the step is global), so the collectives inside
      # run on all of them; a skipped update computes nothing.
      last = (g_loss, g_grads)
      state, (g_loss, g_grads) = jax.lax.cond(
          step < config.gen_steps_until, functools.partial(gen_update, k),
          lambda state: (state, last), state)
    else:
      state, (g_loss, g_grads) = gen_update(k, state)
  metrics.update(gen_loss=g_loss, gen_grad_norm=optax.tree.norm(g_grads),
                 gen_param_norm=optax.tree.norm(state.gen_params))
  return state, mean(metrics)


def eval_step(setup: Setup, disc_variables: Any, batch: dict) -> dict:
  """Correct predictions and example count on one device's shard, summed over devices."""
  outputs, _ = setup.disc.apply(disc_variables, setup.family.scale_pixels(batch['images']),
                                group_size=setup.eval_group_size())
  predictions = jnp.argmax(setup.head.class_logits(outputs, setup.num_classes), -1)
  correct = jnp.sum((predictions == batch['labels']) * batch['mask'])
  return jax.lax.psum({'correct': correct, 'count': jnp.sum(batch['mask'])}, AXIS)


def finite_means(step_metrics: list[dict], step: int) -> dict:
  """Means of the per-device metrics of the steps since the last check, the last being `step`.

  Each entry of `step_metrics` holds one call's metrics, shaped (devices,), or (devices, k)
  for a call that scans k steps. Raises NonFiniteLossError naming the first step with a NaN
  or infinite metric.
  """
  fetched = jax.device_get(step_metrics)
  per_step = {k: np.concatenate([m[k].reshape(m[k].shape[0], -1).mean(axis=0) for m in fetched])
              for k in fetched[0]}
  finite = np.all([np.isfinite(v) for v in per_step.values()], axis=0)
  if not finite.all():
    first = int(np.argmin(finite))
    values = ', '.join(f'{k}={v[first]:.6g}' for k, v in sorted(per_step.items()))
    raise NonFiniteLossError(
        f'training diverged at step {step - len(finite) + 1 + first}: {values}')
  return {k: float(np.mean(v)) for k, v in per_step.items()}


def state_template(setup: Setup) -> TrainState:
  """Zeros shaped like the train state (host arrays), to restore a checkpoint into."""
  shapes = jax.eval_shape(functools.partial(create_train_state, setup),
                          jax.ShapeDtypeStruct((2, *setup.image_shape), jnp.uint8))
  return jax.tree.map(lambda s: np.zeros(s.shape, s.dtype), shapes)


class Evaluator:
  """Accuracy of D on the trainer's devices, with the trainer's backend and replication."""

  def __init__(self, setup: Setup, trainer: parallel.DataParallelTrainer):
    self.setup, self.trainer = setup, trainer
    self.fn = trainer.distribute(functools.partial(eval_step, setup))

  def accuracy(self, state_replicated: TrainState, images, labels,
               which: Optional[str] = None) -> float:
    """Accuracy on (images, labels) with the EMA or raw parameters (default: the config's)."""
    variables = self.trainer.replicate(eval_disc_variables(
        self.setup, flax.jax_utils.unreplicate(state_replicated),
        which or self.setup.config.eval_params))
    totals = {'correct': 0.0, 'count': 0.0}
    for batch in input_pipeline.eval_batches(images, labels, self.setup.config.eval_batch_size,
                                             len(self.trainer.devices)):
      result = flax.jax_utils.unreplicate(self.fn(variables, batch))
      totals = {k: totals[k] + float(result[k]) for k in totals}
    return totals['correct'] / totals['count']


class DivergenceWatch:
  """Notices a run that explodes without a NaN: a loss or gradient norm grown GROWTH times
  past its first logged value (or past 1, if that is larger), or accuracy at chance."""
  GROWTH = 1e3
  WATCHED = ('disc_loss', 'gen_loss', 'disc_grad_norm', 'gen_grad_norm')

  def __init__(self, num_classes: int):
    self.num_classes, self.first, self.warnings = num_classes, {}, []

  def _warn(self, message: str) -> None:
    logging.warning('%s', message)
    self.warnings.append(message)

  def check_metrics(self, step: int, means: dict) -> None:
    for name in self.WATCHED:
      if name not in means:
        continue
      first_step, first = self.first.setdefault(name, (step, means[name]))
      if abs(means[name]) > self.GROWTH * max(abs(first), 1.0) and not self.warnings:
        self._warn(f'training is diverging: at step {step} {name}={means[name]:.3g}, over '
                   f'{self.GROWTH:.0f} times its {first:.3g} at step {first_step}; try a '
                   'lower --learning_rate')

  def check_accuracy(self, name: str, accuracy: float) -> None:
    chance = 1 / self.num_classes
    if accuracy <= 1.2 * chance:
      self._warn(f'{name} {accuracy:.4f} is at chance ({chance:.4f}, {self.num_classes} '
                 'classes): the model has not learned')


def check_fits_in_memory(setup: Setup, info: input_pipeline.DatasetInfo,
                         num_devices: int) -> None:
  """Raises ConfigError naming --batch_size where the step's input images alone (float32,
  every stream) with the train state (and on the host the data) cannot fit in memory.

  A lower bound: the activations need more, so what is refused could never run.
  """
  config = setup.config
  example_bytes = 4 * int(np.prod(setup.image_shape))
  streams = 5 if config.mode == 'ssl' else 1  # D: labeled, unlabeled, fake; G: two more
  state_bytes = sum(4 * int(np.prod(s.shape)) for s in jax.tree.leaves(state_template(setup)))
  device = jax.local_devices()[0]
  limit = (device.memory_stats() or {}).get('bytes_limit')
  if limit:
    needed, where = config.batch_size // num_devices * streams * example_bytes, 'device'
  else:  # devices share the host's memory, which also holds the data
    limit = os.sysconf('SC_PAGE_SIZE') * os.sysconf('SC_PHYS_PAGES')
    data_bytes = (info.train_size or 0) * example_bytes // 4
    needed, where = config.batch_size * streams * example_bytes + data_bytes, 'host'
  needed += state_bytes
  if needed > limit:
    raise ConfigError('batch_size', config.batch_size,
                      f'needs at least {needed / 2**30:.1f} GiB of {where} memory for its '
                      f'images and the train state, and the {where} has '
                      f'{limit / 2**30:.1f} GiB; use a smaller --batch_size')


def train_and_evaluate(config: Config, workdir: str,
                       stop_requested: Callable[[int], bool] = lambda step: False,
                       data: Optional[tuple[input_pipeline.DatasetInfo,
                                            input_pipeline.SemiSupervisedData]] = None) -> dict:
  """Trains to config.num_steps (resuming from workdir), evaluates on test, returns a summary.

  If stop_requested(step) turns True, saves a checkpoint at that step and returns
  {'step': step, 'stopped': True} without evaluating. `data`, if given, is (info, arrays)
  to train on instead of reading TFDS. Every computation runs at config.matmul_precision.
  """
  with jax.default_matmul_precision(config.matmul_precision):
    return _train_and_evaluate(config, workdir, stop_requested, data)


def _train_and_evaluate(config: Config, workdir: str, stop_requested: Callable[[int], bool],
                        data) -> dict:
  start_time = time.time()
  if jax.process_count() > 1 and config.parallel != 'pmap':
    raise ConfigError('parallel', config.parallel, 'only pmap runs over several processes')
  # The batch sizes before TFDS starts TensorFlow; the minibatch group size, which may come
  # from the checkpoint, again below.
  check_divisible_by_devices(config, jax.device_count())
  info = input_pipeline.dataset_info(config) if data is None else data[0]
  checkpointer = checkpointing.Checkpointer(workdir, config)
  config = with_group_size(config, jax.device_count(), checkpointer.saved_config())
  check_divisible_by_devices(config, jax.device_count())
  checkpointer.check_compatible(config)
  setup = Setup.create(config, info)
  check_fits_in_memory(setup, info, jax.device_count())
  # Restored before the data are read, so that an unreadable checkpoint is reported at once.
  restored = None
  if checkpointer.latest_step() is not None:
    restored = checkpointer.restore(state_template(setup))
  # Only a run that goes on writes into the workdir.
  checkpointing.write_dataset_info(workdir, info)

  data = input_pipeline.load(config, info) if data is None else data[1]
  if restored is None:
    init_images = data.unlabeled_images if config.mode == 'ssl' else data.labeled_images
    state = create_train_state(setup, init_images[:INIT_BATCH_SIZE])
  else:
    state = restored
    logging.info('Resumed from step %d.', int(state.step))
  parameter_overview.log_parameter_overview(state.disc_params, msg='Discriminator')
  if state.gen_params is not None:
    parameter_overview.log_parameter_overview(state.gen_params, msg='Generator')

  step = int(state.step)
  recorder = metrics_record.MetricsRecorder(workdir, config, step)
  trainer = parallel.DataParallelTrainer(functools.partial(train_step, setup), config, data,
                                         AXIS)
  evaluator = Evaluator(setup, trainer)
  watch = DivergenceWatch(setup.num_classes)
  train_seconds = lambda: round(recorder.earlier_train_seconds + time.time() - start_time, 2)
  try:
    state, step, stopped = _train_loop(setup, trainer, evaluator, watch, recorder, checkpointer,
                                       data, state, stop_requested, train_seconds)
  except NonFiniteLossError as e:
    checkpointer.close()  # a save in flight completes: the last good state stays restorable
    recorder.close()
    last = checkpointer.latest_step()
    raise NonFiniteLossError(
        f'{e}; no checkpoint holds it or a later step, so the newest (step {last}) is the last '
        'good state' if last is not None else
        f'{e}; no checkpoint was saved before it: start again with a lower --learning_rate'
    ) from None
  if stopped:
    return {'step': step, 'stopped': True}
  summary = _final_summary(setup, evaluator, watch, data, state, step)
  summary['wall_seconds'] = round(time.time() - start_time, 2)
  summary[metrics_record.TOTAL_SECONDS] = train_seconds()
  # The loop wrote this step's validation accuracy (or an earlier invocation did).
  recorder.write(step, {k: summary[k] for k in ('test_accuracy', 'test_accuracy_raw',
                                                'wall_seconds')},
                 {metrics_record.TOTAL_SECONDS: summary[metrics_record.TOTAL_SECONDS]})
  plots.write_curves(recorder.writer, workdir, step, plots.run_name(config, workdir))
  checkpointer.close()
  recorder.close()
  return summary


def _final_summary(setup: Setup, evaluator: Evaluator, watch: DivergenceWatch,
                   data: input_pipeline.SemiSupervisedData, state: TrainState,
                   step: int) -> dict:
  """The finished run's test (EMA and raw) and validation accuracies, precision and warnings."""
  config = setup.config
  summary = {'step': step,
             'test_accuracy': evaluator.accuracy(state, data.test_images, data.test_labels),
             'test_accuracy_raw': evaluator.accuracy(state, data.test_images, data.test_labels,
                                                     'raw')}
  if data.validation_labels.size:
    summary['validation_accuracy'] = evaluator.accuracy(state, data.validation_images,
                                                        data.validation_labels)
  watch.check_accuracy('test_accuracy', summary['test_accuracy'])
  summary.update(compute_dtype=config.compute_dtype, matmul_precision=config.matmul_precision)
  if watch.warnings:
    summary['warnings'] = watch.warnings
  return summary


def _train_loop(setup: Setup, trainer: parallel.DataParallelTrainer, evaluator: Evaluator,
                watch: DivergenceWatch, recorder: metrics_record.MetricsRecorder,
                checkpointer: checkpointing.Checkpointer, data: input_pipeline.SemiSupervisedData,
                state: TrainState, stop_requested: Callable[[int], bool],
                train_seconds: Callable[[], float]) -> tuple[TrainState, int, bool]:
  """Trains from state's step to num_steps, logging, evaluating, saving and drawing at their
  steps. Returns the replicated state, its step, and whether it stopped there on request
  (saved, and the recorder and checkpointer closed)."""
  config = setup.config
  step = int(state.step)
  state = trainer.replicate(state)
  batches = trainer.chunks(step)
  pending_metrics = []
  rate_since = (step, time.monotonic())
  while step < config.num_steps:
    num_steps = trainer.steps_in_call(step)
    state, metrics = trainer(state, next(batches))
    step += num_steps
    pending_metrics.append(metrics)
    is_last = step == config.num_steps
    stopping = stop_requested(step)
    # Metrics are checked before every checkpoint, so a non-finite state is never saved. Not
    # every step: fetching metrics would wait for each step's end, which stalls the device
    # queue; the first non-finite step is found among the pending ones instead.
    if (step % config.log_every == 0 or step % config.checkpoint_every == 0 or is_last
        or stopping):
      means = finite_means(pending_metrics, step)
      watch.check_metrics(step, means)
      # Wall-clock rate since the last write, evaluation and checkpoints included.
      means['steps_per_sec'] = (step - rate_since[0]) / (time.monotonic() - rate_since[1])
      recorder.write(step, means, {metrics_record.TRAIN_SECONDS: train_seconds()})
      pending_metrics, rate_since = [], (step, time.monotonic())
    if data.validation_labels.size and (step % config.eval_every == 0 or is_last):
      recorder.write(step, {'validation_accuracy': evaluator.accuracy(
          state, data.validation_images, data.validation_labels)})
    if step % config.checkpoint_every == 0 or is_last or stopping:
      checkpointer.save(step, flax.jax_utils.unreplicate(state), config)
    if (config.mode == 'ssl' and config.sample_every and step % config.sample_every == 0
        and multihost.is_writer()):
      plots.write_samples(recorder.writer, recorder.workdir, step, setup,
                          flax.jax_utils.unreplicate(state), data.unlabeled_images)
    recorder.update(step)
    if stopping and not is_last:
      recorder.close()
      logging.warning('Stopped at step %d on request; the checkpoint is saved.', step)
      checkpointer.close()
      return state, step, True
  recorder.bar.close()
  return state, step, False
