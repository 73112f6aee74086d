"""SGD, Adam and AdamW against hand-computed updates and plain per-element references."""
import math

import numpy as np
import pytest

import tinygnet as tg
from tinygnet.optim import SGD, Adam, AdamW


def param(values, dtype=np.float32):
    return tg.tensor(np.asarray(values, dtype=dtype), requires_grad=True)


def run(optimizer, p, grads):
    """Apply one step per gradient; return the parameter values after each step."""
    history = []
    for g in grads:
        p.grad = tg.tensor(np.asarray(g, dtype=p.data.dtype))
        optimizer.step()
        history.append(p.data.copy())
    return history


# ---------------------------------------------------------------- SGD by hand
@pytest.mark.parametrize("options, expected", [
    # w = 1, gradients 1, 2, 3, lr 0.1.
    (dict(), [0.9, 0.7, 0.4]),
    # buffers 1, 0.9*1+2 = 2.9, 0.9*2.9+3 = 5.61
    (dict(momentum=0.9), [0.9, 0.61, 0.049]),
    # b = 1, then 0.9 + 0.5*2 = 1.9
    (dict(momentum=0.9, dampening=0.5), [0.9, 0.71]),
    # d = g + 0.9 b: 1 + 0.9 = 1.9; b = 2.9, d = 2 + 2.61 = 4.61
    (dict(momentum=0.9, nesterov=True), [0.81, 0.349]),
    # d = g + 0.1 w: 1 + 0.1 = 1.1 -> 0.89; 2 + 0.089 = 2.089 -> 0.6811
    (dict(weight_decay=0.1), [0.89, 0.6811]),
    # d = 1.1, b = 1.1 -> 0.89; d = 2.089, b = 0.99 + 2.089 = 3.079 -> 0.5821
    (dict(weight_decay=0.1, momentum=0.9), [0.89, 0.5821]),
], ids=["plain", "momentum", "dampening", "nesterov", "weight-decay", "decay-momentum"])
def test_sgd_by_hand(options, expected):
    p = param([1.0], np.float64)
    history = run(SGD([p], lr=0.1, **options), p, [[1.0], [2.0], [3.0]][:len(expected)])
    np.testing.assert_allclose(np.concatenate(history), expected, rtol=1e-12)


# ---------------------------------------------------------------- plain references
def sgd_reference(w, grads, lr, momentum, dampening, weight_decay, nesterov):
    """PyTorch's SGD, one element at a time in Python floats."""
    w = [float(v) for v in w.ravel()]
    buffers = [None] * len(w)
    for g in grads:
        for k, gk in enumerate(g.ravel()):
            d = float(gk) + weight_decay * w[k]
            if momentum:
                buffers[k] = d if buffers[k] is None else momentum * buffers[k] + (1 - dampening) * d
                d = d + momentum * buffers[k] if nesterov else buffers[k]
            w[k] -= lr * d
    return np.array(w)


def adam_reference(w, grads, lr, beta1, beta2, eps, weight_decay, decoupled):
    """Adam / AdamW with bias correction, one element at a time in Python floats."""
    w = [float(v) for v in w.ravel()]
    m, v = [0.0] * len(w), [0.0] * len(w)
    for t, g in enumerate(grads, start=1):
        for k, gk in enumerate(g.ravel()):
            gk = float(gk)
            if decoupled:
                w[k] *= 1 - lr * weight_decay
            else:
                gk += weight_decay * w[k]
            m[k] = beta1 * m[k] + (1 - beta1) * gk
            v[k] = beta2 * v[k] + (1 - beta2) * gk * gk
            m_hat, v_hat = m[k] / (1 - beta1 ** t), v[k] / (1 - beta2 ** t)
            w[k] -= lr * m_hat / (math.sqrt(v_hat) + eps)
    return np.array(w)


@pytest.mark.parametrize("options", [
    dict(lr=0.1, momentum=0.0, dampening=0.0, weight_decay=0.0, nesterov=False),
    dict(lr=0.05, momentum=0.9, dampening=0.0, weight_decay=5e-4, nesterov=False),
    dict(lr=0.05, momentum=0.8, dampening=0.0, weight_decay=1e-2, nesterov=True),
    dict(lr=0.02, momentum=0.9, dampening=0.3, weight_decay=0.0, nesterov=False),
])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_sgd_matches_reference(rng, options, dtype):
    w0 = rng.standard_normal((3, 4))
    grads = [rng.standard_normal((3, 4)) for _ in range(3)]
    p = param(w0, dtype)
    out = run(SGD([p], **options), p, grads)[-1]
    assert out.dtype == dtype
    tol = 1e-5 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out.ravel(), sgd_reference(w0, grads, **options), rtol=tol, atol=tol)


