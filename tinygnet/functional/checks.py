"""Argument checks shared by the functional ops and the layers of ``tinygnet.nn``: clear errors,
not NumPy tracebacks."""
from __future__ import annotations


def pair(value, name: str, op: str, minimum: int = 0) -> tuple:
    """An int or a pair of ints as ``(h, w)``, each at least ``minimum``."""
    if isinstance(value, bool):
        raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {value!r}")
    if isinstance(value, int):
        value = (value, value)
    try:
        h, w = value
        h, w = int(h), int(w)
        if (h, w) != tuple(value):
            raise ValueError
    except (TypeError, ValueError):
        raise TypeError(f"{op}: {name} must be an int or a pair of ints, got {value!r}") from None
    if h < minimum or w < minimum:
        raise ValueError(f"{op}: {name} must be >= {minimum}, got {value!r}")
    return h, w


def check_ndim(x, ndim: int, op: str, layout: str) -> None:
    """``x`` (a Tensor or array) must have ``ndim`` dims, e.g. 4 for NCHW."""
    if x.ndim != ndim:
        raise ValueError(f"{op}: expected a {ndim}-D input ({layout}), "
                         f"got shape {tuple(x.shape)}")


def check_float(x, op: str, name: str = "input") -> None:
    """float32 or float64: the dtypes every op and every CUDA kernel is written for
    (float16 too would need its own kernels and float32 accumulation)."""
    if x.dtype not in ("float32", "float64"):
        raise TypeError(f"{op}: {name} must be a floating-point tensor "
                        f"(float32 or float64), got {x.dtype}")
