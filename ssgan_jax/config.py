"""The run configuration: one frozen dataclass, validated before any expensive work."""
import dataclasses
import math
import os
from typing import Optional

from ssgan_jax.networks import kernels
from ssgan_jax.training import losses

MODELS = ('mlp', 'conv_small', 'conv_large', 'mlp_points', 'resnet18')
MODES = ('ssl', 'supervised')
PARALLEL_MODES = ('pmap', 'shard_map')
COMPUTE_DTYPES = ('float32', 'bfloat16')
MATMUL_PRECISIONS = ('default', 'high', 'highest')
EVAL_PARAMS = ('ema', 'raw')
LABEL_SELECTIONS = ('random', 'representative')
WEIGHT_NORM_INITS = ('data', 'unit')
WEIGHT_NORM_SCALES = ('output', 'all')
GEN_OUTPUT_LAYERS = ('weight_norm', 'plain')


def _field(default, help_text: str):
  return dataclasses.field(default=default, metadata={'help': help_text})


class ConfigError(ValueError):
  """A setting that cannot work; the message names the flag, the value and what is allowed."""

  def __init__(self, flag: str, value, allowed: str):
    if isinstance(value, str):  # bytes that are not UTF-8 reach argv as surrogates
      value = value.encode('utf-8', 'surrogateescape').decode('utf-8', 'backslashreplace')
    super().__init__(f'--{flag}={value}: {allowed}')


def check_utf8(name: str, value: Optional[str]) -> None:
  """Raises ConfigError if the flag's value holds bytes that are not UTF-8."""
  try:
    if value is not None:
      value.encode('utf-8')
  except UnicodeEncodeError:
    raise ConfigError(name, value, 'must be UTF-8 text') from None


