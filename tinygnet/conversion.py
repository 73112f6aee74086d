"""Input conversion and checking: Python numbers and lists into arrays, and errors that say what was wrong."""
from __future__ import annotations

import numpy as np

from .backend import get_array_module


def _python_to_array(data, dtype):
    """Python numbers and (nested) lists become float32 unless a dtype is given."""
    array = np.asarray(data)
    if dtype is None:
        if array.dtype.kind in "fiub" and not isinstance(data, np.ndarray):
            dtype = np.float32
    return array if dtype is None else array.astype(dtype, copy=False)


def _explain_bad_numbers(data, prefix, where="data") -> None:
    """Raise, in tinygnet's words, what NumPy refused in its own: a ragged nest of lists
    (``[[1, 2], [3]]``) or an item that is not a number (``["x"]``). Returns if it finds neither."""
    if isinstance(data, (list, tuple)):
        shapes = ["is a number" if not isinstance(item, (list, tuple)) else f"has length {len(item)}"
                  for item in data]
        for i, shape in enumerate(shapes):
            if shape != shapes[0]:
                raise ValueError(f"{prefix}{where} is ragged: {where}[0] {shapes[0]} but "
                                 f"{where}[{i}] {shape}; every row of a tensor has the same "
                                 f"length")
        for i, item in enumerate(data):
            _explain_bad_numbers(item, prefix, f"{where}[{i}]")
    elif not isinstance(data, (bool, int, float, np.number, np.bool_)):
        raise TypeError(f"{prefix}expected numbers (float, int or bool) or nested lists of them; "
                        f"{where} is {type(data).__name__} ({data!r:.40})")


def _operand_array(value, like):
    """A constant operand (a number, a list of numbers, an array) as an array to combine
    with the array ``like``: on its device and, for numbers and lists, of its dtype.

    Python numbers take the tensor's dtype (``x * 2`` stays float32).
    A float array of another precision is refused: no silent float64.
    """
    xp = get_array_module(like)
    if isinstance(value, (int, float, bool, np.number)):
        return xp.asarray(value, dtype=like.dtype)
    if not hasattr(value, "dtype"):
        if not isinstance(value, (list, tuple)):     # a str, None, a dict...: not an operand
            raise TypeError(f"a Tensor combines with numbers, arrays, lists of numbers and "
                            f"Tensors, not {type(value).__name__} ({value!r:.40})")
        try:
            return xp.asarray(value, dtype=like.dtype)
        except (ValueError, TypeError):
            _explain_bad_numbers(value, "a Tensor combines with numbers, arrays, lists of numbers "
                                        "and Tensors: ", "the other operand")
            raise
    array = xp.asarray(value)
    if array.dtype.kind not in "fiub":
        raise TypeError(f"a Tensor combines with numbers, arrays, lists of numbers and Tensors, "
                        f"not an array of dtype {array.dtype}")
    _check_float_dtypes(like.dtype, array.dtype, "convert one first")
    return array


def _check_float_dtypes(a, b, advice="convert one with .to(dtype=...)"):
    """Two float operands must have the same precision: no silent float64."""
    if a != b and a.kind == "f" and b.kind == "f":
        raise TypeError(f"operands have different float dtypes ({a} and {b}); {advice}")
