"""The whole network's backprop against finite differences: the proof the three-loss backward is right.

Every check runs in float64 with dropout off on a GoogLeNet small enough to
run in milliseconds (every channel count / 16, so 1 to 24 channels). The
gradient of the combined loss is checked with respect to the input and to
every parameter tensor of every layer, both aux heads included: a full
central-difference check on a few sampled elements of each tensor, and a
directional derivative along random directions that covers all of its
elements.

Biases are drawn at random, small and positive (not the initial zeros), so
that no ReLU input sits exactly on the kink at 0, where a finite difference
straddles two slopes, and so that no unit of these narrow layers is dead
for the whole batch (its weights would get no gradient to check). At this
width a unit is a single channel, and some seeds still leave one dead; the
seeds below leave none (``check_whole_network`` asserts it).

The finite-difference step is 1e-7, not gradcheck's 1e-6: a network has
hundreds of thousands of ReLU inputs (and batch norm puts many of them near
0), and a step crosses a kink about ten times less often at 1e-7; in float64
the rounding error of the difference, about 1e-16 / 1e-7, stays far below
the tolerance.
"""
import re
import time

import numpy as np
import pytest
from hypothesis import given, settings, strategies as st

import tinygnet
from tinygnet import GradcheckError, gradcheck
from tinygnet.models import GoogLeNet, googlenet_loss

SMALL = 1 / 16
NUM_CLASSES = 5
EPS = 1e-7


def tiny_googlenet(config="cifar", seed=0, batchnorm=False, width=SMALL):
    tinygnet.manual_seed(seed)
    model = GoogLeNet(num_classes=NUM_CLASSES, config=config, width=width, batchnorm=batchnorm,
                      dropout=0.0, aux_dropout=0.0).to(dtype=np.float64)
    rng = np.random.default_rng(seed)
    for name, p in model.named_parameters():
        if name.endswith("bias"):
            p.data[...] = rng.uniform(0.05, 0.25, p.shape)
        elif name.endswith("bn.weight"):
            p.data[...] = rng.uniform(0.5, 1.5, p.shape)
    return model.train()


def batch(config, n, seed=0):
    rng = np.random.default_rng(seed + 100)
    size = {"cifar": 32, "imagenet": 224}[config]
    x = tinygnet.tensor(rng.standard_normal((n, 3, size, size)), requires_grad=True)
    targets = rng.integers(0, NUM_CLASSES, size=n)
    return x, targets


def check_whole_network(model, x, targets, max_elements, n_directions):
    """Gradcheck the combined loss w.r.t. x and every parameter; name the tensor on failure."""
    names = ["input"] + [name for name, _ in model.named_parameters()]
    inputs = [x] + list(model.parameters())

    def total_loss(x, *params):       # the params are read through the model
        return googlenet_loss(model(x), targets, aux_weight=0.3).total

    # Every tensor gets a gradient, and a non-zero one: otherwise the check proves little.
    total_loss(*inputs).backward()
    dead = [name for name, t in zip(names, inputs)
            if t.grad is None or not np.abs(t.grad.numpy()).max() > 0]
    assert not dead, f"no gradient reaches {dead}"
    try:
        gradcheck(total_loss, inputs, eps=EPS, mode="full", max_elements=max_elements, seed=1)
        gradcheck(total_loss, inputs, eps=EPS, mode="directional", n_directions=n_directions,
                  seed=2)
    except GradcheckError as error:
        index = int(re.search(r"input (\d+)", str(error)).group(1))
        raise GradcheckError(f"{names[index]}: {error}") from None
    return len(inputs)


def test_whole_network_gradcheck_cifar(device):
    start = time.perf_counter()
    model = tiny_googlenet("cifar", seed=1).to(device)
    x, targets = batch("cifar", 2, seed=1)
    x = tinygnet.tensor(x.numpy(), requires_grad=True, device=device)
    n = check_whole_network(model, x, targets, max_elements=2, n_directions=1)
    assert n == 1 + 3 * 2 + 9 * 12 + 2 * 6 + 2        # input, stem, inceptions, aux heads, fc
    print(f"cifar whole-network gradcheck: {n} tensors in {time.perf_counter() - start:.1f} s")


@pytest.mark.slow
def test_whole_network_gradcheck_imagenet_224():
    start = time.perf_counter()
    model = tiny_googlenet("imagenet", seed=2)
    x, targets = batch("imagenet", 1, seed=2)
    n = check_whole_network(model, x, targets, max_elements=1, n_directions=1)
    print(f"imagenet whole-network gradcheck: {n} tensors in {time.perf_counter() - start:.1f} s")


@pytest.mark.slow
def test_whole_network_gradcheck_batchnorm_train_mode():
    start = time.perf_counter()
    model = tiny_googlenet("cifar", seed=0, batchnorm=True)
    assert model.conv1.bn.training
    x, targets = batch("cifar", 3, seed=0)
    n = check_whole_network(model, x, targets, max_elements=1, n_directions=1)
    print(f"batchnorm whole-network gradcheck: {n} tensors in {time.perf_counter() - start:.1f} s")


def head_gradients(model, x, targets, aux_weight):
    """dL/d(param) for L = total, main, aux1, aux2, from one forward (None where none reached)."""
    loss = googlenet_loss(model(x), targets, aux_weight=aux_weight)
    named = [("input", x)] + list(model.named_parameters())
    grads = {}
    for part in ("total", "main", "aux1", "aux2"):
        for _, t in named:
            t.grad = None
        getattr(loss, part).backward(retain_graph=True)
        grads[part] = {name: None if t.grad is None else t.grad.numpy() for name, t in named}
    return grads


@settings(max_examples=10)
@given(aux_weight=st.floats(0.0, 2.0), seed=st.integers(0, 2**16))
def test_total_gradient_is_main_plus_weighted_aux_gradients(aux_weight, seed):
    model = tiny_googlenet("cifar", seed=seed)
    x, targets = batch("cifar", 2, seed=seed)
    grads = head_gradients(model, x, targets, aux_weight)

    def g(part, name):
        value = grads[part][name]
        return np.zeros_like(grads["total"][name]) if value is None else value

    for name, total in grads["total"].items():
        expected = g("main", name) + aux_weight * (g("aux1", name) + g("aux2", name))
        scale = max(np.abs(expected).max(), 1e-30)
        np.testing.assert_allclose(total, expected, rtol=1e-9, atol=1e-12 * scale, err_msg=name)


def test_which_heads_reach_which_parameters():
    model = tiny_googlenet("cifar", seed=1)
    x, targets = batch("cifar", 2, seed=1)
    grads = head_gradients(model, x, targets, aux_weight=0.3)

    def reached_by(name):
        return {part for part in ("main", "aux1", "aux2")
                if grads[part][name] is not None and np.abs(grads[part][name]).max() > 0}

    expected_by_layer = {
        **{layer: {"main", "aux1", "aux2"} for layer in
           ("input", "conv1", "conv2_reduce", "conv2", "inception3a", "inception3b", "inception4a")},
        **{layer: {"main", "aux2"} for layer in ("inception4b", "inception4c", "inception4d")},
        **{layer: {"main"} for layer in ("inception4e", "inception5a", "inception5b", "fc")},
        "aux1": {"aux1"}, "aux2": {"aux2"},
    }
    for name in grads["total"]:
        layer = name.split(".")[0]
        assert reached_by(name) == expected_by_layer[layer], name
