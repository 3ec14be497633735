"""Tests of mcjax.losses: exact values on tiny cases, masking, slow correction, InfoNCE."""

import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from mcjax import losses
from mcjax.contract.schema import CLOSE, EVAL, FAST, REALTIME, SLOW, TASKS

T = len(TASKS)
CTR, LVTR, LTR = TASKS.index("ctr"), TASKS.index("lvtr"), TASKS.index("ltr")


def _cfg(**kw):
  cfg = losses.loss_config()
  cfg.contrastive_weight = 0.0
  cfg.update(kw)
  losses.validate(cfg)
  return cfg


def _batch(kinds, labels, mask, weight=None):
  b = {"kind": jnp.asarray(kinds, jnp.int32), "labels": jnp.asarray(labels, jnp.float32),
       "label_mask": jnp.asarray(mask, jnp.float32),
       "user_id": jnp.arange(len(kinds), dtype=jnp.int32)}
  if weight is not None:
    b["weight"] = jnp.asarray(weight, jnp.float32)
  return b


def _tiny():
  """Two real-time samples; trained pairs: (0, ctr) z=0 y=1, (0, lvtr) z=log3 y=0,
  (1, ctr) z=log3 y=1."""
  logits = np.zeros((2, T), np.float32)
  labels, mask = np.zeros((2, T)), np.zeros((2, T))
  logits[0, LVTR] = logits[1, CTR] = math.log(3)
  labels[0, CTR] = labels[1, CTR] = 1
  mask[0, [CTR, LVTR]] = mask[1, CTR] = 1
  logits[1, LTR] = 50.0  # masked: must not matter
  return logits, labels, mask


def test_masked_bce_exact_values():
  logits, labels, mask = _tiny()
  total, terms = losses.compute_loss(
      {"logits": jnp.asarray(logits)}, _batch([REALTIME] * 2, labels, mask), _cfg())
  # sigmoid(log 3) = 3/4: -log(3/4) for a positive, -log(1/4) for a negative.
  assert float(terms["loss/bce_ctr"]) == pytest.approx((math.log(2) + math.log(4 / 3)) / 2)
  assert float(terms["loss/bce_lvtr"]) == pytest.approx(math.log(4))
  assert float(terms["loss/bce_ltr"]) == 0.0
  expected = (math.log(2) + math.log(4) + math.log(4 / 3)) / 3
  assert float(terms["loss/bce"]) == pytest.approx(expected)
  assert float(total) == pytest.approx(expected)
  assert float(terms["loss/n_bce_pairs"]) == 3.0
  # Task weights scale a task's pairs; the denominator stays the pair count.
  cfg = _cfg()
  cfg.task_weights.lvtr = 2.0
  total, _ = losses.compute_loss(
      {"logits": jnp.asarray(logits)}, _batch([REALTIME] * 2, labels, mask), cfg)
  assert float(total) == pytest.approx(expected + math.log(4) / 3)


def test_masked_pairs_and_padding_rows_have_zero_gradient():
  logits, labels, mask = _tiny()
  batch = _batch([REALTIME] * 3, np.r_[labels, np.ones((1, T))], np.r_[mask, np.ones((1, T))],
                 weight=[1.0, 1.0, 0.0])  # row 2 is padding
  grad = jax.grad(lambda z: losses.compute_loss({"logits": z}, batch, _cfg())[0])(
      jnp.asarray(np.r_[logits, np.full((1, T), 7.0)]))
  grad = np.asarray(grad)
  trained = np.r_[mask, np.zeros((1, T))] > 0
  assert np.all(grad[~trained] == 0.0)
  assert np.all(grad[trained] != 0.0)


def test_close_and_fast_samples_are_plain_bce():
  rng = np.random.default_rng(0)
  logits = rng.normal(size=(8, T)).astype(np.float32)
  labels = (rng.random((8, T)) < 0.3).astype(np.float32)
  plain = float(jnp.mean(optax.sigmoid_binary_cross_entropy(logits, labels)))
  for kind in (CLOSE, FAST, EVAL):
    total, terms = losses.compute_loss({"logits": jnp.asarray(logits)},
                                       _batch([kind] * 8, labels, np.ones((8, T))), _cfg())
    assert float(total) == pytest.approx(plain, rel=1e-6)
    assert float(terms["loss/slow_correction"]) == 0.0


