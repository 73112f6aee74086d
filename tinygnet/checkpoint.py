"""Checkpoints: save a training state to one file atomically, load it back safely.

A checkpoint is a nested structure of plain Python data (dict, list, tuple,
str, int, float, bool, None) and arrays. It is stored as one ``.npz`` file:

- every array (NumPy or CuPy; CuPy ones are copied to the host) becomes one
  entry ``a0``, ``a1``, ... of the archive;
- the structure around them is JSON in the entry ``__meta__``, where an array
  is written ``{"__array__": "a3"}``.

Nothing is unpickled on load (``allow_pickle=False``), so loading a file from
someone else cannot run code, and ``np.load`` / any JSON viewer can inspect it.

Atomic writes: the file is written under a temporary name in the same folder,
flushed to disk (``fsync``), then renamed over the old one with ``os.replace``,
which POSIX and Windows perform atomically. A crash or ``kill -9`` at any
moment leaves either the old checkpoint or the new one, never half a file.
The same module holds the two folder helpers that the data reader and the
demos use so that a failed start leaves no empty folder behind.
"""
from __future__ import annotations

import json
import os
import tempfile
import zipfile

import numpy as np

from .backend import get_array_module, to_numpy

__all__ = ["save_checkpoint", "load_checkpoint", "atomic_write", "remove_stale_temp_files",
           "missing_folders", "remove_empty_folders", "CheckpointError"]

FORMAT = "tinygnet-checkpoint"
VERSION = 1


class CheckpointError(ValueError):
    """A file that is not a readable tinygnet checkpoint (the message names it)."""


# --------------------------------------------------------------------------
# Encoding: nested Python data <-> (JSON-able structure, list of arrays)
# --------------------------------------------------------------------------
# Tags in the JSON structure. A dict whose keys are all strings (and not tags)
# is written as a JSON object; any other dict (e.g. int keys, as optimiser
# state uses) as a list of [key, value] pairs.
_ARRAY, _SCALAR, _TUPLE, _ITEMS = "__array__", "__scalar__", "__tuple__", "__items__"
_TAGS = {_ARRAY, _SCALAR, _TUPLE, _ITEMS}


def _encode(value, arrays: list, where: str):
    if value is None or isinstance(value, (bool, int, float, str)):
        return value
    if isinstance(value, np.generic):             # np.float32(1.5): keep its dtype
        arrays.append(np.asarray(value))
        return {_SCALAR: f"a{len(arrays) - 1}"}
    if isinstance(value, np.ndarray) or get_array_module(value) is not np:
        if value.dtype == object:
            raise TypeError(f"checkpoint: {where} is an object array; only numeric arrays can be saved")
        arrays.append(to_numpy(value))
        return {_ARRAY: f"a{len(arrays) - 1}"}
    if isinstance(value, (list, tuple)):
        items = [_encode(v, arrays, f"{where}[{i}]") for i, v in enumerate(value)]
        return {_TUPLE: items} if isinstance(value, tuple) else items
    if isinstance(value, dict):
        if all(isinstance(k, str) for k in value) and not _TAGS & value.keys():
            return {k: _encode(v, arrays, f"{where}[{k!r}]") for k, v in value.items()}
        return {_ITEMS: [[_encode(k, arrays, f"{where} key"), _encode(v, arrays, f"{where}[{k!r}]")]
                         for k, v in value.items()]}
    raise TypeError(f"checkpoint: {where} has type {type(value).__name__}; only dict, list, "
                    f"tuple, str, int, float, bool, None and arrays can be saved")


def _decode(node, arrays: dict):
    if isinstance(node, list):
        return [_decode(v, arrays) for v in node]
    if not isinstance(node, dict):
        return node
    if _ARRAY in node:
        return arrays[node[_ARRAY]]
    if _SCALAR in node:
        return arrays[node[_SCALAR]][()]
    if _TUPLE in node:
        return tuple(_decode(v, arrays) for v in node[_TUPLE])
    if _ITEMS in node:
        return {_decode(k, arrays): _decode(v, arrays) for k, v in node[_ITEMS]}
    return {k: _decode(v, arrays) for k, v in node.items()}


