"""Input conversion and checking: Python numbers and lists into arrays, and errors that say what was wrong."""
from __future__ import annotations

import numpy as np


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
