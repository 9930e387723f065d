"""The train loop of ssgan_jax.training.train in eager PyTorch, one device.

Per step, as in `ssgan_jax.training.train.train_step`: D is updated on labeled + unlabeled + fake
images (fakes from fresh latents, no gradient into G), its moving average is updated, then
G is updated on a separately shuffled unlabeled batch and new latents through the updated
D. Noise is on in both steps. Adam adds its epsilon inside the square root and follows the
config's learning rate schedule; evaluation uses D's bias-corrected moving average or its
raw parameters. Batches are the JAX input pipeline's, so both trainers see the same data;
noise and latents come from torch's generator seeded by `config.seed`, so they differ.
"""
import copy
import dataclasses
from typing import Callable, Optional

import numpy as np
import torch
from torch import nn

from benchmarks.torch_reference import losses, models
from ssgan_jax.config import (GEN_OUTPUT_LAYERS, WEIGHT_NORM_INITS, WEIGHT_NORM_SCALES, Config,
                              ConfigError, ema_decay)

# Images for the data-dependent init, as ssgan_jax.training.train.INIT_BATCH_SIZE (not imported: that
# module needs TensorFlow for its metric writers, and this one should run without it).
INIT_BATCH_SIZE = 500


def match_jax_precision(matmul_precision: str, device: str) -> dict:
  """Puts torch's float32 matmuls and cuDNN convolutions on CUDA at the precision of JAX's
  `matmul_precision`: TF32 at 'default' and 'high' (as XLA runs them on TF32 GPUs), full
  float32 at 'highest'. Process-wide torch settings, returned for the record."""
  if device != 'cuda':
    return {}
  tf32 = matmul_precision != 'highest'
  torch.backends.cuda.matmul.allow_tf32 = tf32
  torch.backends.cudnn.allow_tf32 = tf32
  return {'torch_matmul_tf32': tf32, 'torch_cudnn_tf32': tf32}


class Adam(torch.optim.Optimizer):
  """Adam with epsilon inside the square root: p -= lr(t) * m_hat / sqrt(v_hat + eps_root).

  `lr(t)` is the schedule at the 0-based update count, as optax applies it.
  """

  def __init__(self, params, schedule: Callable[[int], float], b1: float, b2: float = 0.999,
               eps_root: float = 1e-8):
    super().__init__(params, {'b1': b1, 'b2': b2, 'eps_root': eps_root})
    self.schedule = schedule
    self.count = 0

  @torch.no_grad()
  def step(self):
    lr = self.schedule(self.count)
    self.count += 1
    for group in self.param_groups:
      b1, b2 = group['b1'], group['b2']
      for p in group['params']:
        if p.grad is None:
          continue
        state = self.state[p]
        if not state:
          state['m'], state['v'] = torch.zeros_like(p), torch.zeros_like(p)
        m, v = state['m'], state['v']
        m.mul_(b1).add_(p.grad, alpha=1 - b1)
        v.mul_(b2).addcmul_(p.grad, p.grad, value=1 - b2)
        m_hat = m / (1 - b1 ** self.count)
        v_hat = v / (1 - b2 ** self.count)
        p.sub_(lr * m_hat / torch.sqrt(v_hat + group['eps_root']))


class Ema:
  """Moving average of parameters from zero, bias-corrected when read (optax.ema(debias=True))."""

  def __init__(self, params: dict, decay: float):
    self.decay, self.count = decay, 0
    self.averages = {name: torch.zeros_like(p) for name, p in params.items()}

  @torch.no_grad()
  def update(self, params: dict) -> None:
    self.count += 1
    for name, p in params.items():
      self.averages[name].mul_(self.decay).add_(p, alpha=1 - self.decay)

  def corrected(self) -> dict:
    return {name: a / (1 - self.decay ** self.count) for name, a in self.averages.items()}


# The settings this reference implements as ssgan_jax does, and the values it has for them.
IMPLEMENTED = {
    'model': tuple(models.MODEL_FAMILIES), 'unsup_loss': tuple(losses.HEADS),
    'mode': ('ssl', 'supervised'), 'gen_loss': ('feature_matching', 'nonsaturating', 'both'),
    'feature_norm': ('l2', 'l1'), 'weight_norm_init': WEIGHT_NORM_INITS,
    'weight_norm_scales': WEIGHT_NORM_SCALES, 'gen_output_layer': GEN_OUTPUT_LAYERS,
}
# Settings the reference reads, or that change only how ssgan_jax computes the same step. Any
# other one (historical averaging, label smoothing, minibatch discrimination, bfloat16
# compute, ...) it has only at its default.
OTHER_FIELDS = frozenset({
    'unsup_weight', 'gen_steps', 'gen_steps_until', 'minibatch_kernel_dim', 'minibatch_group_size', 'seed',
    'batch_size', 'eval_batch_size', 'num_steps', 'learning_rate', 'adam_beta1', 'lr_decay_fraction',
    'ema_decay', 'ema_horizon', 'eval_params', 'dataset', 'data_dir', 'num_labeled', 'label_seed',
    'label_selection', 'num_validation', 'parallel', 'conv_transpose', 'conv_input_gradient',
    'conv_kernel_gradient', 'steps_per_dispatch', 'data_on_device', 'donate_state',
    'checkpoint_every', 'keep_checkpoints', 'eval_every', 'log_every', 'sample_every', 'quiet',
    # The data: both frameworks train on the same arrays, read once by ssgan_jax's pipeline.
    'train_split', 'test_split', 'image_size',
    # How the noise is drawn (the reference draws its own) and the matmul precision (matched
    # on CUDA by match_jax_precision).
    'dropout_sampler', 'matmul_precision',
})


