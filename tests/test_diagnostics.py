"""Gradient diagnostics: per-layer norms checked by hand, and the per-head split checked
against separate backward passes of each loss."""
import math

import numpy as np
import pytest

import tinygnet
from tinygnet import backend, nn
from tinygnet.diagnostics import GradientMonitor, LayerSplit, layer_groups, split_backward
from tinygnet.models import GoogLeNet, googlenet_loss
from tinygnet.tensor import Tensor

NETWORK_ORDER = ["conv1", "conv2_reduce", "conv2", "inception3a", "inception3b", "inception4a",
                 "inception4b", "inception4c", "inception4d", "inception4e", "inception5a",
                 "inception5b", "fc", "aux1", "aux2"]
ABOVE_AUX1 = NETWORK_ORDER[6:13]         # inception4b ... fc: aux1's loss never reaches them
ABOVE_AUX2 = NETWORK_ORDER[9:13]         # inception4e ... fc


def tiny_googlenet(aux=True, seed=0, device="cpu"):
    """A float64 GoogLeNet small enough for milliseconds a step; no dropout (deterministic)."""
    tinygnet.manual_seed(seed)
    model = GoogLeNet(10, config="cifar", aux=aux, width=1 / 16, stem_stride=2,
                      dropout=0.0, aux_dropout=0.0)
    return model.double().to(device)


def batch(rng, n=4, device="cpu"):
    x = Tensor(rng.standard_normal((n, 3, 32, 32)), device=device)
    y = backend.to_device(rng.integers(0, 10, n), device)
    return x, y


def grads_of(model):
    return {name: (None if p.grad is None else p.grad.numpy().copy())
            for name, p in model.named_parameters()}


def terms_of(losses, aux_weight=0.3):
    """GoogLeNet's three loss terms, as split_backward takes them."""
    return {"main": (losses.main, 1.0), "aux1": (losses.aux1, aux_weight),
            "aux2": (losses.aux2, aux_weight)}


def layer_vector(grads, layer):
    return np.concatenate([g.ravel() for name, g in grads.items() if name.split(".")[0] == layer])


# --------------------------------------------------------------------------- layers
def test_layer_groups_follow_the_network_with_the_aux_heads_last():
    model = tiny_googlenet()
    groups = layer_groups(model)
    assert list(groups) == NETWORK_ORDER
    assert [name for name, _ in groups["conv1"]] == ["conv1.weight", "conv1.bias"]


# --------------------------------------------------------------------------- monitor
def test_monitor_norms_and_ratios_match_a_hand_computation(rng, device):
    model = tiny_googlenet(device=device)
    x, y = batch(rng, device=device)
    googlenet_loss(model(x), y).total.backward()
    record = GradientMonitor(model).record(step=0)

    for i, (name, p) in enumerate(model.named_parameters()):
        assert record.names[i] == name
        assert record.grad_norms[i] == pytest.approx(np.linalg.norm(p.grad.numpy()), rel=1e-10)
        assert record.weight_norms[i] == pytest.approx(np.linalg.norm(p.numpy()), rel=1e-10)
        if record.weight_norms[i] > 0:      # biases start at zero: their ratio is inf
            assert record.ratios[i] == pytest.approx(record.grad_norms[i] / record.weight_norms[i])
        else:
            assert record.ratios[i] == math.inf

    table = record.by_layer()
    assert list(table) == NETWORK_ORDER
    for layer in ("conv1", "inception4c", "aux2"):
        g = np.concatenate([p.grad.numpy().ravel() for name, p in model.named_parameters()
                            if name.startswith(layer + ".")])
        w = np.concatenate([p.numpy().ravel() for name, p in model.named_parameters()
                            if name.startswith(layer + ".")])
        assert table[layer]["grad_norm"] == pytest.approx(np.linalg.norm(g), rel=1e-10)
        assert table[layer]["ratio"] == pytest.approx(np.linalg.norm(g) / np.linalg.norm(w), rel=1e-10)


