"""Gradient diagnostics: watch the gradient on its way back through a network.

Two tools, for any model and any training loop:

* ``GradientMonitor`` records, after ``backward``, each parameter's gradient
  norm ``||g||`` and its ratio to the weight norm ``||g|| / ||w||``, and
  groups them by layer (the model's top-level children, in the order they
  were built: for GoogLeNet conv1, conv2_reduce, conv2, inception3a ...
  inception5b, fc, then the auxiliary heads aux1 and aux2). With
  ``enabled=False``, or on a step it is not due, ``record`` returns at once:
  no hooks are installed, ever, so a monitor that is off costs nothing.

* ``split_backward`` takes a loss made of weighted terms,
  ``total = sum_k weight_k * loss_k``, backpropagates the terms one at a
  time and measures what each contributes to the gradient of chosen
  layers: its norm, its share of the total and the cosine similarity
  between terms. The ``.grad`` it leaves behind is what
  ``total.backward()`` would have left (backprop is linear in the upstream
  gradient), so the optimiser step that follows is the usual one.

GoogLeNet's loss has three terms, the main head and the two auxiliary ones::

    monitor = GradientMonitor(model, every=10)
    for step, (x, y) in enumerate(loader):
        losses = googlenet_loss(model(x), y, aux_weight=0.3)
        optimizer.zero_grad()
        if step % 50 == 0:
            terms = {"main": (losses.main, 1.0), "aux1": (losses.aux1, 0.3),
                     "aux2": (losses.aux2, 0.3)}
            split = split_backward(model, terms, layers=["conv1"])
            print(split["conv1"])      # norms, shares and cosines of main / aux1 / aux2
        else:
            losses.total.backward()
        monitor.record(step)           # reads .grad: call after backward, before step()
        optimizer.step()

Norms are computed on the device and read back in one transfer per call.
"""
from __future__ import annotations

import dataclasses
import math
from collections import OrderedDict

import numpy as np

from .backend import get_array_module, to_numpy

__all__ = ["layer_groups", "GradientRecord", "GradientMonitor", "LayerSplit", "split_backward"]


# --------------------------------------------------------------------------
# Layers
# --------------------------------------------------------------------------
def layer_of(name: str) -> str:
    """The layer a parameter belongs to: the first part of its dotted name."""
    return name.split(".", 1)[0]


def layer_groups(model) -> "OrderedDict[str, list]":
    """layer -> [(parameter name, Parameter), ...], layers in the order the model built them.

    For GoogLeNet that order is the network's: conv1 ... inception5b, fc,
    then aux1 and aux2 (built last).
    """
    groups = OrderedDict()
    for name, parameter in model.named_parameters():
        groups.setdefault(layer_of(name), []).append((name, parameter))
    return groups


def _squared_norms(arrays, xp):
    """sum(a * a) of each array, on the device, as one 1-D array (no temporaries: a dot product)."""
    if not arrays:
        return xp.zeros(0)
    return xp.stack([xp.vdot(a.ravel(), a.ravel()) for a in arrays])


# --------------------------------------------------------------------------
# Per-step gradient norms
# --------------------------------------------------------------------------
@dataclasses.dataclass
class GradientRecord:
    """Gradient and weight norms of every parameter at one step.

    ``grad_norms[i]`` is ``||g||`` of parameter ``names[i]`` (0 where no
    gradient reached it), ``weight_norms[i]`` its ``||w||``; ``layers[i]``
    is the layer it belongs to.
    """
    step: int
    names: tuple
    layers: tuple
    grad_norms: np.ndarray
    weight_norms: np.ndarray

    @property
    def ratios(self) -> np.ndarray:
        """``||g|| / ||w||`` per parameter (inf for a zero weight with a gradient)."""
        with np.errstate(divide="ignore", invalid="ignore"):
            return self.grad_norms / self.weight_norms

    def by_layer(self) -> "OrderedDict[str, dict]":
        """layer -> {"grad_norm", "weight_norm", "ratio"}, each over all the layer's parameters.

        A layer's norm is that of all its parameters as one vector:
        ``sqrt(sum of their squared norms)``.
        """
        table = OrderedDict()
        for layer, g, w in zip(self.layers, self.grad_norms, self.weight_norms):
            sums = table.setdefault(layer, [0.0, 0.0])
            sums[0] += float(g) ** 2
            sums[1] += float(w) ** 2
        return OrderedDict(
            (layer, {"grad_norm": math.sqrt(g2), "weight_norm": math.sqrt(w2),
                     "ratio": math.sqrt(g2 / w2) if w2 > 0 else math.inf})
            for layer, (g2, w2) in table.items())


