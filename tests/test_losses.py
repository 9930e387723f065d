"""Tests of ssgan_jax.training.losses against float64 NumPy formulas written from the math.

Inputs are float32 (JAX's default); every reference is computed in float64 from the
*same* float32 values, so the only error measured is the JAX computation's own.
The functions under test are called through `jax.jit` (as in training): eager
op-by-op dispatch compiles every primitive per shape and would make this file slow.
"""
import functools

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from ssgan_jax.training import losses

SHAPES = [(7, 10), (1, 2), (16, 3)]  # (B, K)
HEAD_NAMES = ['salimans', 'kplus1', 'two_head']
RTOL, ATOL = 1e-5, 1e-6              # float32 results on moderate inputs
BIG = 1e4
EXTREME_ATOL = 4e-3                  # a few float32 ulps at magnitude 1e4 (ulp ~ 1e-3)

ce = jax.jit(losses.supervised_cross_entropy)
ce_grad = jax.jit(jax.grad(losses.supervised_cross_entropy))
unl = jax.jit(losses.unsupervised_real_fake)
unl_grad = jax.jit(jax.grad(losses.unsupervised_real_fake, argnums=(0, 1)))
ns = jax.jit(losses.nonsaturating)
fm = jax.jit(losses.feature_matching, static_argnames=('norm', 'axis_name'))


# ---------------------------------------------------------------------------
# Float64 NumPy references (stable forms via np.logaddexp).

def np_softplus(x):
  return np.logaddexp(0.0, x)


def np_logsumexp(x):
  return np.logaddexp.reduce(x, axis=-1)


def np_cross_entropy(logits, labels):
  return np.mean(np_logsumexp(logits) - logits[np.arange(len(labels)), labels])


def np_softmax(x):
  e = np.exp(x - x.max(axis=-1, keepdims=True))
  return e / e.sum(axis=-1, keepdims=True)


def np_real_logit(head, out):
  """log p(real) - log p(fake), from each head's definition of p(real)."""
  if head == 'salimans':   # p(real) = Z / (Z + 1): K logits, implicit fake logit 0
    return np_logsumexp(out)
  if head == 'kplus1':     # p(real) = sum_{k<K} e^l_k / sum_{k<=K} e^l_k
    return np_logsumexp(out[:, :-1]) - out[:, -1]
  if head == 'two_head':   # p(real) = sigmoid(o_K)
    return out[:, -1]
  raise AssertionError(head)


def np_naive_p_real(head, out):
  """p(real | x) written directly from each paper's model, no log tricks."""
  if head == 'salimans':
    z = np.exp(out).sum(axis=-1)
    return z / (z + 1.0)
  if head == 'kplus1':
    e = np.exp(out)
    return e[:, :-1].sum(axis=-1) / e.sum(axis=-1)
  if head == 'two_head':
    return 1.0 / (1.0 + np.exp(-out[:, -1]))
  raise AssertionError(head)


def np_unsupervised(s_unl, s_fake):
  return 0.5 * np.mean(np_softplus(-s_unl)) + 0.5 * np.mean(np_softplus(s_fake))


def np_feature_matching(f_unl, f_fake, norm):
  diff = f_unl.mean(axis=0) - f_fake.mean(axis=0)
  return np.mean(diff ** 2) if norm == 'l2' else np.mean(np.abs(diff))


NUM_SUPERVISED = {'salimans': 0, 'kplus1': 1, 'two_head': 0}  # + K


def rand(rng, shape, scale=1.0):
  """Returns (float32 jax array, the same values as float64 numpy)."""
  x32 = (scale * rng.standard_normal(shape)).astype(np.float32)
  return jnp.asarray(x32), x32.astype(np.float64)


def close(actual, expected, rtol=RTOL, atol=ATOL):
  np.testing.assert_allclose(np.asarray(actual, np.float64), expected,
                             rtol=rtol, atol=atol)


# ---------------------------------------------------------------------------
# 1. Values on moderate random inputs.

@pytest.mark.parametrize('B,K', SHAPES)
def test_supervised_cross_entropy(B, K):
  rng = np.random.default_rng(0)
  logits, logits64 = rand(rng, (B, K), scale=3.0)
  labels = rng.integers(0, K, size=B)
  close(ce(logits, jnp.asarray(labels)), np_cross_entropy(logits64, labels))


@jax.jit
def _unl_ns(s_unl, s_fake, s_other):
  return (losses.unsupervised_real_fake(s_unl, s_fake), losses.nonsaturating(s_fake),
          losses.unsupervised_real_fake(s_unl, s_other))


