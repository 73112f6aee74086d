"""Gradient diagnostics: watch the gradient on its way back through a network.

Two tools, usable from any training loop:

* ``GradientMonitor`` records, after ``backward``, each parameter's gradient
  norm ``||g||`` and its ratio to the weight norm ``||g|| / ||w||``, and
  groups them by layer (the model's top-level children, in the order they
  were built: for GoogLeNet conv1, conv2_reduce, conv2, inception3a ...
  inception5b, fc, then the auxiliary heads aux1 and aux2). With
  ``enabled=False``, or on a step it is not due, ``record`` returns at once:
  no hooks are installed, ever, so a monitor that is off costs nothing.

* ``split_backward`` backpropagates GoogLeNet's three loss terms one at a
  time (main, then ``aux_weight * aux1``, then ``aux_weight * aux2``) and
  measures what each contributes to the gradient of chosen layers: its
  norm, its share of the total and the cosine similarity between heads.
  The ``.grad`` it leaves behind is what ``losses.total.backward()`` would
  have left (backprop is linear in the upstream gradient), so the optimiser
  step that follows is the usual one.

    monitor = GradientMonitor(model, every=10)
    for step, (x, y) in enumerate(loader):
        losses = googlenet_loss(model(x), y, aux_weight=0.3)
        optimizer.zero_grad()
        if step % 50 == 0:
            split = split_backward(model, losses, aux_weight=0.3, layers=["conv1"])
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

__all__ = ["layer_groups", "aux_layers", "GradientRecord", "GradientMonitor", "LayerSplit",
           "split_backward", "HEADS"]

HEADS = ("main", "aux1", "aux2")


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


def aux_layers(model) -> list:
    """Names of the top-level layers that are GoogLeNet auxiliary heads (kept apart in plots)."""
    from .models.googlenet import InceptionAux
    return [name for name, child in model.named_children() if isinstance(child, InceptionAux)]


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
    """How the gradient reaching one layer divides between GoogLeNet's loss terms.

    With ``c_h`` the gradient of the layer's parameters (flattened into one
    vector) from head ``h`` alone, aux heads already weighted by
    ``aux_weight``, and ``g = sum_h c_h`` the gradient of the total loss:

    * ``norms[h] = ||c_h||`` (0 for a head whose loss does not reach the layer);
    * ``total_norm = ||g||``;
    * ``shares[h] = <c_h, g> / ||g||^2``: the part of ``g`` along itself that
      ``c_h`` supplies. The shares add up to 1; one can be negative (a head
      pulling against the others) or above 1;
    * ``cosines["main/aux1"] = <c_main, c_aux1> / (||c_main|| ||c_aux1||)``,
      and so on for each pair: 1 means the heads push the layer the same
      way, 0 unrelated directions, -1 opposite ones (NaN if one is zero).
    """
    layer: str
    norms: dict
    total_norm: float
    shares: dict
    cosines: dict

    def __str__(self):
        heads = ", ".join(f"{h} {self.norms[h]:.3g} ({100 * self.shares[h]:.0f}%)" for h in self.norms)
        pairs = ", ".join(f"cos({pair}) {value:+.2f}" for pair, value in self.cosines.items())
        return f"{self.layer}: |g| {self.total_norm:.3g} = {heads}" + (f"; {pairs}" if pairs else "")


def split_backward(model, losses, aux_weight: float = 0.3,
                   layers=None) -> "OrderedDict[str, LayerSplit]":
    """Backpropagate main, aux1 and aux2 one at a time; split each layer's gradient by head.

    Args:
        model: the network the losses came from.
        losses: a ``GoogLeNetLoss`` (``.main``, ``.aux1``, ``.aux2``; the aux
            ones may be None, e.g. for ``GoogLeNet(aux=False)``).
        aux_weight: the weight of each aux loss in the total (the paper's 0.3).
        layers: names of top-level layers to split (default: every layer).

    Returns:
        layer -> ``LayerSplit``, in network order.

    Each term runs its own backward (``retain_graph=True`` on all but the
    last, since they share the lower part of the graph) and accumulates
    into ``.grad`` like any backward: afterwards ``.grad`` holds the
    gradient of ``main + aux_weight * (aux1 + aux2)``, ready for the
    optimiser. The cost is about two backward passes instead of one.
    """
    if isinstance(aux_weight, bool) or not isinstance(aux_weight, (int, float)) or aux_weight < 0:
        raise ValueError(f"split_backward: aux_weight must be a number >= 0, got {aux_weight!r}")
    groups = layer_groups(model)
    layers = list(groups) if layers is None else list(dict.fromkeys(layers))   # each once
    unknown = [layer for layer in layers if layer not in groups]
    if unknown:
        raise ValueError(f"split_backward: no layer named {', '.join(map(repr, unknown))}; "
                         f"the model's layers are {', '.join(groups)}")
    terms = [(head, getattr(losses, head), 1.0 if head == "main" else float(aux_weight))
             for head in HEADS]
    terms = [(head, loss, weight) for head, loss, weight in terms if loss is not None]
    xp = get_array_module(terms[0][1].data)

    def flat_grads(layer):
        """The layer's current gradient as one vector (zeros where none arrived yet)."""
        return xp.concatenate([(p.grad.data if p.grad is not None else xp.zeros_like(p.data)).ravel()
                               for _, p in groups[layer]])

    contributions = {layer: {} for layer in layers}    # layer -> head -> c_h
    before = {layer: flat_grads(layer) for layer in layers}
    for i, (head, loss, weight) in enumerate(terms):
        upstream = xp.full(loss.shape, weight, dtype=loss.dtype)
        loss.backward(grad=upstream, retain_graph=i < len(terms) - 1)
        for layer in layers:
            after = flat_grads(layer)
            contributions[layer][head] = after - before[layer]
            before[layer] = after

    return OrderedDict((layer, _split_of(layer, contributions[layer], xp)) for layer in layers)


def _split_of(layer, parts: dict, xp) -> LayerSplit:
    heads = list(parts)
    vectors = [parts[h] for h in heads]
    total = vectors[0]
    for v in vectors[1:]:
        total = total + v
    # Every dot product at once, read back in one transfer: [<c_i, c_j>] and <c_i, g>.
    gram = xp.stack([xp.stack([xp.vdot(a, b) for b in vectors + [total]]) for a in vectors + [total]])
    gram = to_numpy(gram).astype(np.float64)
    k = len(heads)
    total_sq = gram[k, k]
    norms = {h: math.sqrt(max(gram[i, i], 0.0)) for i, h in enumerate(heads)}
    shares = {h: (gram[i, k] / total_sq if total_sq > 0 else math.nan) for i, h in enumerate(heads)}
    cosines = {}
    for i in range(k):
        for j in range(i + 1, k):
            denominator = norms[heads[i]] * norms[heads[j]]
            cosines[f"{heads[i]}/{heads[j]}"] = gram[i, j] / denominator if denominator > 0 else math.nan
    return LayerSplit(layer, norms, math.sqrt(max(total_sq, 0.0)), shares, cosines)