def test_monitor_counts_a_missing_gradient_as_zero_and_works_in_float32(rng):
    layer = nn.Linear(3, 2)
    layer.weight.grad = Tensor(np.full((2, 3), 2.0, dtype=np.float32))    # bias: no gradient
    record = GradientMonitor(layer).record(0)
    assert record.names == ("weight", "bias")
    np.testing.assert_allclose(record.grad_norms, [math.sqrt(24.0), 0.0], rtol=1e-6)
    assert math.isnan(record.ratios[1])          # zero bias, no gradient: 0 / 0
    monitor = GradientMonitor(layer)
    monitor.record(5)
    assert [(row["step"], row["parameter"]) for row in monitor.rows()] == [(5, "weight"), (5, "bias")]


def test_monitor_off_or_not_due_does_nothing_and_installs_no_hooks(rng):
    model = tiny_googlenet()
    off = GradientMonitor(model, enabled=False)
    assert off.record(0) is None and off.history == []          # even with no .grad anywhere
    assert all(not m._forward_hooks for m in model.modules())

    sparse = GradientMonitor(model, every=3)
    x, y = batch(rng)
    googlenet_loss(model(x), y).total.backward()
    for step in range(7):
        sparse.record(step)
    assert [r.step for r in sparse.history] == [0, 3, 6]
    rows = list(sparse.rows())
    assert len(rows) == 3 * len(list(model.parameters()))
    assert set(rows[0]) == {"step", "layer", "parameter", "grad_norm", "weight_norm", "ratio"}


@pytest.mark.parametrize("every", [0, -1, 1.5, True])
def test_monitor_rejects_a_bad_every(every):
    with pytest.raises(ValueError, match="every"):
        GradientMonitor(nn.Linear(2, 2), every=every)


# --------------------------------------------------------------------------- split
def test_split_backward_leaves_the_gradient_of_the_total_loss(rng, device):
    model = tiny_googlenet(device=device)
    x, y = batch(rng, device=device)
    googlenet_loss(model(x), y, aux_weight=0.3).total.backward()
    expected = grads_of(model)

    model.zero_grad()
    split_backward(model, terms_of(googlenet_loss(model(x), y, aux_weight=0.3)))
    for name, g in grads_of(model).items():
        np.testing.assert_allclose(g, expected[name], rtol=1e-10, atol=1e-14, err_msg=name)


def test_split_contributions_are_each_heads_own_gradient(rng):
    """Each head's part equals a backward of that loss alone (times its weight)."""
    model = tiny_googlenet()
    x, y = batch(rng)
    alone = {}
    for head, weight in [("main", 1.0), ("aux1", 0.3), ("aux2", 0.3)]:
        model.zero_grad()
        (getattr(googlenet_loss(model(x), y), head) * weight).backward()
        alone[head] = grads_of(model)

    model.zero_grad()
    split = split_backward(model, terms_of(googlenet_loss(model(x), y)),
                           layers=["conv1", "inception3a", "inception4e", "aux1"])
    assert list(split) == ["conv1", "inception3a", "inception4e", "aux1"]
    for layer in ("conv1", "inception3a"):
        parts = {h: layer_vector(alone[h], layer) for h in alone}
        total = sum(parts.values())
        s = split[layer]
        assert isinstance(s, LayerSplit)
        for h in parts:
            assert s.norms[h] == pytest.approx(np.linalg.norm(parts[h]), rel=1e-9)
            assert s.shares[h] == pytest.approx(parts[h] @ total / (total @ total), rel=1e-9)
        assert sum(s.shares.values()) == pytest.approx(1.0, abs=1e-12)
        assert s.total_norm == pytest.approx(np.linalg.norm(total), rel=1e-9)
        main, aux1 = parts["main"], parts["aux1"]
        cos = main @ aux1 / (np.linalg.norm(main) * np.linalg.norm(aux1))
        assert s.cosines["main/aux1"] == pytest.approx(cos, rel=1e-9)
        assert set(s.cosines) == {"main/aux1", "main/aux2", "aux1/aux2"}
    # inception4e lies above both aux heads: only the main loss reaches it.
    assert split["inception4e"].norms["aux1"] == 0.0 and split["inception4e"].norms["aux2"] == 0.0
    assert split["inception4e"].shares["main"] == pytest.approx(1.0)
    assert math.isnan(split["inception4e"].cosines["main/aux1"])
    # The aux1 head is reached by its own loss only.
    assert split["aux1"].norms["main"] == 0.0 and split["aux1"].norms["aux2"] == 0.0
    assert "aux1" in str(split["conv1"]) and "cos(main/aux1)" in str(split["conv1"])