@pytest.mark.parametrize('B', [1, 7, 16])
def test_unsupervised_and_nonsaturating(B):
  rng = np.random.default_rng(1)
  s_unl, s_unl64 = rand(rng, (B,), scale=4.0)
  s_fake, s_fake64 = rand(rng, (B,), scale=4.0)
  s_other, s_other64 = rand(rng, (B + 3,))  # batches may differ in size
  l_unl, l_ns, l_unl_other = _unl_ns(s_unl, s_fake, s_other)
  close(l_unl, np_unsupervised(s_unl64, s_fake64))
  close(l_ns, np.mean(np_softplus(-s_fake64)))
  close(l_unl_other, np_unsupervised(s_unl64, s_other64))


def test_heads_table():
  assert losses.HEADS['salimans'].real_logit is losses.salimans_real_logit
  assert losses.HEADS['kplus1'].real_logit is losses.kplus1_real_logit
  assert losses.HEADS['two_head'].real_logit is losses.two_head_real_logit
  assert [losses.HEADS[h].extra_outputs for h in HEAD_NAMES] == [0, 1, 1]


@functools.cache
def head_real_logits_and_losses(head):
  h = losses.HEADS[head]

  def fn(out_unl, out_fake):
    s_unl, s_fake = h.real_logit(out_unl), h.real_logit(out_fake)
    return (s_unl, s_fake, losses.unsupervised_real_fake(s_unl, s_fake),
            losses.nonsaturating(s_fake))
  return jax.jit(fn)


@pytest.mark.parametrize('head', HEAD_NAMES)
@pytest.mark.parametrize('B,K', SHAPES)
def test_real_logit_and_losses_per_head(head, B, K):
  """s = log p(real) - log p(fake) per head, and from it
  L_unl = -0.5 mean log D(x_unl) - 0.5 mean log(1 - D(G(z))), L_ns = -mean log D(G(z)),
  with D computed naively; for Salimans this is the paper's D = Z / (Z + 1) identity."""
  rng = np.random.default_rng(3)
  h = losses.HEADS[head]
  out_unl, out_unl64 = rand(rng, (B, K + h.extra_outputs), scale=2.0)
  out_fake, out_fake64 = rand(rng, (B + 2, K + h.extra_outputs), scale=2.0)
  s_unl, s_fake, l_unl, l_ns = head_real_logits_and_losses(head)(out_unl, out_fake)
  assert s_unl.shape == (B,) and s_fake.shape == (B + 2,)
  close(s_unl, np_real_logit(head, out_unl64))
  close(s_fake, np_real_logit(head, out_fake64))
  d_unl = np_naive_p_real(head, out_unl64)
  d_fake = np_naive_p_real(head, out_fake64)
  close(l_unl, -0.5 * np.mean(np.log(d_unl)) - 0.5 * np.mean(np.log(1.0 - d_fake)))
  close(l_ns, -np.mean(np.log(d_fake)))


@pytest.mark.parametrize('head', HEAD_NAMES)
def test_head_supervised_and_class_logits(head):
  B, K = 7, 10
  rng = np.random.default_rng(4)
  h = losses.HEADS[head]
  out, out64 = rand(rng, (B, K + h.extra_outputs), scale=3.0)
  labels = rng.integers(0, K, size=B)
  # kplus1: softmax over all K+1 outputs (Odena 2016); two_head: first K only.
  n_sup = K + NUM_SUPERVISED[head]
  sup = h.supervised_logits(out)
  assert sup.shape == (B, n_sup)
  close(sup, out64[:, :n_sup], rtol=0, atol=0)
  close(ce(sup, jnp.asarray(labels)), np_cross_entropy(out64[:, :n_sup], labels))
  cls = h.class_logits(out, K)
  assert cls.shape == (B, K)
  close(cls, out64[:, :K], rtol=0, atol=0)


def test_supervised_slice_matters():
  """Makes sure the test above can tell K outputs from K+1 apart."""
  rng = np.random.default_rng(4)
  _, out64 = rand(rng, (7, 11), scale=3.0)
  labels = rng.integers(0, 10, size=7)
  assert abs(np_cross_entropy(out64, labels)
             - np_cross_entropy(out64[:, :10], labels)) > 1e-3


# ---------------------------------------------------------------------------
# 2. Extreme logits: finite values and gradients, exact values where known.

def extreme_cases(B, O):
  rng = np.random.default_rng(6)
  one_huge = rng.standard_normal((B, O))
  one_huge[np.arange(B), rng.integers(0, O, size=B)] = BIG
  one_huge_neg = rng.standard_normal((B, O))
  one_huge_neg[:, 0] = -BIG
  cases = {
      'all_pos': np.full((B, O), BIG),
      'all_neg': np.full((B, O), -BIG),
      'mixed_signs': BIG * rng.choice([-1.0, 1.0], size=(B, O)),
      'uniform': rng.uniform(-BIG, BIG, size=(B, O)),
      'one_huge': one_huge,
      'one_huge_neg': one_huge_neg,
  }
  return {k: v.astype(np.float32).astype(np.float64) for k, v in cases.items()}