@pytest.mark.parametrize("cls, decoupled", [(Adam, False), (AdamW, True)])
@pytest.mark.parametrize("weight_decay", [0.0, 0.1])
@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_adam_matches_reference(rng, cls, decoupled, weight_decay, dtype):
    w0 = rng.standard_normal((2, 5))
    grads = [rng.standard_normal((2, 5)) for _ in range(3)]
    p = param(w0, dtype)
    out = run(cls([p], lr=0.01, betas=(0.8, 0.95), eps=1e-6, weight_decay=weight_decay), p, grads)[-1]
    assert out.dtype == dtype
    expected = adam_reference(w0, grads, 0.01, 0.8, 0.95, 1e-6, weight_decay, decoupled)
    tol = 1e-6 if dtype == np.float32 else 1e-12
    np.testing.assert_allclose(out.ravel(), expected, rtol=tol, atol=tol)


def test_adam_first_steps_by_hand():
    # Bias correction makes the first step exactly lr * g / (|g| + eps) = lr * sign(g).
    p = param([1.0, -2.0], np.float64)
    first, second = run(Adam([p], lr=0.1, eps=0.0), p, [[3.0, -0.5], [1.0, -0.5]])
    np.testing.assert_allclose(first, [0.9, -1.9], rtol=1e-12)
    # Step 2, first element: m = 0.09*3 + 0.1 = 0.37, v = 0.999*0.009 + 0.001 = 0.009991,
    # m_hat = 0.37 / 0.19, v_hat = 0.009991 / 0.001999. Second element: g constant, so lr * sign.
    step = 0.1 * (0.37 / 0.19) / math.sqrt(0.009991 / 0.001999)
    np.testing.assert_allclose(second, [0.9 - step, -1.8], rtol=1e-12)


def test_adamw_defaults_and_decay_apart_from_the_gradient():
    p = param([2.0], np.float64)
    optimizer = AdamW([p], lr=0.1)
    assert optimizer.param_groups[0]["weight_decay"] == 1e-2
    p.grad = tg.tensor(np.zeros(1))          # no gradient signal: only the decay acts
    optimizer.step()
    np.testing.assert_allclose(p.data, [2.0 * (1 - 0.1 * 1e-2)], rtol=1e-12)


# ---------------------------------------------------------------- groups, grads, lr
def test_param_groups_skip_decay_for_biases():
    w, b = param([1.0], np.float64), param([1.0], np.float64)
    optimizer = SGD([{"params": [w]}, {"params": [b], "weight_decay": 0.0}], lr=0.1, weight_decay=0.5)
    w.grad, b.grad = tg.tensor(np.ones(1)), tg.tensor(np.ones(1))
    optimizer.step()
    np.testing.assert_allclose(w.data, [1 - 0.1 * 1.5])
    np.testing.assert_allclose(b.data, [0.9])


def test_parameters_without_gradient_are_left_alone():
    a, b = param([1.0]), param([1.0])
    optimizer = SGD([a, b], lr=0.1, momentum=0.9)
    a.grad = tg.tensor(np.ones(1, np.float32))
    optimizer.step()
    assert b.data[0] == 1.0 and a.data[0] != 1.0
    assert list(optimizer.state) == [0]


def test_zero_grad_and_writable_lr():
    p = param([1.0], np.float64)
    optimizer = SGD(iter([p]), lr=0.1)          # any iterable
    p.grad = tg.tensor(np.ones(1))
    optimizer.param_groups[0]["lr"] = 0.5
    optimizer.step()
    np.testing.assert_allclose(p.data, [0.5])
    optimizer.zero_grad()
    assert p.grad is None


def test_grad_computed_by_backward_is_used():
    p = param([1.0, 2.0], np.float32)
    (p * p).sum().backward()                 # grad 2w
    SGD([p], lr=0.25).step()
    np.testing.assert_allclose(p.data, [0.5, 1.0])
    assert p.data.dtype == np.float32


@pytest.mark.parametrize("make, match", [
    (lambda ps: SGD(ps, lr=-1), "lr"),
    (lambda ps: SGD(ps, lr=0.1, nesterov=True), "nesterov"),
    (lambda ps: Adam(ps, betas=(0.9, 1.0)), "betas"),
    (lambda ps: SGD([], lr=0.1), "empty"),
    (lambda ps: SGD([{"params": ps}, {"params": ps}], lr=0.1), "more than one group"),
    (lambda ps: SGD([{"params": ps, "momentun": 0.9}], lr=0.1), "momentun"),
])
def test_bad_arguments(make, match):
    with pytest.raises(ValueError, match=match):
        make([param([1.0])])