@dataclasses.dataclass(frozen=True)
class Config:
  """Everything a run depends on. Library code reads this, never global flags."""
  dataset: str = _field('mnist', 'TFDS dataset with image and label features (mnist, svhn_cropped, cifar10, ...), or an embedded one: rings, digits.')
  data_dir: Optional[str] = _field(None, "TFDS data_dir; default is TFDS's own (which downloads).")
  model: str = _field('mlp', 'Model family: mlp (MNIST), conv_small (SVHN, widths 64/128), conv_large (CIFAR-10, 96/192), mlp_points (2-D points: rings), resnet18 (the ResNet-18 D of torchvision with batch norm and a DCGAN G; 32, 64, 128 or 224 px RGB).')
  mode: str = _field('ssl', 'ssl: semi-supervised GAN; supervised: the same D on the labeled images alone.')
  unsup_loss: str = _field('salimans', 'Discriminator head and unsupervised loss: salimans, kplus1 or two_head.')
  gen_loss: str = _field('feature_matching', 'Generator loss: feature_matching, nonsaturating or both.')
  feature_norm: str = _field('l2', 'Feature matching distance: l2 (MNIST reference) or l1 (CIFAR/SVHN reference).')
  unsup_weight: float = _field(1.0, "Weight of the unsupervised loss in D's loss.")
  weight_norm_init: str = _field('data', "Weight-normalised layers' scale g and bias at init: data (chosen from the init batch for zero-mean, unit-variance outputs: the reference) or unit (g = 1, bias 0; the MNIST generator's output layer starts so either way, as in the reference). Not resnet18.")
  weight_norm_scales: str = _field('output', 'Weight-normalised layers whose scale g trains: output (the output layers of D and G: the reference) or all. Not resnet18.')
  gen_output_layer: str = _field('weight_norm', "G's output layer: weight_norm (weight-normalised, its scale g trained, plus a bias: the reference) or plain (its kernel as it is, plus a bias). Not resnet18, whose DCGAN G has no weight norm.")
  # "Improved Techniques" switches (Salimans et al. 2016, section 3), all off by default.
  historical_averaging: float = _field(0.0, "Weight w of w * ||theta - mean of past theta||^2 "
                                       "added to each player's loss; 0 = off.")
  one_sided_label_smoothing: float = _field(1.0, "D's real-vs-fake target for real images (fakes "
                                            "keep 0), e.g. 0.9; 1 = off. ssl mode only.")
  minibatch_kernels: int = _field(0, "Minibatch discrimination kernels before D's output layer, "
                                  'e.g. 100; 0 = off.')
  minibatch_kernel_dim: int = _field(5, 'Dimension of each minibatch discrimination kernel.')
  minibatch_group_size: int = _field(0, 'Examples each minibatch discrimination feature compares, in training and evaluation on any device count (divides the per-device batch); 0: the per-device batch of the first run, saved with the checkpoint.')
  train_split: str = _field('train', "TFDS split string the run trains on (validation and labeled images are carved from it), e.g. 'train[:80%]'.")
  test_split: str = _field('test', "TFDS split string of the final test, e.g. 'train[80%:]' for a dataset without a test split.")
  image_size: Optional[int] = _field(None, "Side in pixels the images are resized to (antialiased, once, when read); default: the dataset's own size.")
  num_labeled: int = _field(100, 'Labeled training images, class-balanced (a multiple of the class count).')
  label_seed: int = _field(0, 'Seed that chooses the labeled subset.')
  label_selection: str = _field('random', 'Labeled subset: random (class-balanced) or representative (per class, the images nearest k-means centroids in PCA space).')
  num_validation: int = _field(5000, 'Train images held out for validation (model selection).')
  seed: int = _field(0, 'Seed for initialisation, batch order and noise.')
  batch_size: int = _field(100, 'Global batch per stream (labeled, unlabeled, generated); divides over devices.')
  eval_batch_size: int = _field(1000, 'Global evaluation batch; divides over devices.')
  # Speed: how the train step runs (only compute_dtype changes more than float rounding).
  parallel: str = _field('pmap', 'Data-parallel backend: pmap, or shard_map (the same per-device step over a 1-D device mesh).')
  compute_dtype: str = _field('float32', 'Compute dtype of D and G: float32, or bfloat16 (parameters and optimizer stay float32).')
  matmul_precision: str = _field('default', "Precision of float32 matmuls and convolutions (JAX's names): default (the backend's fastest: TF32 on recent NVIDIA GPUs), high or highest (full float32).")
  conv_transpose: str = _field('auto', "G's transposed convolutions: phases, subpixel, dilated (lax.conv_transpose) or auto (same values; see docs/flags.md).")
  conv_input_gradient: str = _field('auto', "Strided convolutions' input gradients: dilated (XLA's own), phases, subpixel or auto (same values; see docs/flags.md).")
  conv_kernel_gradient: str = _field('auto', "Convolutions' kernel gradients: patches, xla (XLA's own) or auto (same values; see docs/flags.md).")
  conv_tiny_maps: str = _field('auto', "Convolutions of maps of at most 2 x 2 pixels (ResNet-18's last stage at 64 px): patches (one matrix product), xla (XLA's own) or auto (patches on CPU; see docs/flags.md).")
  dropout_sampler: str = _field('auto', 'How dropout masks are drawn: bernoulli (jax.random.bernoulli), bits (a few bits per element) or auto (bits on CPU; same distribution).')
  steps_per_dispatch: int = _field(1, 'Train steps per compiled call (lax.scan); logging, evaluation and checkpoints still happen at their steps.')
  data_on_device: bool = _field(False, 'Keep the train images on each device and gather every batch there from host-drawn indices.')
  donate_state: bool = _field(True, "Donate the train state's buffers to the step, which updates them in place.")
  num_steps: int = _field(1000, 'Train steps in all (a resumed run continues to this).')
  gen_steps: int = _field(1, "G updates after each D update, each on fresh latents and the same unlabeled batch (the reference: 1). ssl mode only.")
  gen_steps_until: int = _field(0, 'If > 0, --gen_steps holds for the steps before this one and later steps make one G update (the early game only); 0: every step.')
  learning_rate: float = _field(0.003, 'Adam learning rate of D and G.')
  adam_beta1: float = _field(0.5, 'Adam beta1.')
  lr_decay_fraction: float = _field(0.0, 'Fraction of the steps, at the end, over which the rate falls linearly to 0.')
  ema_decay: float = _field(0.9999, "Decay of the bias-corrected moving average of D's parameters.")
  ema_horizon: float = _field(0.0, "If > 0, the average's time constant 1/(1 - decay) is at most this fraction of --num_steps (the decay is lowered to fit), so a short run's average forgets its first weights; 0: --ema_decay as given.")
  eval_params: str = _field('ema', 'Parameters evaluation uses: ema or raw.')
  checkpoint_every: int = _field(1000, 'Steps between checkpoints (one is also saved at the end).')
  keep_checkpoints: int = _field(3, 'Checkpoints kept (the newest).')
  eval_every: int = _field(1000, 'Steps between validation evaluations.')
  log_every: int = _field(100, 'Steps between metric writes.')
  # Feedback while training: pictures and progress.
  sample_every: int = _field(0, 'Steps between pictures of generated samples (PNG and TensorBoard); 0: none.')
  quiet: bool = _field(False, 'No progress bar or progress lines.')

  def replace(self, **changes) -> 'Config':
    return dataclasses.replace(self, **changes)