CASES = list(extreme_cases(1, 1))


@functools.cache
def head_losses_and_grads(head):
  """Jitted (ce, unl, ns) values and their gradients wrt both output batches."""
  h = losses.HEADS[head]

  def all_losses(o_unl, o_fake, labels):
    s_unl, s_fake = h.real_logit(o_unl), h.real_logit(o_fake)
    return (losses.supervised_cross_entropy(h.supervised_logits(o_unl), labels),
            losses.unsupervised_real_fake(s_unl, s_fake),
            losses.nonsaturating(s_fake))

  return jax.jit(lambda a, b, y: (all_losses(a, b, y),
                                  jax.jacrev(all_losses, argnums=(0, 1))(a, b, y)))


@pytest.mark.parametrize('case', CASES)
@pytest.mark.parametrize('head', HEAD_NAMES)
def test_head_losses_extreme_logits(head, case):
  B, K = 7, 10
  out_unl64 = extreme_cases(B, K + losses.HEADS[head].extra_outputs)[case]
  out_fake64 = out_unl64[::-1].copy()
  labels = np.arange(B) % K
  s_unl64, s_fake64 = np_real_logit(head, out_unl64), np_real_logit(head, out_fake64)
  n_sup = K + NUM_SUPERVISED[head]
  expected = (np_cross_entropy(out_unl64[:, :n_sup], labels),
              np_unsupervised(s_unl64, s_fake64),
              np.mean(np_softplus(-s_fake64)))
  values, grads = head_losses_and_grads(head)(
      jnp.asarray(out_unl64, jnp.float32), jnp.asarray(out_fake64, jnp.float32),
      jnp.asarray(labels))
  for name, value, ref, (g_unl, g_fake) in zip(['ce', 'unl', 'ns'], values, expected, grads):
    assert np.isfinite(value), name
    close(value, ref, rtol=1e-6, atol=EXTREME_ATOL)
    assert np.all(np.isfinite(g_unl)) and np.all(np.isfinite(g_fake)), name


@pytest.mark.parametrize('case', CASES)
@pytest.mark.parametrize('norm', ['l1', 'l2'])
def test_feature_matching_extreme_features(norm, case):
  f64 = extreme_cases(7, 5)[case]
  g64 = -f64[::-1]
  value, (gf, gg) = _fm_value_and_grad(norm)(jnp.asarray(f64, jnp.float32),
                                             jnp.asarray(g64, jnp.float32))
  assert np.isfinite(value)
  close(value, np_feature_matching(f64, g64, norm), rtol=1e-5, atol=EXTREME_ATOL)
  assert np.all(np.isfinite(gf)) and np.all(np.isfinite(gg))


@functools.cache
def _fm_value_and_grad(norm):
  return jax.jit(jax.value_and_grad(
      lambda a, b: losses.feature_matching(a, b, norm=norm), argnums=(0, 1)))


def test_softplus_losses_exact_at_extremes():
  ones = np.ones((5,), np.float32)  # numpy in, so no eager ops to compile
  # softplus(1e4) = 1e4 and softplus(-1e4) = 0 (to float32 precision).
  assert float(ns(-BIG * ones)) == pytest.approx(BIG, rel=1e-7)
  assert float(ns(BIG * ones)) == pytest.approx(0.0, abs=1e-30)
  # A confident, correct discriminator has zero loss; a confidently wrong one 1e4.
  assert float(unl(BIG * ones, -BIG * ones)) == pytest.approx(0.0, abs=1e-30)
  assert float(unl(-BIG * ones, BIG * ones)) == pytest.approx(BIG, rel=1e-7)
  assert float(unl(-BIG * ones, -BIG * ones)) == pytest.approx(BIG / 2, rel=1e-7)
  for s_unl, s_fake in [(BIG, -BIG), (-BIG, BIG), (BIG, BIG), (-BIG, -BIG)]:
    g_unl, g_fake = unl_grad(s_unl * ones, s_fake * ones)
    # d/ds softplus(-s) = -sigmoid(-s), which is -1 or 0 here; weights 0.5 / B.
    close(g_unl, np.full(5, -0.5 / 5 * (s_unl < 0)), atol=1e-12)
    close(g_fake, np.full(5, 0.5 / 5 * (s_fake > 0)), atol=1e-12)


