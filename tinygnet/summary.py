"""A per-layer table of a model: output shape, parameters and multiply-accumulates.

``summary(model, (3, 224, 224))`` runs the model on one example and reports,
for each top-level layer in the order it runs, the shape of its output, its
parameter count and its multiply-accumulates (MACs, the paper's
"multiply-adds"). Print it for a table; read ``.rows`` and the totals for
data.

What counts as a MAC: one multiply and one add in a convolution
(``C_in * KH * KW`` per output value) or a linear layer (``in_features`` per
output value). Pools, normalisations, ReLU and the bias additions are left
out, as in the paper's count.

Layers that run only in training mode (GoogLeNet's auxiliary heads) get
their own rows, marked ``train_only``; the ``inference_*`` totals leave them
out. The model is run twice under ``no_grad``: once in evaluation mode (to
see which layers run at inference) and once in training mode with dropout
and batch norm held in evaluation mode, so no random numbers are drawn and
no running statistic changes. The model's modes are restored afterwards.
"""
from __future__ import annotations

from collections import namedtuple

import numpy as np

from . import backend
from .nn import BatchNorm2d, Conv2d, Dropout, Linear
from .tensor import Tensor, no_grad

__all__ = ["summary", "Summary", "SummaryRow"]

SummaryRow = namedtuple("SummaryRow", ["name", "output_shape", "params", "macs", "train_only"])
SummaryRow.__doc__ = """One top-level layer: output shape of one example (no batch dim),
parameter count, multiply-accumulates per example, and whether it runs only in training."""


class Summary:
    """The result of ``summary``: ``rows`` plus totals, printable as a table.

    Attributes:
        rows: list of ``SummaryRow`` in the order the layers run.
        total_params, total_macs: everything, training-only layers included.
        inference_params, inference_macs: what runs in evaluation mode.
    """

    def __init__(self, title, rows, total_params):
        self.title = title
        self.rows = rows
        self.total_params = total_params
        self.total_macs = sum(r.macs for r in rows)
        train_only = [r for r in rows if r.train_only]
        self.inference_params = total_params - sum(r.params for r in train_only)
        self.inference_macs = self.total_macs - sum(r.macs for r in train_only)

    def __str__(self):
        header = ("Layer", "Output shape", "Params", "MACs")
        body = [(r.name + (" (train)" if r.train_only else ""),
                 " x ".join(str(d) for d in r.output_shape),
                 f"{r.params:,}", f"{r.macs:,}") for r in self.rows]
        totals = [("Total (inference)", "", f"{self.inference_params:,}",
                   f"{self.inference_macs:,}")]
        if self.total_params != self.inference_params or self.total_macs != self.inference_macs:
            totals.append(("Total (training, with train-only layers)", "",
                           f"{self.total_params:,}", f"{self.total_macs:,}"))
        widths = [max(len(line[i]) for line in [header] + body + totals) for i in range(4)]

        def fmt(line):
            return (f"{line[0]:<{widths[0]}}  {line[1]:<{widths[1]}}  "
                    f"{line[2]:>{widths[2]}}  {line[3]:>{widths[3]}}")

        rule = "-" * len(fmt(header))
        lines = [self.title, rule, fmt(header), rule]
        lines += [fmt(line) for line in body]
        lines += [rule] + [fmt(line) for line in totals]
        return "\n".join(lines)

    __repr__ = __str__


def _macs(module, output) -> int:
    """Multiply-accumulates of one conv or linear call, per example."""
    out = output.shape
    if isinstance(module, Conv2d):        # C_in * KH * KW per output value
        kh, kw = module.kernel_size
        return module.in_channels * kh * kw * int(np.prod(out[1:]))
    if isinstance(module, Linear):        # in_features per output value
        return module.in_features * int(np.prod(out[1:]))
    return 0


def summary(model, input_shape) -> Summary:
    """Output shape, parameters and MACs of each top-level layer of ``model``.

    Args:
        model: a ``tinygnet.nn.Module``.
        input_shape: (C, H, W) of one example; a leading batch dim is ignored.
            The model runs on one example of zeros, in its parameters' dtype
            and on their device.
    """
    shape = tuple(int(d) for d in input_shape)
    if len(shape) == 4:
        shape = shape[1:]
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"summary: input_shape must be (C, H, W), got {tuple(input_shape)}")
    first = next(model.parameters(), None)
    dtype = first.dtype if first is not None else np.float32
    device = first.device if first is not None else "cpu"
    x = Tensor(backend.to_device(np.zeros((1,) + shape, dtype=dtype), device))

    children = list(model.named_children()) or [(type(model).__name__, model)]
    modes = {id(m): (m, m.training) for m in model.modules()}
    try:
        model.eval()
        ran_in_eval = {record[0] for record in _run(model, children, x)}
        model.train()
        for m in model.modules():               # no random numbers, no statistics updates
            if isinstance(m, (Dropout, BatchNorm2d)):
                m.training = False
        records = _run(model, children, x)
    finally:
        for m, mode in modes.values():
            m.training = mode

    params = {name: sum(p.size for p in child.parameters()) for name, child in children}
    rows = [SummaryRow(name, out_shape, params[name], macs, name not in ran_in_eval)
            for name, out_shape, macs in records]
    total_params = sum(p.size for p in model.parameters())
    name = type(model).__name__
    extra = model.extra_repr()
    title = f"{name}({extra})" if extra else name
    return Summary(f"{title}, input {' x '.join(map(str, shape))}", rows, total_params)


def _run(model, children, x) -> list:
    """Forward once; return (name, output shape, MACs) for each top-level call in order.

    Hooks on every conv and linear layer add their MACs to ``pending``; when a
    top-level layer finishes, its row takes what has accumulated since the
    previous one finished.
    """
    records, pending = [], [0]
    handles = []

    def count(module, inputs, output):
        pending[0] += _macs(module, output)

    def record(name):
        def hook(module, inputs, output):
            y = output[0] if isinstance(output, tuple) else output
            records.append((name, tuple(y.shape[1:]), pending[0]))
            pending[0] = 0
        return hook

    try:
        for m in model.modules():
            if isinstance(m, (Conv2d, Linear)):
                handles.append(m.register_forward_hook(count))
        for name, child in children:
            handles.append(child.register_forward_hook(record(name)))
        with no_grad():
            model(x)
    finally:
        for handle in handles:
            handle.remove()
    return records
