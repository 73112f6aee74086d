"""Pieces the demos share: option parsing, option errors, the choice of device, text files."""
import argparse
import math

from .. import backend
from ..checkpoint import atomic_write


class UsageError(Exception):
    """A bad option or combination of options: printed without a traceback, exit status 2."""


def resolve_device(requested: str) -> str:
    """"auto" -> "cuda:0" if CuPy sees a GPU, else "cpu"; "cuda" without a GPU is an error."""
    if requested == "cpu":
        return "cpu"
    available = backend.is_cuda_available()
    if requested == "auto":
        return "cuda:0" if available else "cpu"
    if not available:
        raise UsageError("--device cuda: no usable GPU (CuPy is missing or sees no NVIDIA GPU); "
                         "use --device cpu")
    return backend.parse_device(requested)


def number(kind, test, what):
    """An argparse type: ``kind(text)`` that must pass ``test``, else a message saying ``what``."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"{text!r}: must be {what}")
        return value
    parse.__name__ = what        # argparse names the type in some messages
    return parse


positive_int = number(int, lambda v: v > 0, "a positive integer")
non_negative_int = number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = number(float, lambda v: v > 0 and math.isfinite(v), "a number > 0")
non_negative_float = number(float, lambda v: v >= 0 and math.isfinite(v), "a number >= 0")
probability = number(float, lambda v: 0 <= v < 1, "in [0, 1)")


def write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` as UTF-8, atomically (old content or new, never half)."""
    data = text.encode("utf-8")
    atomic_write(path, lambda f: f.write(data))