def test_slow_correction_sign_bound_and_normalisation():
  logits, labels, mask = _tiny()
  slow_logits = np.zeros((1, T), np.float32)
  slow_logits[0, CTR], slow_logits[0, LVTR], slow_logits[0, LTR] = 2.0, 5.0, 1.0
  slow_labels, slow_mask = np.zeros((1, T)), np.zeros((1, T))
  slow_labels[0, [CTR, LVTR]] = 1
  slow_mask[0, [CTR, LVTR, LTR]] = 1  # (slow, ltr) has label 0: not a late positive, ignored
  batch = _batch([REALTIME, REALTIME, SLOW], np.r_[labels, slow_labels], np.r_[mask, slow_mask])
  z = jnp.asarray(np.r_[logits, slow_logits])
  cfg = _cfg(slow_logit_clip=3.0)
  (total, terms), grad = jax.value_and_grad(
      lambda z: losses.compute_loss({"logits": z}, batch, cfg), has_aux=True)(z)
  # Five trained pairs: three BCE pairs and two late positives, -min(2, 3) and -min(5, 3).
  assert float(terms["loss/n_slow_pairs"]) == 2.0
  assert float(terms["loss/slow_correction"]) == pytest.approx((-2.0 - 3.0) / 5)
  bce = (math.log(2) + math.log(4) + math.log(4 / 3)) / 5
  assert float(terms["loss/bce"]) == pytest.approx(bce)
  assert float(total) == pytest.approx(bce - 1.0)
  grad = np.asarray(grad)
  assert grad[2, CTR] == pytest.approx(-1 / 5)  # pushes the logit up
  assert grad[2, LVTR] == 0.0                   # above the clip: no push
  assert grad[2, LTR] == 0.0
  # The unbounded identity the bound cuts: -log s(z) + log(1 - s(z)) = -z.
  zs = jnp.linspace(-4.0, 2.5, 7)
  exact = -jax.nn.log_sigmoid(zs) + jax.nn.log_sigmoid(-zs)
  np.testing.assert_allclose(losses.slow_correction(zs, 3.0), exact, rtol=1e-5, atol=1e-5)


def _ref_info_nce(a, b, valid, temp, group=None):
  a = a / np.linalg.norm(a, axis=1, keepdims=True)
  b = b / np.linalg.norm(b, axis=1, keepdims=True)
  idx = np.flatnonzero(valid)
  out = []
  for i in idx:
    neg = [j for j in idx if j == i or group is None or group[j] != group[i]]
    s_ab = np.array([a[i] @ b[j] for j in neg]) / temp
    s_ba = np.array([b[i] @ a[j] for j in neg]) / temp
    d = a[i] @ b[i] / temp
    lse = lambda s: np.log(np.sum(np.exp(s)))  # noqa: E731
    out.append(0.5 * ((lse(s_ab) - d) + (lse(s_ba) - d)))
  return np.mean(out)


def test_info_nce_matches_reference_and_ignores_padding():
  rng = np.random.default_rng(1)
  a, b = rng.normal(size=(6, 4)), rng.normal(size=(6, 4))
  weight = np.array([1, 1, 0, 1, 1, 0], np.float32)
  group = np.array([10, 11, 12, 10, 13, 14])
  got = losses.info_nce(jnp.asarray(a), jnp.asarray(b), jnp.asarray(weight), 0.1)
  np.testing.assert_allclose(got, _ref_info_nce(a, b, weight > 0, 0.1), rtol=1e-5)
  got = losses.info_nce(jnp.asarray(a), jnp.asarray(b), jnp.asarray(weight), 0.1,
                        jnp.asarray(group))
  np.testing.assert_allclose(got, _ref_info_nce(a, b, weight > 0, 0.1, group), rtol=1e-5)
  a2, b2 = a.copy(), b.copy()
  a2[weight == 0], b2[weight == 0] = 100.0, 0.0  # padding rows: any value (zeros too)
  got2 = losses.info_nce(jnp.asarray(a2), jnp.asarray(b2), jnp.asarray(weight), 0.1)
  np.testing.assert_allclose(got2, _ref_info_nce(a, b, weight > 0, 0.1), rtol=1e-5)


def test_all_masks_zero_gives_zero_and_finite_gradients():
  cfg = _cfg(contrastive_weight=0.1, contrastive_author_weight=0.1)
  batch = _batch([REALTIME, SLOW, FAST], np.ones((3, T)), np.zeros((3, T)), weight=np.zeros(3))
  batch["author_id"] = jnp.zeros(3, jnp.int32)

  def f(z, v):
    out = {"logits": z, "sv_interest": v, "lv_interest": v * 2, "author_sv": v,
           "author_lv": jnp.zeros_like(v)}
    return losses.compute_loss(out, batch, cfg)

  (total, terms), grads = jax.value_and_grad(f, argnums=(0, 1), has_aux=True)(
      jnp.zeros((3, T)), jnp.zeros((3, 4)))
  assert float(total) == 0.0
  assert all(np.isfinite(float(v)) for v in terms.values())
  assert all(np.all(np.asarray(g) == 0.0) for g in grads)


def test_compute_loss_terms_keys_contrastive_and_jit():
  rng = np.random.default_rng(2)
  cfg = _cfg(contrastive_weight=0.1)
  out = {"logits": jnp.asarray(rng.normal(size=(4, T)), jnp.float32),
         "sv_interest": jnp.asarray(rng.normal(size=(4, 8)), jnp.float32),
         "lv_interest": jnp.asarray(rng.normal(size=(4, 8)), jnp.float32)}
  batch = _batch([REALTIME, CLOSE, FAST, SLOW], np.ones((4, T)), np.ones((4, T)))
  total, terms = jax.jit(lambda o, b: losses.compute_loss(o, b, cfg))(out, batch)
  assert set(terms) == {f"loss/bce_{t}" for t in TASKS} | {
      "loss/bce", "loss/slow_correction", "loss/contrastive", "loss/contrastive_author",
      "loss/total", "loss/n_bce_pairs", "loss/n_slow_pairs"}
  expected = (terms["loss/bce"] + terms["loss/slow_correction"]
              + 0.1 * terms["loss/contrastive"])
  assert float(total) == pytest.approx(float(expected), rel=1e-6)
  assert float(terms["loss/total"]) == float(total)
  with pytest.raises(ValueError, match="sv_interest"):
    losses.compute_loss({"logits": out["logits"]}, batch, cfg)


