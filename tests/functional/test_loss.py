"""cross_entropy and nll_loss: forward against math per row, backward by gradcheck."""
import math

import numpy as np
import pytest
from hypothesis import given, strategies as st

import tinygnet as tg
from tinygnet.functional.activation import log_softmax
from tinygnet.functional.loss import cross_entropy, nll_loss


def t64(array, grad=True):
    return tg.tensor(array, dtype=np.float64, requires_grad=grad)


def cross_entropy_reference(logits, targets, reduction="mean", label_smoothing=0.0):
    """One row at a time with math.log/exp: -sum_k q_k log p_k."""
    losses = []
    for row, t in zip(np.asarray(logits, dtype=np.float64), targets):
        K = len(row)
        top = max(row)
        log_total = top + math.log(sum(math.exp(v - top) for v in row))
        loss = 0.0
        for k, v in enumerate(row):
            q = (1 - label_smoothing) * (k == t) + label_smoothing / K
            loss -= q * (v - log_total)
        losses.append(loss)
    if reduction == "mean":
        return sum(losses) / len(losses)
    if reduction == "sum":
        return sum(losses)
    return np.array(losses)


@given(N=st.integers(1, 6), K=st.integers(1, 7), label_smoothing=st.floats(0.0, 1.0),
       reduction=st.sampled_from(["mean", "sum", "none"]), seed=st.integers(0, 100))
def test_cross_entropy_matches_rows_and_gradcheck(N, K, label_smoothing, reduction, seed):
    rng = np.random.default_rng(seed)
    logits = rng.standard_normal((N, K)) * 3
    targets = rng.integers(0, K, size=N)
    loss = cross_entropy(t64(logits, grad=False), targets, reduction, label_smoothing)
    expected = cross_entropy_reference(logits, targets, reduction, label_smoothing)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-12, atol=1e-12)
    assert tg.gradcheck(lambda x: cross_entropy(x, targets, reduction, label_smoothing),
                        t64(logits))


def test_cross_entropy_gradient_is_softmax_minus_onehot(rng):
    logits = rng.standard_normal((4, 3))
    targets = np.array([2, 0, 1, 2])
    x = t64(logits)
    cross_entropy(x, tg.tensor(targets)).backward()
    p = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
    np.testing.assert_allclose(x.grad.numpy(), (p - np.eye(3)[targets]) / 4, rtol=1e-12)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_cross_entropy_is_stable_for_huge_logits(dtype):
    logits = np.array([[1e4, -1e4, 0.0], [1e4, -1e4, 0.0], [-1e4, -1e4, -1e4]], dtype=dtype)
    x = tg.tensor(logits, requires_grad=True)
    loss = cross_entropy(x, np.array([0, 1, 2]), reduction="none")
    assert loss.dtype == dtype
    np.testing.assert_allclose(loss.numpy(), [0.0, 2e4, math.log(3)], rtol=1e-6)
    loss.sum().backward()
    grad = x.grad.numpy()
    assert grad.dtype == dtype and np.isfinite(grad).all()
    np.testing.assert_allclose(grad, [[0, 0, 0], [1, -1, 0], [1 / 3, 1 / 3, -2 / 3]], atol=1e-6)


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
def test_cross_entropy_float32(rng, reduction):
    x = tg.tensor(rng.standard_normal((5, 4)).astype(np.float32), requires_grad=True)
    targets = np.array([0, 1, 2, 3, 0], dtype=np.int32)
    loss = cross_entropy(x, targets, reduction=reduction, label_smoothing=0.1)
    assert loss.dtype == np.float32
    loss.backward(np.ones(loss.shape, dtype=np.float32))
    assert x.grad.dtype == np.float32
    expected = cross_entropy_reference(x.numpy(), targets, reduction, 0.1)
    np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-5)


def test_targets_get_no_gradient(rng):
    x = t64(rng.standard_normal((3, 4)))
    targets = tg.tensor(np.array([1, 2, 3]))
    cross_entropy(x, targets).backward()
    assert targets.grad is None and x.grad is not None


def test_nll_loss_of_log_softmax_is_cross_entropy(rng):
    logits = rng.standard_normal((5, 4))
    targets = rng.integers(0, 4, size=5)
    for reduction in ("mean", "sum", "none"):
        expected = cross_entropy_reference(logits, targets, reduction)
        loss = nll_loss(log_softmax(t64(logits, False), dim=1), targets, reduction)
        np.testing.assert_allclose(loss.numpy(), expected, rtol=1e-12)
        assert tg.gradcheck(lambda x: nll_loss(x, targets, reduction), t64(logits))


@pytest.mark.parametrize("fn", [cross_entropy, nll_loss])
def test_bad_input(fn):
    x = tg.tensor(np.zeros((3, 4), dtype=np.float32))
    with pytest.raises(TypeError, match="integer class indices, got float32"):
        fn(x, np.array([0.0, 1.0, 2.0], dtype=np.float32))
    with pytest.raises(TypeError, match="integer class indices, got list"):
        fn(x, [0, 1, 2])
    with pytest.raises(ValueError, match="target 4 is out of range for K=4"):
        fn(x, np.array([0, 4, 1]))
    with pytest.raises(ValueError, match="target -1 is out of range for K=4"):
        fn(x, np.array([0, -1, 1]))
    with pytest.raises(ValueError, match=r"targets of shape \(2,\) .* logits of shape \(3, 4\)"):
        fn(x, np.array([0, 1]))
    with pytest.raises(ValueError, match=r"2-D logits \(N, K\), got shape \(4,\)"):
        fn(tg.tensor(np.zeros(4, dtype=np.float32)), np.array([0]))
    with pytest.raises(ValueError, match="reduction must be one of .* got 'avg'"):
        fn(x, np.array([0, 1, 2]), reduction="avg")
    with pytest.raises(TypeError, match="logits must be a floating-point tensor.*int64"):
        fn(tg.tensor(np.zeros((3, 4), dtype=np.int64)), np.array([0, 1, 2]))


def test_bad_label_smoothing():
    x = tg.tensor(np.zeros((3, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="label_smoothing must be in .* got 1.5"):
        cross_entropy(x, np.array([0, 1, 2]), label_smoothing=1.5)