@pytest.mark.parametrize("make", [
    lambda ps: SGD(ps, lr=0.1),
    lambda ps: SGD(ps, lr=0.1, weight_decay=0.1),
    lambda ps: SGD(ps, lr=0.1, momentum=0.9, weight_decay=0.1),
    lambda ps: SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=0.1),
    lambda ps: SGD(ps, lr=0.1, momentum=0.9, dampening=0.5),
    lambda ps: Adam(ps, lr=0.1, weight_decay=0.1),
    lambda ps: AdamW(ps, lr=0.1, weight_decay=0.1),
], ids=["sgd", "sgd-decay", "sgd-momentum-decay", "nesterov-decay", "dampening", "adam-decay",
        "adamw-decay"])
def test_step_leaves_the_gradient_untouched(rng, make):
    """step() reads p.grad and never writes it: a later reader (a gradient monitor, a second
    optimiser, a clipping step) must see the gradient backward made. Two steps on the same
    gradient, so a momentum buffer that aliased it would show too."""
    p = param(rng.standard_normal(5) + 2.0)
    grad = rng.standard_normal(5).astype(np.float32)
    p.grad = tg.tensor(grad.copy())
    optimizer = make([p])
    for _ in range(2):
        optimizer.step()
        np.testing.assert_array_equal(p.grad.data, grad)


# ---------------------------------------------------------------- checkpoints
@pytest.mark.parametrize("make", [
    lambda ps: SGD(ps, lr=0.1, momentum=0.9, nesterov=True, weight_decay=1e-3),
    lambda ps: Adam(ps, lr=0.01, weight_decay=1e-3),
    lambda ps: AdamW([{"params": ps[:1]}, {"params": ps[1:], "weight_decay": 0.0, "lr": 0.1}]),
], ids=["sgd", "adam", "adamw-groups"])
def test_state_dict_round_trip_continues_identically(rng, make):
    w0 = [rng.standard_normal((3, 2)), rng.standard_normal(4)]
    grads = [[rng.standard_normal(w.shape) for w in w0] for _ in range(5)]

    def steps(optimizer, params, grads):
        for gs in grads:
            for p, g in zip(params, gs):
                p.grad = tg.tensor(g.astype(np.float32))
            optimizer.step()

    params = [param(w) for w in w0]
    optimizer = make(params)
    steps(optimizer, params, grads[:2])
    saved = optimizer.state_dict()
    snapshot = [p.data.copy() for p in params]
    steps(optimizer, params, grads[2:])

    # The saved state is a copy: later steps did not change it.
    first_state = next(v for v in saved["state"][0].values() if isinstance(v, np.ndarray))
    assert first_state is not next(v for v in optimizer.state[0].values() if isinstance(v, np.ndarray))

    fresh = [param(w) for w in snapshot]
    resumed = make(fresh)
    resumed.param_groups[0]["lr"] = 123.0           # overwritten by the load
    resumed.load_state_dict(saved)
    assert resumed.param_groups[0]["lr"] == optimizer.param_groups[0]["lr"]
    steps(resumed, fresh, grads[2:])
    for p, q in zip(params, fresh):
        np.testing.assert_array_equal(p.data, q.data)
        assert q.data.dtype == np.float32


def test_load_state_dict_rejects_another_model():
    a = SGD([param([1.0]), param([1.0])], lr=0.1)
    b = SGD([param([1.0])], lr=0.1)
    with pytest.raises(ValueError, match="groups"):
        b.load_state_dict(a.state_dict())
    c = SGD([param([1.0, 2.0])], lr=0.1, momentum=0.9)
    p = param([1.0])
    d = SGD([p], lr=0.1, momentum=0.9)
    p.grad = tg.tensor(np.ones(1, np.float32))
    d.step()
    with pytest.raises(ValueError, match="shape"):
        c.load_state_dict(d.state_dict())


@pytest.mark.parametrize("make", [lambda ps: SGD(ps, lr=0.1), lambda ps: Adam(ps)], ids=["sgd", "adam"])
def test_load_state_dict_of_something_else_says_what_it_expected(make):
    optimizer = make([param([1.0])])
    for wrong in (None, {"momentum": 0.9}):
        with pytest.raises(TypeError, match="expected a dict with 'state' and 'param_groups'"):
            optimizer.load_state_dict(wrong)