def unsupported_settings(config: Config) -> list[str]:
  """The settings of `config` this reference does not implement, as '--name=value': a
  comparison with them would compare different models. A Config field added since, at a
  value other than its default, counts as not implemented."""
  default = Config()
  unsupported = [f'--{name}={getattr(config, name)}' for name, allowed in IMPLEMENTED.items()
                 if getattr(config, name) not in allowed]
  for field in dataclasses.fields(config):
    name, value = field.name, getattr(config, field.name)
    if (name not in IMPLEMENTED and name not in OTHER_FIELDS
        and value != getattr(default, name)):
      unsupported.append(f'--{name}={value}')
  return unsupported


def check_supported(config: Config) -> None:
  """Raises ConfigError naming the first setting the reference does not implement."""
  unsupported = unsupported_settings(config)
  if unsupported:
    name, value = unsupported[0][2:].split('=', 1)
    raise ConfigError(name, value, 'the PyTorch reference does not implement it, so a '
                      'comparison would compare different models; use the default '
                      f'({getattr(Config(), name)!r}) to compare')


def learning_rate(config: Config, count: int) -> float:
  """`ssgan_jax.training.train.learning_rate_schedule` on the host, without a JAX call per step."""
  decay_steps = int(round(config.num_steps * config.lr_decay_fraction))
  if decay_steps == 0:
    return config.learning_rate
  into_decay = min(max(count - (config.num_steps - decay_steps), 0), decay_steps)
  return config.learning_rate * (1 - into_decay / decay_steps)


def gen_updates(config: Config, step: int) -> int:
  """G updates in train step `step`: --gen_steps, or one from --gen_steps_until on."""
  until = config.gen_steps_until
  return config.gen_steps if not until or step < until else 1