def test_split_shows_which_layers_each_loss_reaches(rng):
    model = tiny_googlenet()
    x, y = batch(rng)
    split = split_backward(model, terms_of(googlenet_loss(model(x), y)))
    assert list(split) == NETWORK_ORDER
    for layer in NETWORK_ORDER:
        reached = {h for h, norm in split[layer].norms.items() if norm > 0}
        if layer in ABOVE_AUX2:
            assert reached == {"main"}, layer
        elif layer in ABOVE_AUX1:
            assert reached == {"main", "aux2"}, layer
        elif layer in ("aux1", "aux2"):
            assert reached == {layer}
        else:
            assert reached == {"main", "aux1", "aux2"}, layer


def test_split_aux_parts_scale_with_the_aux_weight(rng):
    model = tiny_googlenet()
    x, y = batch(rng)
    norms = {}
    for weight in (0.3, 0.6):
        model.zero_grad()
        terms = terms_of(googlenet_loss(model(x), y, aux_weight=weight), aux_weight=weight)
        norms[weight] = split_backward(model, terms, layers=["conv2"])["conv2"].norms
    assert norms[0.6]["main"] == pytest.approx(norms[0.3]["main"], rel=1e-12)
    assert norms[0.6]["aux1"] == pytest.approx(2 * norms[0.3]["aux1"], rel=1e-9)
    assert norms[0.6]["aux2"] == pytest.approx(2 * norms[0.3]["aux2"], rel=1e-9)


def test_split_without_aux_heads_is_all_main(rng):
    model = tiny_googlenet(aux=False)
    x, y = batch(rng)
    split = split_backward(model, terms_of(googlenet_loss(model(x), y)), layers=["conv1"])["conv1"]
    assert list(split.norms) == ["main"] and split.cosines == {}
    assert split.shares["main"] == pytest.approx(1.0)
    assert split.norms["main"] == pytest.approx(np.linalg.norm(layer_vector(grads_of(model), "conv1")))


def test_split_rejects_unknown_layers_and_bad_weights(rng):
    model = tiny_googlenet()
    x, y = batch(rng, n=2)
    terms = terms_of(googlenet_loss(model(x), y))
    with pytest.raises(ValueError, match="no layer named 'conv9'.*conv1, conv2_reduce"):
        split_backward(model, terms, layers=["conv9"])
    for weight in (math.nan, math.inf, "0.3", True):
        with pytest.raises(ValueError, match="weight of 'aux1' must be a finite number"):
            split_backward(model, dict(terms, aux1=(terms["aux1"][0], weight)))
    with pytest.raises(ValueError, match="no loss to backpropagate"):
        split_backward(model, {"aux1": (None, 0.3)})


def test_split_works_for_any_model_and_any_terms(rng):
    """Not only GoogLeNet: two weighted losses on a two-layer network, checked by hand."""
    tinygnet.manual_seed(0)
    model = nn.Sequential(nn.Linear(5, 4), nn.Linear(4, 3)).double()
    x = Tensor(rng.standard_normal((6, 5)))
    upstream_a, upstream_b = rng.standard_normal((6, 3)), rng.standard_normal((6, 3))

    def losses():
        out = model(x)
        return (out * Tensor(upstream_a)).sum(), (out * Tensor(upstream_b)).sum()

    alone = {}
    for name, index, weight in [("a", 0, 2.0), ("b", 1, -0.5)]:
        model.zero_grad()
        (losses()[index] * weight).backward()
        alone[name] = {layer: layer_vector(grads_of(model), layer) for layer in ("0", "1")}
    model.zero_grad()
    loss_a, loss_b = losses()
    split = split_backward(model, {"a": (loss_a, 2.0), "b": (loss_b, -0.5)})
    assert list(split) == ["0", "1"]
    for layer in ("0", "1"):
        a, b = alone["a"][layer], alone["b"][layer]
        assert split[layer].norms == pytest.approx({"a": np.linalg.norm(a), "b": np.linalg.norm(b)})
        assert split[layer].shares["b"] == pytest.approx(b @ (a + b) / ((a + b) @ (a + b)))
        assert split[layer].cosines["a/b"] == pytest.approx(a @ b / np.linalg.norm(a) / np.linalg.norm(b))
        np.testing.assert_allclose(layer_vector(grads_of(model), layer), a + b, rtol=1e-12)