# Settings a resumed run may change; every other one must match the checkpoint.
RESUMABLE_FIELDS = frozenset({
    'data_dir', 'num_steps', 'checkpoint_every', 'keep_checkpoints', 'eval_every',
    'log_every', 'eval_batch_size', 'eval_params',
    'sample_every', 'quiet', 'parallel', 'conv_transpose', 'conv_input_gradient',
    'conv_kernel_gradient', 'conv_tiny_maps', 'matmul_precision', 'ema_horizon',
    'steps_per_dispatch', 'data_on_device', 'donate_state',
})


def _check_choice(config: Config, name: str, allowed) -> None:
  value = getattr(config, name)
  if value not in allowed:
    raise ConfigError(name, value, f'allowed: {", ".join(allowed)}')


def _check_at_least(config: Config, name: str, minimum) -> None:
  value = getattr(config, name)
  if value < minimum:
    raise ConfigError(name, value, f'must be >= {minimum}')


def validate(config: Config) -> None:
  """Raises ConfigError for a setting that is wrong whatever the data and devices."""
  for field in dataclasses.fields(config):
    if isinstance(getattr(config, field.name), str):
      check_utf8(field.name, getattr(config, field.name))
  _check_choice(config, 'model', MODELS)
  _check_choice(config, 'mode', MODES)
  _check_choice(config, 'unsup_loss', tuple(losses.HEADS))
  _check_choice(config, 'gen_loss', losses.GEN_LOSSES)
  _check_choice(config, 'feature_norm', losses.FEATURE_NORMS)
  _check_choice(config, 'eval_params', EVAL_PARAMS)
  _check_choice(config, 'label_selection', LABEL_SELECTIONS)
  _check_choice(config, 'weight_norm_init', WEIGHT_NORM_INITS)
  _check_choice(config, 'weight_norm_scales', WEIGHT_NORM_SCALES)
  _check_choice(config, 'gen_output_layer', GEN_OUTPUT_LAYERS)
  if config.model == 'resnet18':
    for name in ('weight_norm_init', 'weight_norm_scales', 'gen_output_layer'):
      if getattr(config, name) != getattr(Config(), name):
        weight_normalised = ', '.join(m for m in MODELS if m != 'resnet18')
        raise ConfigError(name, getattr(config, name), 'applies only to the weight-normalised '
                          f'models ({weight_normalised}); resnet18 has batch norm: use '
                          f'{getattr(Config(), name)}')
  _check_choice(config, 'parallel', PARALLEL_MODES)
  _check_choice(config, 'compute_dtype', COMPUTE_DTYPES)
  _check_choice(config, 'matmul_precision', MATMUL_PRECISIONS)
  _check_choice(config, 'conv_transpose', kernels.CONV_TRANSPOSE_ALGORITHMS)
  _check_choice(config, 'conv_input_gradient', kernels.INPUT_GRADIENTS)
  _check_choice(config, 'conv_kernel_gradient', kernels.KERNEL_GRADIENTS)
  _check_choice(config, 'conv_tiny_maps', kernels.TINY_MAP_ALGORITHMS)
  _check_choice(config, 'dropout_sampler', kernels.DROPOUT_SAMPLERS)
  for name in ('num_labeled', 'batch_size', 'eval_batch_size', 'checkpoint_every',
               'keep_checkpoints', 'eval_every', 'log_every', 'steps_per_dispatch', 'gen_steps'):
    _check_at_least(config, name, 1)
  for name in ('num_steps', 'num_validation', 'unsup_weight', 'seed', 'label_seed',
               'historical_averaging', 'minibatch_kernels', 'sample_every'):
    _check_at_least(config, name, 0)
  _check_at_least(config, 'minibatch_kernel_dim', 1)
  if config.image_size is not None:
    _check_at_least(config, 'image_size', 1)
  if config.num_steps >= 2**31:  # the step counter is int32
    raise ConfigError('num_steps', config.num_steps, f'must be < {2**31}')
  for field in dataclasses.fields(config):
    value = getattr(config, field.name)
    if isinstance(value, float) and not math.isfinite(value):
      raise ConfigError(field.name, value, 'must be a finite number')
  if not 0.5 < config.one_sided_label_smoothing <= 1:
    raise ConfigError('one_sided_label_smoothing', config.one_sided_label_smoothing,
                      'must be in (0.5, 1]; 1 = off')
  if config.mode != 'ssl' and config.gen_steps != 1:
    raise ConfigError('gen_steps', config.gen_steps,
                      'applies only to --mode=ssl (use 1 with --mode=supervised)')
  _check_at_least(config, 'gen_steps_until', 0)
  if config.gen_steps_until and config.gen_steps == 1:
    raise ConfigError('gen_steps_until', config.gen_steps_until,
                      'needs --gen_steps above 1 (or 0: off)')
  if config.mode != 'ssl' and config.one_sided_label_smoothing != 1:
    raise ConfigError('one_sided_label_smoothing', config.one_sided_label_smoothing,
                      'applies only to --mode=ssl (use 1 with --mode=supervised)')
  _check_at_least(config, 'minibatch_group_size', 0)
  if config.minibatch_kernels and config.minibatch_group_size:
    for name in ('batch_size', 'eval_batch_size'):
      if getattr(config, name) % config.minibatch_group_size:
        raise ConfigError(name, getattr(config, name), 'must be a multiple of '
                          f'--minibatch_group_size={config.minibatch_group_size}')
  elif config.minibatch_kernels and config.eval_batch_size % config.batch_size:
    raise ConfigError('eval_batch_size', config.eval_batch_size,
                      f'must be a multiple of --batch_size={config.batch_size} with '
                      '--minibatch_kernels (evaluation compares examples in groups of the '
                      "training batch's size)")
  if not config.learning_rate > 0:
    raise ConfigError('learning_rate', config.learning_rate, 'must be > 0')
  for name in ('adam_beta1', 'ema_decay'):
    if not 0 <= getattr(config, name) < 1:
      raise ConfigError(name, getattr(config, name), 'must be in [0, 1)')
  if not 0 <= config.lr_decay_fraction <= 1:
    raise ConfigError('lr_decay_fraction', config.lr_decay_fraction, 'must be in [0, 1]')
  if not 0 <= config.ema_horizon <= 1:
    raise ConfigError('ema_horizon', config.ema_horizon, 'must be in [0, 1]')