@pytest.mark.parametrize("key,value", [("contrastive_temperature", 0.0),
                                       ("contrastive_weight", -1.0),
                                       ("slow_logit_clip", float("inf"))])
def test_validate_names_the_key(key, value):
  cfg = losses.loss_config()
  cfg[key] = value
  with pytest.raises(ValueError, match=key):
    losses.validate(cfg)
  cfg = losses.loss_config()
  cfg.task_weights.ctr = -1.0
  with pytest.raises(ValueError, match="task_weights.ctr"):
    losses.validate(cfg)


def test_interest_info_nce_skips_rows_with_an_empty_history():
  """A row whose live (or short-video) history is empty only has the ESU's null vector on that
  side: it must not enter the interest InfoNCE, whatever its vectors are."""
  rng = np.random.default_rng(0)
  b, d = 6, 4
  out = {"logits": jnp.zeros((b, len(TASKS))),
         "sv_interest": jnp.asarray(rng.normal(size=(b, d)), jnp.float32),
         "lv_interest": jnp.asarray(rng.normal(size=(b, d)), jnp.float32)}
  batch = {"labels": jnp.zeros((b, len(TASKS))), "label_mask": jnp.zeros((b, len(TASKS))),
           "kind": jnp.full((b,), CLOSE), "user_id": jnp.arange(b),
           "sv_len": jnp.array([3, 3, 0, 3, 3, 2]), "lv_len": jnp.array([2, 0, 4, 1, 5, 1])}
  cfg = losses.loss_config()
  _, terms = losses.compute_loss(out, batch, cfg)
  moved = dict(out)
  for key in ("sv_interest", "lv_interest"):  # rows 1 and 2 have an empty history
    moved[key] = out[key].at[1:3].set(jnp.asarray(rng.normal(size=(2, d)), jnp.float32))
  _, terms_moved = losses.compute_loss(moved, batch, cfg)
  np.testing.assert_allclose(terms["loss/contrastive"], terms_moved["loss/contrastive"],
                             rtol=1e-6)
  keep = np.array([0, 3, 4, 5])
  want = losses.info_nce(out["sv_interest"][keep], out["lv_interest"][keep], jnp.ones(4),
                         cfg.contrastive_temperature, batch["user_id"][keep])
  np.testing.assert_allclose(terms["loss/contrastive"], want, rtol=1e-6)
  # gradients reach no vector of a skipped row
  g = jax.grad(lambda o: losses.compute_loss(o | {"logits": out["logits"]}, batch, cfg)[0])(
      {"sv_interest": out["sv_interest"], "lv_interest": out["lv_interest"]})
  assert np.all(np.asarray(g["sv_interest"][1:3]) == 0)
  assert np.all(np.asarray(g["lv_interest"][1:3]) == 0)
  assert np.any(np.asarray(g["sv_interest"][0]) != 0)


def test_info_nce_in_blocks_is_the_mean_of_each_blocks_loss():
  """contrastive_block=n: negatives only within n consecutive rows; the weighted mean of the
  rows' losses equals the reference computed block by block (padding and groups included)."""
  rng = np.random.default_rng(3)
  a, b = rng.normal(size=(8, 4)), rng.normal(size=(8, 4))
  weight = np.array([1, 1, 0, 1, 1, 1, 1, 0], np.float32)
  group = np.array([10, 11, 10, 10, 12, 13, 12, 14])
  got = losses.info_nce(jnp.asarray(a), jnp.asarray(b), jnp.asarray(weight), 0.1,
                        jnp.asarray(group), block=4)
  parts = [(_ref_info_nce(a[s], b[s], weight[s] > 0, 0.1, group[s]), np.sum(weight[s]))
           for s in (slice(0, 4), slice(4, 8))]
  want = sum(v * n for v, n in parts) / sum(n for _, n in parts)
  np.testing.assert_allclose(got, want, rtol=1e-5)
  whole = losses.info_nce(jnp.asarray(a), jnp.asarray(b), jnp.asarray(weight), 0.1,
                          jnp.asarray(group), block=8)  # one block: the plain loss
  np.testing.assert_allclose(whole, _ref_info_nce(a, b, weight > 0, 0.1, group), rtol=1e-5)
  with pytest.raises(ValueError, match="contrastive_block=3 does not divide the batch of 8"):
    losses.info_nce(jnp.asarray(a), jnp.asarray(b), jnp.asarray(weight), 0.1, block=3)
  cfg = losses.loss_config()
  cfg.contrastive_block = -1
  with pytest.raises(ValueError, match="loss.contrastive_block"):
    losses.validate(cfg)