def test_cross_entropy_exact_at_extremes():
  B, K = 4, 10
  labels = jnp.arange(B)
  right = np.full((B, K), -BIG, np.float32)
  right[np.arange(B), np.arange(B)] = BIG
  assert float(ce(jnp.asarray(right), labels)) == pytest.approx(0.0, abs=1e-6)
  # Label logit 0, another logit 1e4: the loss is the logit gap, 1e4.
  wrong = np.zeros((B, K), np.float32)
  wrong[:, K - 1] = BIG
  assert float(ce(jnp.asarray(wrong), labels)) == pytest.approx(BIG, rel=1e-6)
  # All logits equal and huge: log K whatever the magnitude.
  equal = np.full((B, K), BIG, np.float32)
  assert float(ce(jnp.asarray(equal), labels)) == pytest.approx(np.log(K), abs=EXTREME_ATOL)
  for x in (right, wrong, equal):
    close(ce_grad(jnp.asarray(x), labels),
          (np_softmax(x.astype(np.float64)) - np.eye(K)[:B]) / B, atol=1e-7)


@pytest.mark.parametrize('fn,x,expected', [
    (losses.salimans_real_logit, [BIG, BIG, BIG], BIG + np.log(3.0)),
    (losses.salimans_real_logit, [-BIG, -BIG, BIG], BIG),
    (losses.salimans_real_logit, [-BIG, -BIG, -BIG], -BIG + np.log(3.0)),
    (losses.kplus1_real_logit, [BIG, -BIG, -BIG], 2 * BIG),
    (losses.kplus1_real_logit, [-BIG, -BIG, BIG], -2 * BIG + np.log(2.0)),
    (losses.kplus1_real_logit, [BIG, BIG, BIG], np.log(2.0)),
    (losses.two_head_real_logit, [BIG, -BIG, -BIG], -BIG),
])
def test_real_logit_exact_at_extremes(fn, x, expected):
  value, grad = _sum_value_and_grad(fn)(jnp.asarray([x], jnp.float32))  # batch of 1
  assert float(value) == pytest.approx(expected, abs=EXTREME_ATOL)
  assert np.all(np.isfinite(grad))


@functools.cache
def _sum_value_and_grad(fn):
  return jax.jit(jax.value_and_grad(lambda a: fn(a).sum()))


# ---------------------------------------------------------------------------
# 3. Feature matching.

@jax.jit
def _fm_both_norms(f, g):
  return (losses.feature_matching(f, g, norm='l1'),
          losses.feature_matching(f, g, norm='l2'))


@pytest.mark.parametrize('B_unl,B_fake,F', [(7, 7, 10), (8, 5, 3), (1, 1, 1)])
def test_feature_matching_values(B_unl, B_fake, F):
  rng = np.random.default_rng(7)
  f, f64 = rand(rng, (B_unl, F))
  g, g64 = rand(rng, (B_fake, F), scale=2.0)
  l1, l2 = _fm_both_norms(f, g)
  close(l1, np_feature_matching(f64, g64, 'l1'))
  close(l2, np_feature_matching(f64, g64, 'l2'))


def test_feature_matching_l1_vs_l2():
  f = np.zeros((2, 2), np.float32)
  g = np.asarray([[1.0, -4.0], [3.0, 0.0]], np.float32)  # batch-mean diff (-2, 2)
  assert float(fm(f, g, norm='l1')) == pytest.approx(2.0)
  assert float(fm(f, g, norm='l2')) == pytest.approx(4.0)
  assert float(fm(f, g)) == pytest.approx(4.0)  # the default is l2


def test_feature_matching_unknown_norm():
  f = np.zeros((2, 3), np.float32)
  with pytest.raises(ValueError, match='l3'):
    fm(f, f, norm='l3')


@pytest.mark.parametrize('norm', ['l1', 'l2'])
def test_feature_matching_zero_for_equal_means(norm):
  rng = np.random.default_rng(8)
  f = rng.standard_normal((6, 4)).astype(np.float32)
  g = np.concatenate([2 * f.mean(axis=0) - f, f])  # other samples, same mean
  assert float(fm(jnp.asarray(f), jnp.asarray(g), norm=norm)) == pytest.approx(0.0, abs=1e-6)
  assert float(fm(jnp.asarray(f), jnp.asarray(f[::-1]), norm=norm)) == pytest.approx(0.0, abs=1e-6)
  _, (gf, gg) = _fm_value_and_grad(norm)(jnp.asarray(f), jnp.asarray(g))
  assert np.all(np.isfinite(gf)) and np.all(np.isfinite(gg))


# ---------------------------------------------------------------------------
# 4. Gradient of the supervised cross-entropy.

@pytest.mark.parametrize('B,K', SHAPES)
def test_cross_entropy_gradient(B, K):
  rng = np.random.default_rng(9)
  logits, logits64 = rand(rng, (B, K), scale=3.0)
  labels = rng.integers(0, K, size=B)
  close(ce_grad(logits, jnp.asarray(labels)),
        (np_softmax(logits64) - np.eye(K)[labels]) / B, rtol=1e-5, atol=1e-7)
