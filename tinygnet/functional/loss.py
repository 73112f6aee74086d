"""Losses: cross_entropy (fused log-softmax + negative log-likelihood) and nll_loss.

Notation: logits are (N, K) (N examples, K classes), targets are (N,)
integer class indices; ``gy`` is dLoss/dloss (a scalar, or (N,) for
``reduction="none"``) and ``gx`` the gradient for the logits.
"""
from __future__ import annotations

from ..backend import get_array_module
from ..tensor import Function, Tensor
from .checks import check_float

__all__ = ["cross_entropy", "nll_loss"]

_REDUCTIONS = ("mean", "sum", "none")


def _reduce(loss, reduction):
    """The (N,) per-example losses as "none", or their "mean" or "sum" (a 0-d array)."""
    xp = get_array_module(loss)
    if reduction == "mean":
        return xp.asarray(loss.mean())
    if reduction == "sum":
        return xp.asarray(loss.sum())
    return loss


class CrossEntropy(Function):
    """loss_i = -sum_k q_ik log p_ik, with p = softmax(logits) and
    q = (1 - eps) * onehot(target) + eps / K (eps = label_smoothing).

    Log-softmax is fused in: with z = x - max(x) per row and
    lse = log(sum(exp(z))), log p = z - lse, so

        loss_i = (1 - eps) * (lse_i - z_{i,t_i}) + eps * (lse_i - mean_k z_ik)

    and nothing overflows (logits of +-1e4 are fine). The gradient is
    gx = gy * (p - q) (divided by N for the mean).
    """

    def forward(self, x, targets, reduction, label_smoothing):
        xp = get_array_module(x)
        N, K = x.shape
        rows = xp.arange(N)
        z = x - x.max(axis=1, keepdims=True)                 # (N, K), max 0 per row
        exp_z = xp.exp(z)
        sum_exp = exp_z.sum(axis=1)                          # (N,), in [1, K]
        lse = xp.log(sum_exp)
        loss = lse - z[rows, targets]                        # -log p_target
        if label_smoothing > 0:
            loss = (1 - label_smoothing) * loss + label_smoothing * (lse - z.mean(axis=1))
        if self.needs_input_grad[0]:
            self.p = exp_z / sum_exp[:, None]                # softmax
            self.targets, self.rows = targets, rows
            self.reduction, self.label_smoothing = reduction, label_smoothing
        return _reduce(loss, reduction)

    def backward(self, gy):
        N, K = self.p.shape
        eps = self.label_smoothing
        gx = self.p - eps / K                    # p - q: q is eps/K everywhere ...
        gx[self.rows, self.targets] -= 1 - eps   # ... plus 1 - eps at the target
        if self.reduction == "none":
            return gx * gy[:, None]
        return gx * (gy / N if self.reduction == "mean" else gy)


class NLLLoss(Function):
    """loss_i = -x_{i, t_i} for log-probabilities x (N, K);  gx = -gy at (i, t_i), else 0."""

    def forward(self, x, targets, reduction):
        xp = get_array_module(x)
        rows = xp.arange(x.shape[0])
        loss = -x[rows, targets]
        if self.needs_input_grad[0]:
            self.x_shape, self.rows, self.targets, self.reduction = x.shape, rows, targets, reduction
        return _reduce(loss, reduction)

    def backward(self, gy):
        xp = get_array_module(gy)
        gx = xp.zeros(self.x_shape, dtype=gy.dtype)
        if self.reduction == "mean":
            gy = gy / self.x_shape[0]
        gx[self.rows, self.targets] = -gy
        return gx


def cross_entropy(logits, targets, reduction="mean", label_smoothing=0.0):
    """Cross-entropy between softmax(logits) and integer class targets.

    Args:
        logits: (N, K) float Tensor, unnormalised scores.
        targets: (N,) integer class indices in [0, K), a Tensor or an array.
        reduction: "mean" (over N), "sum" or "none" (the (N,) losses).
        label_smoothing: eps in [0, 1]; the target distribution becomes
            (1 - eps) * onehot + eps / K, as PyTorch.

    The gradient flows to ``logits`` only.
    """
    op = "cross_entropy"
    targets = _check_targets(logits, targets, reduction, op)
    if isinstance(label_smoothing, bool) or not 0.0 <= label_smoothing <= 1.0:
        raise ValueError(f"{op}: label_smoothing must be in [0, 1], got {label_smoothing!r}")
    return CrossEntropy.apply(logits, targets=targets, reduction=reduction,
                              label_smoothing=float(label_smoothing))


def nll_loss(log_probs, targets, reduction="mean"):
    """Negative log-likelihood of integer targets under (N, K) log-probabilities.

    ``nll_loss(log_softmax(x, dim=1), t)`` equals ``cross_entropy(x, t)``.
    """
    targets = _check_targets(log_probs, targets, reduction, "nll_loss")
    return NLLLoss.apply(log_probs, targets=targets, reduction=reduction)


def _check_targets(x, targets, reduction, op):
    """Validate (N, K) scores and (N,) integer targets; return targets as x's array type."""
    if reduction not in _REDUCTIONS:
        raise ValueError(f"{op}: reduction must be one of {_REDUCTIONS}, got {reduction!r}")
    if x.ndim != 2:
        raise ValueError(f"{op}: expected 2-D logits (N, K), got shape {tuple(x.shape)}")
    check_float(x, op, "logits")
    data = targets.data if isinstance(targets, Tensor) else targets
    if not hasattr(data, "dtype") or data.dtype.kind not in "iu":
        kind = data.dtype if hasattr(data, "dtype") else type(data).__name__
        raise TypeError(f"{op}: targets must be integer class indices, got {kind}")
    N, K = x.shape
    if tuple(data.shape) != (N,):
        raise ValueError(f"{op}: targets of shape {tuple(data.shape)} do not match logits of "
                         f"shape {(N, K)}; expected targets of shape ({N},)")
    if N > 0:
        # Checked where the targets live, before any copy: free for host (NumPy)
        # targets; for GPU targets it reads two numbers back (a sync), so a GPU
        # training loop that wants no syncs passes its labels from the host.
        low, high = int(data.min()), int(data.max())
        if low < 0 or high >= K:
            bad = low if low < 0 else high
            raise ValueError(f"{op}: target {bad} is out of range for K={K} classes "
                             f"(expected 0 <= target < {K})")
    xp = get_array_module(x.data if isinstance(x, Tensor) else x)
    return xp.asarray(data)