class GradientMonitor:
    """Record per-parameter gradient norms and gradient/weight ratios, grouped by layer.

    Args:
        model: any ``tinygnet.nn.Module``.
        every: record only on steps that are multiples of ``every``.
        enabled: False turns the monitor off: ``record`` does nothing.

    Call ``record(step)`` after ``backward`` and before ``optimizer.step()``
    (which may change the weights the ratio divides by). ``history`` holds
    one ``GradientRecord`` per recorded step.
    """

    def __init__(self, model, every: int = 1, enabled: bool = True):
        if isinstance(every, bool) or not isinstance(every, int) or every < 1:
            raise ValueError(f"GradientMonitor: every must be a positive integer, got {every!r}")
        self.every, self.enabled = every, bool(enabled)
        named = [(name, p) for name, p in model.named_parameters()]
        self.names = tuple(name for name, _ in named)
        self.layers = tuple(layer_of(name) for name in self.names)
        self._parameters = [p for _, p in named]
        self.history: list[GradientRecord] = []

    def due(self, step: int) -> bool:
        return self.enabled and step % self.every == 0

    def record(self, step: int) -> GradientRecord | None:
        """Measure the current ``.grad`` of every parameter; None when off or not due."""
        if not self.due(step):
            return None
        params = self._parameters
        if not params:
            raise ValueError("GradientMonitor: the model has no parameters")
        xp = get_array_module(params[0].data)
        weights = [p.data for p in params]
        grads = [p.grad.data if p.grad is not None else xp.zeros(1, dtype=p.dtype) for p in params]
        squared = to_numpy(xp.concatenate([_squared_norms(grads, xp), _squared_norms(weights, xp)]))
        norms = np.sqrt(squared.astype(np.float64))
        n = len(params)
        record = GradientRecord(step, self.names, self.layers, norms[:n], norms[n:])
        self.history.append(record)
        return record

    def rows(self):
        """One dict per (recorded step, parameter).

        Keys: step, layer, parameter, grad_norm, weight_norm, ratio.
        """
        for record in self.history:
            for name, layer, g, w, r in zip(record.names, record.layers, record.grad_norms,
                                            record.weight_norms, record.ratios):
                yield {"step": record.step, "layer": layer, "parameter": name,
                       "grad_norm": float(g), "weight_norm": float(w), "ratio": float(r)}


# --------------------------------------------------------------------------
# The per-head split
# --------------------------------------------------------------------------
@dataclasses.dataclass
class LayerSplit:
    """How the gradient reaching one layer divides between the terms of a loss.

    With ``c_k`` the gradient of the layer's parameters (flattened into one
    vector) from term ``k`` alone, already multiplied by its weight, and
    ``g = sum_k c_k`` the gradient of the total loss:

    * ``norms[k] = ||c_k||`` (0 for a term that does not reach the layer);
    * ``total_norm = ||g||``;
    * ``shares[k] = <c_k, g> / ||g||^2``: the part of ``g`` along itself that
      ``c_k`` supplies. The shares add up to 1; one can be negative (a term
      pulling against the others) or above 1;
    * ``cosines["a/b"] = <c_a, c_b> / (||c_a|| ||c_b||)`` for each pair of
      terms: 1 means they push the layer the same way, 0 unrelated
      directions, -1 opposite ones (NaN if one is zero).
    """
    layer: str
    norms: dict
    total_norm: float
    shares: dict
    cosines: dict

    def __str__(self):
        terms = ", ".join(f"{k} {self.norms[k]:.3g} ({100 * self.shares[k]:.0f}%)" for k in self.norms)
        pairs = ", ".join(f"cos({pair}) {value:+.2f}" for pair, value in self.cosines.items())
        return f"{self.layer}: |g| {self.total_norm:.3g} = {terms}" + (f"; {pairs}" if pairs else "")


