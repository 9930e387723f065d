"""The losses of ssgan_jax.training.losses in PyTorch: the same heads, formulas and 0.5 weights."""
import dataclasses
from typing import Callable

import torch
import torch.nn.functional as F

from ssgan_jax.training import losses as jax_losses


def supervised_cross_entropy(logits_BxC, labels_B):
  """Mean softmax cross-entropy `-l_y + logsumexp(l)`."""
  return F.cross_entropy(logits_BxC, labels_B)


def unsupervised_real_fake(real_logit_unl_B, real_logit_fake_B):
  """`-0.5 mean log D(x_unl) - 0.5 mean log(1 - D(G(z)))` from real-vs-fake logits."""
  return 0.5 * (F.softplus(-real_logit_unl_B).mean() + F.softplus(real_logit_fake_B).mean())


def nonsaturating(real_logit_fake_B):
  """Non-saturating generator loss `-mean log D(G(z))`."""
  return F.softplus(-real_logit_fake_B).mean()


def feature_matching(features_unl_BxF, features_fake_BxF, norm: str = 'l2'):
  """Mean squared (l2) or absolute (l1) difference of the batch-mean features."""
  diff_F = features_unl_BxF.mean(0) - features_fake_BxF.mean(0)
  if norm == 'l2':
    return diff_F.square().mean()
  if norm == 'l1':
    return diff_F.abs().mean()
  raise ValueError(f'unknown feature matching norm {norm!r}; allowed: l1, l2')


@dataclasses.dataclass(frozen=True)
class Head:
  """How a discriminator's outputs are read for one unsupervised loss."""
  extra_outputs: int
  supervised_logits: Callable[[torch.Tensor], torch.Tensor]
  real_logit: Callable[[torch.Tensor], torch.Tensor]


HEADS = {
    'salimans': Head(jax_losses.HEADS['salimans'].extra_outputs, lambda out: out,
                     lambda out: torch.logsumexp(out, -1)),
    'kplus1': Head(jax_losses.HEADS['kplus1'].extra_outputs, lambda out: out,
                   lambda out: torch.logsumexp(out[:, :-1], -1) - out[:, -1]),
    'two_head': Head(jax_losses.HEADS['two_head'].extra_outputs, lambda out: out[:, :-1],
                     lambda out: out[:, -1]),
}