def ema_decay(config: Config) -> float:
  """The decay of D's moving average: --ema_decay, lowered where --ema_horizon asks for a
  time constant 1/(1 - decay) of at most ema_horizon * num_steps."""
  if not config.ema_horizon:
    return config.ema_decay
  return min(config.ema_decay, max(0.0, 1 - 1 / (config.ema_horizon * config.num_steps)))


def check_divisible_by_devices(config: Config, num_devices: int) -> None:
  """Global batch sizes must split evenly over the devices, and each device's share into
  whole minibatch discrimination groups."""
  group = config.minibatch_group_size if config.minibatch_kernels else 0
  for name in ('batch_size', 'eval_batch_size'):
    value = getattr(config, name)
    if value % num_devices:
      raise ConfigError(name, value, f'must be a multiple of the device count ({num_devices})')
    if group and value // num_devices % group:
      raise ConfigError('minibatch_group_size', group,
                        f'must divide each device\'s share of --{name}={value} '
                        f'({value // num_devices} on {num_devices} devices)')


def with_group_size(config: Config, num_devices: int, saved: Optional[dict]) -> Config:
  """`config` with minibatch_group_size 0 (the default) made concrete: the checkpoint's
  (`saved` config) if it has one, else the per-device share of the batch."""
  if not config.minibatch_kernels or config.minibatch_group_size:
    return config
  if saved and saved.get('minibatch_group_size'):
    return config.replace(minibatch_group_size=saved['minibatch_group_size'])
  return config.replace(minibatch_group_size=config.batch_size // num_devices)


def lr_decay_start(config: Config) -> int:
  """The step at which the learning rate starts to fall (num_steps if it never does)."""
  return config.num_steps - int(round(config.num_steps * config.lr_decay_fraction))


def check_schedule_kept(saved: dict, config: Config, step: int) -> None:
  """Raises ConfigError if resuming at `step` with config's num_steps would give steps
  already taken another learning rate than the checkpoint's run gave them, or if config's
  num_steps or ema_horizon would change the moving average's decay (ema_decay) mid-average."""
  if saved.get('num_steps') is None:
    return
  saved_horizon = saved.get('ema_horizon', 0.0)  # checkpoints from before the flag had none
  saved_decay = ema_decay(config.replace(num_steps=saved['num_steps'], ema_horizon=saved_horizon))
  if ema_decay(config) != saved_decay:
    name, kept = (('ema_horizon', saved_horizon) if saved_horizon != config.ema_horizon
                  else ('num_steps', saved['num_steps']))
    raise ConfigError(name, getattr(config, name),
                      f'the checkpoint (step {step}) averaged D with decay {saved_decay:.6g} '
                      f'(--num_steps={saved["num_steps"]}, --ema_horizon={saved_horizon}); '
                      f'this would change the decay mid-average; keep --{name}={kept} or use '
                      'a new --workdir')
  if not config.lr_decay_fraction or saved['num_steps'] == config.num_steps:
    return
  before = lr_decay_start(config.replace(num_steps=saved['num_steps']))
  if step > min(before, lr_decay_start(config)):
    raise ConfigError('num_steps', config.num_steps,
                      f'the checkpoint (step {step}) was trained to decay its rate from step '
                      f'{before} of --num_steps={saved["num_steps"]} '
                      f'(--lr_decay_fraction={config.lr_decay_fraction}); another --num_steps '
                      'would move the decay under steps already taken; keep '
                      f'--num_steps={saved["num_steps"]} or use a new --workdir')


def incompatible_fields(saved: dict, config: Config) -> list[str]:
  """Names of settings that differ from a checkpoint's and may not change on resume."""
  current = dataclasses.asdict(config)
  defaults = dataclasses.asdict(Config())  # what a checkpoint from before a field had
  return sorted(name for name in current
                if name not in RESUMABLE_FIELDS
                and saved.get(name, defaults[name]) != current[name])



# Intervals longer than the run shrink to num_steps // divisor (at least 1).
_INTERVAL_DIVISORS = {'log_every': 20, 'eval_every': 5, 'checkpoint_every': 2, 'sample_every': 4}


def resolve(config: Config) -> tuple[Config, list[str]]:
  """The config an entry point trains with, and a note per change: --data_dir made absolute
  (a workdir is then usable from any directory), and logging, evaluation, checkpoint and
  sample intervals longer than --num_steps shrunk so that a short run still shows progress."""
  changes, notes = {}, []
  if config.data_dir is not None and not os.path.isabs(config.data_dir):
    changes['data_dir'] = os.path.abspath(config.data_dir)
  for name, divisor in _INTERVAL_DIVISORS.items():
    value = getattr(config, name)
    if config.num_steps and value > config.num_steps:
      changes[name] = max(1, config.num_steps // divisor)
      notes.append(f'--{name}={value} is longer than --num_steps={config.num_steps}; '
                   f'using {changes[name]}')
  return config.replace(**changes), notes