def split_backward(model, terms, layers=None) -> "OrderedDict[str, LayerSplit]":
    """Backpropagate a weighted sum of losses one term at a time; split each layer's gradient.

    Args:
        model: the network the losses came from.
        terms: ``{name: (loss, weight)}`` with ``total = sum(weight * loss)``;
            backpropagated in this order. A term whose loss is None is left
            out (a head the model does not have).
        layers: names of top-level layers to split (default: every layer).

    Returns:
        layer -> ``LayerSplit``, in the order of ``layers`` (network order by
        default), its ``norms`` and ``shares`` keyed by term name.

    Each term runs its own backward (``retain_graph=True`` on all but the
    last, since they share the lower part of the graph) and accumulates
    into ``.grad`` like any backward: afterwards ``.grad`` holds the
    gradient of the total, ready for the optimiser. The cost is about one
    backward pass per term, over the part of the graph each one reaches.
    """
    groups = layer_groups(model)
    layers = list(groups) if layers is None else list(dict.fromkeys(layers))   # each once
    unknown = [layer for layer in layers if layer not in groups]
    if unknown:
        raise ValueError(f"split_backward: no layer named {', '.join(map(repr, unknown))}; "
                         f"the model's layers are {', '.join(groups)}")
    present = []
    for name, (loss, weight) in terms.items():
        if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight):
            raise ValueError(f"split_backward: the weight of {name!r} must be a finite number, "
                             f"got {weight!r}")
        if loss is not None:
            present.append((name, loss, float(weight)))
    if not present:
        raise ValueError("split_backward: no loss to backpropagate (every term is None)")
    xp = get_array_module(present[0][1].data)

    def flat_grads(layer):
        """The layer's current gradient as one vector (zeros where none arrived yet)."""
        return xp.concatenate([(p.grad.data if p.grad is not None else xp.zeros_like(p.data)).ravel()
                               for _, p in groups[layer]])

    contributions = {layer: {} for layer in layers}    # layer -> term -> c_k
    before = {layer: flat_grads(layer) for layer in layers}
    for i, (name, loss, weight) in enumerate(present):
        upstream = xp.full(loss.shape, weight, dtype=loss.dtype)
        loss.backward(grad=upstream, retain_graph=i < len(present) - 1)
        for layer in layers:
            after = flat_grads(layer)
            contributions[layer][name] = after - before[layer]
            before[layer] = after

    return OrderedDict((layer, _split_of(layer, contributions[layer], xp)) for layer in layers)


def _split_of(layer, parts: dict, xp) -> LayerSplit:
    names = list(parts)
    vectors = [parts[k] for k in names]
    total = vectors[0]
    for v in vectors[1:]:
        total = total + v
    # Every dot product at once, read back in one transfer: [<c_i, c_j>] and <c_i, g>.
    gram = xp.stack([xp.stack([xp.vdot(a, b) for b in vectors + [total]]) for a in vectors + [total]])
    gram = to_numpy(gram).astype(np.float64)
    k = len(names)
    total_sq = gram[k, k]
    norms = {n: math.sqrt(max(gram[i, i], 0.0)) for i, n in enumerate(names)}
    shares = {n: (gram[i, k] / total_sq if total_sq > 0 else math.nan) for i, n in enumerate(names)}
    cosines = {}
    for i in range(k):
        for j in range(i + 1, k):
            denominator = norms[names[i]] * norms[names[j]]
            cosines[f"{names[i]}/{names[j]}"] = gram[i, j] / denominator if denominator > 0 else math.nan
    return LayerSplit(layer, norms, math.sqrt(max(total_sq, 0.0)), shares, cosines)