# --------------------------------------------------------------------------
# Atomic write
# --------------------------------------------------------------------------
def atomic_write(path, write) -> None:
    """Call ``write(file)`` on a temporary file next to ``path``, then rename it to ``path``.

    If ``write`` raises (or the process dies), ``path`` keeps its old content
    and the temporary file is removed (after a ``kill -9`` a hidden
    ``.NAME.*.tmp`` may remain; it is never mistaken for the checkpoint, and
    ``remove_stale_temp_files`` clears it away).
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    _reached("start", path)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix=f".{os.path.basename(path)}.", suffix=".tmp")
    try:
        if hasattr(os, "fchmod"):         # mkstemp makes the file private (0600); use the usual mode
            os.fchmod(fd, 0o666 & ~_umask())
        with os.fdopen(fd, "wb") as f:
            write(f)
            f.flush()
            os.fsync(f.fileno())          # the bytes are on disk before the rename
        _reached("written", path)
        os.replace(tmp, path)             # atomic: readers see old or new, never half
    except BaseException:                 # KeyboardInterrupt too: never leave the temp file
        try:
            os.remove(tmp)
        except FileNotFoundError:
            pass
        raise
    _reached("renamed", path)
    _fsync_folder(folder)                 # make the rename itself durable


def remove_stale_temp_files(folder, names) -> list:
    """Remove the temporary files that killed ``atomic_write`` calls left for ``names`` in ``folder``.

    Only ``.NAME.*.tmp`` files of the given names are touched; returns their paths.
    """
    removed = []
    for entry in os.listdir(folder):
        if entry.endswith(".tmp") and any(entry.startswith(f".{name}.") for name in names):
            path = os.path.join(folder, entry)
            try:
                os.remove(path)
                removed.append(path)
            except FileNotFoundError:     # removed meanwhile: what we wanted
                pass
    return removed


def missing_folders(path) -> list:
    """The folders ``os.makedirs(path)`` would create, deepest first (to undo it with
    ``remove_empty_folders`` when what they were made for fails)."""
    missing, path = [], os.path.abspath(path)
    while not os.path.lexists(path):
        missing.append(path)
        path = os.path.dirname(path)
    return missing


def remove_empty_folders(folders) -> None:
    """Remove ``folders`` (deepest first) where they exist and are empty; stop at the first
    that is not (it holds something, or is gone)."""
    for folder in folders:
        try:
            os.rmdir(folder)
        except OSError:
            return


# A hook for tests that kill the process in the middle of a write: when set, it is called as
# ``_write_hook(event, path)`` at each step of ``atomic_write``: "start" (before the temporary
# file exists), "written" (complete on disk, not yet renamed) and "renamed". None in normal use.
_write_hook = None


def _reached(event: str, path: str) -> None:
    if _write_hook is not None:
        _write_hook(event, path)


def _umask() -> int:
    mask = os.umask(0o022)     # the only way to read it is to set it, then put it back
    os.umask(mask)
    return mask


def _fsync_folder(folder: str) -> None:
    if os.name != "posix":
        return
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    except OSError:   # some file systems refuse fsync on a folder; the rename is still atomic
        pass
    finally:
        os.close(fd)


# --------------------------------------------------------------------------
# Save / load
# --------------------------------------------------------------------------
def save_checkpoint(path, state: dict) -> None:
    """Write ``state`` (nested plain data and arrays) to ``path`` atomically."""
    if not isinstance(state, dict):
        raise TypeError(f"save_checkpoint: state must be a dict, got {type(state).__name__}")
    arrays: list = []
    structure = _encode(state, arrays, "state")
    meta = json.dumps({"format": FORMAT, "version": VERSION, "state": structure})
    entries = {f"a{i}": a for i, a in enumerate(arrays)}
    entries["__meta__"] = np.frombuffer(meta.encode("utf-8"), dtype=np.uint8)
    atomic_write(path, lambda f: np.savez(f, **entries))


def load_checkpoint(path) -> dict:
    """Read a checkpoint written by ``save_checkpoint``; arrays come back as NumPy arrays.

    Raises ``FileNotFoundError`` or ``CheckpointError`` with a message naming the file.
    """
    path = os.fspath(path)
    if not os.path.exists(path):
        raise FileNotFoundError(f"checkpoint {path!r} does not exist")
    if os.path.isdir(path):
        raise CheckpointError(f"checkpoint {path!r} is a folder, not a checkpoint file")
    try:
        with open(path, "rb") as f:
            signature = f.read(4)
    except OSError as error:             # unreadable: permissions, a broken disk
        raise CheckpointError(f"cannot read checkpoint {path!r} ({error.strerror})") from None
    if signature not in (b"PK\x03\x04", b"PK\x05\x06"):     # what every .npz (zip) starts with
        raise CheckpointError(f"{path!r} is not a tinygnet checkpoint: it is not an .npz archive "
                              f"(another kind of file, or a corrupt one)")
    try:
        with np.load(path, allow_pickle=False) as archive:
            if not isinstance(archive, np.lib.npyio.NpzFile) or "__meta__" not in archive.files:
                raise CheckpointError(f"{path!r} is not a tinygnet checkpoint (no __meta__ entry)")
            arrays = {name: archive[name] for name in archive.files}
    except CheckpointError:
        raise
    except (OSError, ValueError, EOFError, zipfile.BadZipFile) as error:
        if "pickle" in str(error):      # NumPy's hint to load it unsafely: not one to pass on
            raise CheckpointError(f"{path!r} is not a tinygnet checkpoint: it holds pickled Python "
                                  f"objects, which a checkpoint never does (tinygnet does not "
                                  f"unpickle files: unpickling can run any code)") from None
        raise CheckpointError(f"{path!r} is not a readable tinygnet checkpoint: the archive is "
                              f"truncated or corrupt ({type(error).__name__}: {error})") from None
    try:
        meta = json.loads(arrays.pop("__meta__").tobytes().decode("utf-8"))
    except (UnicodeDecodeError, json.JSONDecodeError) as error:
        raise CheckpointError(f"{path!r}: its __meta__ entry is not valid JSON ({error})") from None
    if not isinstance(meta, dict) or meta.get("format") != FORMAT:
        raise CheckpointError(f"{path!r} is not a tinygnet checkpoint (format {meta.get('format')!r} "
                              f"where {FORMAT!r} was expected)" if isinstance(meta, dict)
                              else f"{path!r} is not a tinygnet checkpoint")
    if meta.get("version") != VERSION:
        raise CheckpointError(f"{path!r} is a tinygnet checkpoint of version {meta.get('version')!r}; "
                              f"this tinygnet reads version {VERSION}")
    try:
        return _decode(meta["state"], arrays)
    except (KeyError, TypeError, IndexError) as error:
        raise CheckpointError(f"{path!r}: the checkpoint is inconsistent (missing or malformed "
                              f"entry {error})") from None
