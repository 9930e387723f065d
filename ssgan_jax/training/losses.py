"""Losses of the semi-supervised GAN, as pure functions of logits and features.

Every discriminator "head" reduces to two things: the logits whose cross-entropy is
the supervised loss, and one real-vs-fake logit `s` with p(real | x) = sigmoid(s).
With that, the unsupervised discriminator loss and the non-saturating generator loss
are the same formula for every head:

  L_unl = 0.5 * mean softplus(-s(x_unl)) + 0.5 * mean softplus(s(G(z)))
  L_ns  = mean softplus(-s(G(z)))

(-log sigmoid(s) = softplus(-s); -log(1 - sigmoid(s)) = softplus(s).) The 0.5
weights follow the reference Theano code of Salimans et al. (2016).
"""
import dataclasses
from typing import Callable, Optional

import jax
import jax.numpy as jnp
import optax


def supervised_cross_entropy(logits_BxC: jax.Array, labels_B: jax.Array) -> jax.Array:
  """Mean softmax cross-entropy `-l_y + logsumexp(l)`."""
  log_z_B = jax.nn.logsumexp(logits_BxC, axis=-1)
  logit_y_B = jnp.take_along_axis(logits_BxC, labels_B[:, None], axis=-1)[:, 0]
  return jnp.mean(log_z_B - logit_y_B)


def unsupervised_real_fake(real_logit_unl_B: jax.Array, real_logit_fake_B: jax.Array,
                           real_target: float = 1.0) -> jax.Array:
  """`-0.5 mean log D(x_unl) - 0.5 mean log(1 - D(G(z)))` from real-vs-fake logits.

  One-sided label smoothing (Salimans et al. 2016, section 3.4): with `real_target` a < 1,
  the real term is the cross-entropy to target a, `-a log D(x) - (1 - a) log(1 - D(x))`,
  while generated examples keep target 0. Every head goes through its real-vs-fake logit
  s, so the same holds for all three: salimans (D(x) = Z / (Z + 1)), kplus1 (D(x) = 1 -
  softmax fake output) and two_head (D(x) = sigmoid of the separate output). The
  supervised cross-entropy and the generator's losses keep hard targets.
  """
  real_B = (real_target * jax.nn.softplus(-real_logit_unl_B)
            + (1 - real_target) * jax.nn.softplus(real_logit_unl_B))
  return 0.5 * (jnp.mean(real_B) + jnp.mean(jax.nn.softplus(real_logit_fake_B)))


def nonsaturating(real_logit_fake_B: jax.Array) -> jax.Array:
  """Non-saturating generator loss `-mean log D(G(z))`."""
  return jnp.mean(jax.nn.softplus(-real_logit_fake_B))


def feature_matching(features_unl_BxF: jax.Array, features_fake_BxF: jax.Array,
                     norm: str = 'l2', axis_name: Optional[str] = None) -> jax.Array:
  """Distance between the batch means of real and generated features.

  Averaged over features (as the reference code does): mean squared difference
  for `l2`, mean absolute difference for `l1`. Under pmap, `axis_name` makes the
  batch means global so the loss does not depend on how the batch is split.
  """
  mean_unl_F = jnp.mean(features_unl_BxF, axis=0)
  mean_fake_F = jnp.mean(features_fake_BxF, axis=0)
  if axis_name is not None:
    mean_unl_F = jax.lax.pmean(mean_unl_F, axis_name)
    mean_fake_F = jax.lax.pmean(mean_fake_F, axis_name)
  diff_F = mean_unl_F - mean_fake_F
  if norm == 'l2':
    return jnp.mean(jnp.square(diff_F))
  if norm == 'l1':
    return jnp.mean(jnp.abs(diff_F))
  raise ValueError(f'unknown feature matching norm {norm!r}; allowed: l1, l2')


def historical_averaging(params, past_mean_params) -> jax.Array:
  """`||theta - mean of past theta||^2`, summed over every parameter (Salimans et al. 2016, 3.3)."""
  return optax.tree.norm(jax.tree.map(jnp.subtract, params, past_mean_params), squared=True)


def update_past_mean(past_mean_params, params, step: jax.Array):
  """The mean of the parameters of steps 0..t, from that of 0..t-1 and theta_t (t = `step`).

  The mean of no steps is taken to be theta_0, so one rule covers step 0.
  """
  return optax.incremental_update(params, past_mean_params, 1.0 / (step + 1))


# Real-vs-fake logits, one per head.

def salimans_real_logit(logits_BxK: jax.Array) -> jax.Array:
  """K logits with an implicit fake logit 0: p(real) = Z / (Z + 1), so s = logsumexp(l)."""
  return jax.nn.logsumexp(logits_BxK, axis=-1)


def kplus1_real_logit(logits_BxK1: jax.Array) -> jax.Array:
  """K class logits plus an explicit fake logit last: s = logsumexp(l[:K]) - l[K]."""
  return jax.nn.logsumexp(logits_BxK1[:, :-1], axis=-1) - logits_BxK1[:, -1]


def two_head_real_logit(outputs_BxK1: jax.Array) -> jax.Array:
  """K softmax class logits plus a separate sigmoid real-vs-fake logit last."""
  return outputs_BxK1[:, -1]


@dataclasses.dataclass(frozen=True)
class Head:
  """How a discriminator's outputs are read for one unsupervised loss."""
  extra_outputs: int                      # outputs beyond the K class logits
  supervised_logits: Callable[[jax.Array], jax.Array]
  real_logit: Callable[[jax.Array], jax.Array]

  def class_logits(self, outputs_BxO: jax.Array, num_classes: int) -> jax.Array:
    """The K class logits used for prediction."""
    return outputs_BxO[:, :num_classes]


HEADS = {
    'salimans': Head(0, lambda out: out, salimans_real_logit),
    # Odena (2016): the supervised softmax runs over all K+1 outputs.
    'kplus1': Head(1, lambda out: out, kplus1_real_logit),
    'two_head': Head(1, lambda out: out[:, :-1], two_head_real_logit),
}

GEN_LOSSES = ('feature_matching', 'nonsaturating', 'both')
FEATURE_NORMS = ('l2', 'l1')