def step_of_gen_update(config: Config, count: int) -> int:
  """`ssgan_jax.training.train.step_of_gen_update` on the host."""
  k, until = config.gen_steps, config.gen_steps_until
  if not until:
    return count // k
  return min(count // k, until) + max(count - k * until, 0)


def global_norm(tensors) -> torch.Tensor:
  """The L2 norm of all `tensors` together (optax.tree.norm's counterpart)."""
  return torch.sqrt(sum(torch.sum(t.detach() * t.detach()) for t in tensors))


def grad_norm(params) -> torch.Tensor:
  return global_norm(p.grad for p in params if p.grad is not None)


class TorchTrainer:
  """Trains and evaluates one semi-supervised GAN (or supervised-only D) in PyTorch."""

  def __init__(self, config: Config, num_classes: int, image_shape: tuple,
               init_images_uint8: np.ndarray, device: str = 'cpu', compile: bool = False):
    self.config, self.num_classes, self.device = config, num_classes, torch.device(device)
    self.family = models.MODEL_FAMILIES[config.model]
    self.head = losses.HEADS[config.unsup_loss]
    self.ssl = config.mode == 'ssl'
    self.step = 0  # train steps taken
    torch.manual_seed(config.seed)
    schedule = lambda count: learning_rate(config, count)

    weight_norm = models.WeightNorm(config.weight_norm_init, config.weight_norm_scales)
    self.disc = self.family.discriminator(num_classes + self.head.extra_outputs, image_shape,
                                          weight_norm).to(self.device)
    init_images = self._to_input(init_images_uint8[:INIT_BATCH_SIZE])
    models.data_dependent_init(self.disc, init_images)  # in train mode: noise on
    self.disc_opt = Adam(self.disc.parameters(), schedule, config.adam_beta1)
    self.ema = Ema(dict(self.disc.named_parameters()), ema_decay(config))
    self.eval_disc = copy.deepcopy(self.disc).eval()
    self.gen = self.gen_opt = None
    if self.ssl:
      self.gen = self.family.generator(image_shape, weight_norm,
                                       config.gen_output_layer).to(self.device)
      models.data_dependent_init(self.gen, self._latents(len(init_images)))
      # G's schedule counts train steps, as ssgan_jax's does with several G updates a step.
      self.gen_opt = Adam(
          self.gen.parameters(),
          lambda count: learning_rate(config, step_of_gen_update(config, count)),
          config.adam_beta1)
    self._disc_fn, self._gen_fn = self.disc, self.gen
    if compile:
      self._disc_fn = torch.compile(self.disc)
      self._gen_fn = self.gen and torch.compile(self.gen)

  def _to_input(self, images_uint8: np.ndarray) -> torch.Tensor:
    return self.family.images_to_input(torch.as_tensor(images_uint8, device=self.device))

  def _latents(self, batch_size: int) -> torch.Tensor:
    """Uniform [0, 1) latents, as ssgan_jax.networks.models.sample_latent draws them."""
    return torch.rand(batch_size, models.LATENT_DIM, device=self.device)

  def train_step(self, batch: dict, latents: Optional[tuple] = None) -> dict:
    """One D update, then (in ssl mode) `gen_updates` G updates; returns 0-d metric tensors
    (G's from its last update).

    `latents`, if given, holds the BxZ latent arrays to use instead of fresh ones (for
    comparing against the JAX step): D's, then one per G update.
    """
    config, head = self.config, self.head
    x_lab = self._to_input(batch['labeled_images'])
    labels = torch.as_tensor(batch['labels'], device=self.device).long()
    b = len(x_lab)
    num_gen = gen_updates(config, self.step)
    self.step += 1
    z_disc, *z_gen = ([self._latents(b) for _ in range(1 + num_gen)] if latents is None
                      else [torch.as_tensor(np.array(z), device=self.device) for z in latents])

    # D's batch norm: one group per part, running averages from the real parts (as train_step).
    groups = ({'group_size': b, 'stats_groups': 2 if self.ssl else 1}
              if self.family.disc_batch_norm else {})
    if self.ssl:
      with torch.no_grad():
        fake = self._gen_fn(z_disc)
      d_inputs = torch.cat([x_lab, self._to_input(batch['unlabeled_images']), fake])
    else:
      d_inputs = x_lab
    outputs, _ = self._disc_fn(d_inputs, **groups)
    sup = losses.supervised_cross_entropy(head.supervised_logits(outputs[:b]), labels)
    metrics = {'sup_loss': sup, 'train_accuracy': (
        outputs[:b, :self.num_classes].argmax(-1) == labels).float().mean()}
    d_loss = sup
    if self.ssl:
      real_logit = head.real_logit(outputs[b:])
      unsup = losses.unsupervised_real_fake(real_logit[:b], real_logit[b:])
      d_loss = sup + config.unsup_weight * unsup
      metrics['unsup_loss'] = unsup
    self.disc_opt.zero_grad(set_to_none=True)
    d_loss.backward()
    metrics.update(disc_loss=d_loss, disc_grad_norm=grad_norm(self.disc.parameters()))
    self.disc_opt.step()
    metrics['disc_param_norm'] = global_norm(self.disc.parameters())
    self.ema.update(dict(self.disc.named_parameters()))
    if not self.ssl:
      return {k: v.detach() for k, v in metrics.items()}

    feature_matching = config.gen_loss in ('feature_matching', 'both')
    # G's step leaves D's running averages as they are (train_step drops them).
    groups = {'stats_groups': 0} if self.family.disc_batch_norm else {}
    if feature_matching:
      with torch.no_grad():  # G's gradient does not flow through the real images' pass
        _, real_features = self._disc_fn(self._to_input(batch['unlabeled_images_gen']),
                                         **groups)
    for z in z_gen:
      outputs, fake_features = self._disc_fn(self._gen_fn(z), **groups)
      g_loss = 0.0
      if feature_matching:
        g_loss = g_loss + losses.feature_matching(real_features, fake_features,
                                                  config.feature_norm)
      if config.gen_loss in ('nonsaturating', 'both'):
        g_loss = g_loss + losses.nonsaturating(head.real_logit(outputs))
      self.gen_opt.zero_grad(set_to_none=True)
      g_loss.backward(inputs=list(self.gen.parameters()))
      metrics.update(gen_loss=g_loss, gen_grad_norm=grad_norm(self.gen.parameters()))
      self.gen_opt.step()
    metrics['gen_param_norm'] = global_norm(self.gen.parameters())
    return {k: v.detach() for k, v in metrics.items()}

  @torch.no_grad()
  def eval_discriminator(self, which: str = 'ema') -> nn.Module:
    """D without noise, with its bias-corrected moving average ('ema') or raw parameters."""
    params = (self.ema.corrected() if which == 'ema' and self.ema.count > 0
              else dict(self.disc.named_parameters()))
    self.eval_disc.load_state_dict({**self.disc.state_dict(), **params})
    return self.eval_disc

  @torch.no_grad()
  def accuracy(self, images_uint8: np.ndarray, labels: np.ndarray, which: str = 'ema') -> float:
    """Fraction of `images_uint8` whose predicted class is `labels`."""
    disc = self.eval_discriminator(which)
    correct = torch.zeros((), device=self.device)
    size = self.config.eval_batch_size
    for start in range(0, len(labels), size):
      outputs, _ = disc(self._to_input(images_uint8[start:start + size]))
      labels_B = torch.as_tensor(labels[start:start + size], device=self.device)
      correct += (outputs[:, :self.num_classes].argmax(-1) == labels_B).sum()
    return float(correct) / len(labels)
