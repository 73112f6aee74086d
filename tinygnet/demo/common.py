"""Pieces the demos share: options and their errors, the device, the output folder and its
hold, text files, the divergence stop and the signals that stop a run."""
import argparse
import contextlib
import fcntl
import json
import math
import os
import signal
import tempfile
import time

from .. import backend
from ..checkpoint import (atomic_write, missing_folders, remove_empty_folders,
                          remove_stale_temp_files)


class UsageError(Exception):
    """A bad option or combination of options: printed without a traceback, exit status 2."""


def resolve_device(requested: str) -> str:
    """"auto" -> "cuda:0" if a GPU is usable, else "cpu"; "cuda" without one is an error."""
    if requested == "cpu":
        return "cpu"
    available = backend.is_cuda_available()
    if requested == "auto":
        return "cuda:0" if available else "cpu"
    if not available:
        raise UsageError(f"--device cuda: no usable GPU: {backend.gpu_problem()}; "
                         f"or use --device cpu")
    return backend.parse_device(requested)


def number(kind, test, what):
    """An argparse type: ``kind(text)`` that must pass ``test``, else a message saying ``what``.

    The same rule checks a value read back from a saved configuration: see ``invalid``.
    """
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"{text!r} is not a number") from None
        if not test(value):
            raise argparse.ArgumentTypeError(f"{text!r}: must be {what}")
        return value
    parse.__name__ = what        # argparse names the type in some messages
    parse.kind, parse.test, parse.what = kind, test, what
    return parse


positive_int = number(int, lambda v: v > 0, "a positive integer")
non_negative_int = number(int, lambda v: v >= 0, "an integer >= 0")
positive_float = number(float, lambda v: v > 0 and math.isfinite(v), "a number > 0")
non_negative_float = number(float, lambda v: v >= 0 and math.isfinite(v), "a number >= 0")
probability = number(float, lambda v: 0 <= v < 1, "in [0, 1)")
momentum_factor = number(float, lambda v: 0 <= v < 1, "in [0, 1)")   # the range PyTorch users expect
MAX_WIDTH = 4.0
width_factor = number(float, lambda v: 0 < v <= MAX_WIDTH,
                      f"a number > 0 and at most {MAX_WIDTH:g} (1 is the paper's network; the "
                      f"parameters and their memory grow as the width squared, "
                      f"{MAX_WIDTH ** 2:g}x the paper's at {MAX_WIDTH:g})")


def path_text(text):
    """An argparse type for a file or folder: any text but the empty one (which names none)."""
    if not text:
        raise argparse.ArgumentTypeError("an empty path names no file or folder")
    return text


path_text.__name__ = "path"


def invalid(rule, value):
    """Why ``value`` breaks ``rule``, or None if it keeps it. ``rule``: a ``number`` type, a
    tuple of choices, ``bool``, ``str`` or ``path_text``. For values read back from a file."""
    if isinstance(rule, tuple):
        if value in rule and not isinstance(value, bool):
            return None
        return f"one of {', '.join(map(str, rule))}"
    if rule is bool:
        return None if isinstance(value, bool) else "true or false"
    if rule in (str, path_text):
        return None if isinstance(value, str) and value else "a non-empty string"
    kinds = (int,) if rule.kind is int else (int, float)
    if isinstance(value, bool) or not isinstance(value, kinds) or not rule.test(value):
        return rule.what
    return None


def write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` as UTF-8, atomically (old content or new, never half)."""
    data = text.encode("utf-8")
    atomic_write(path, lambda f: f.write(data))


# --------------------------------------------------------------------------
# The output folder: checked and held before any work, claimed just before writing
# --------------------------------------------------------------------------
LOCK_NAME = ".tinygnet-run.lock"     # in --out while a run holds it


class OutFolder:
    """An output folder held by one run, from the ``--out`` check until the run exits.

    The hold is an exclusive ``fcntl.flock`` on ``OUT/.tinygnet-run.lock``,
    which holds the PID of the run. The kernel releases a flock when the
    process dies, however it dies (``kill -9`` too), so a hold is never left
    stale; a run that ends normally removes the file. ``path`` is the folder.
    Use it as a context manager, or call ``release()``.
    """

    def __init__(self, path, fd, created=()):
        self.path, self._fd = path, fd
        self._created = list(created)     # the folders the run made for it, deepest first

    def release(self) -> None:
        """Give the folder up: remove the lock file (still holding it), and the folders this
        run made for it if it left nothing in them."""
        if self._fd is None:
            return
        with contextlib.suppress(OSError):
            os.remove(os.path.join(self.path, LOCK_NAME))
        os.close(self._fd)           # closing the last descriptor releases the flock
        self._fd = None
        remove_empty_folders(self._created)     # a run that wrote nothing leaves no folder behind

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.release()


class FolderBusy(UsageError):
    """Another process holds the output folder; ``pid`` is its PID (None if not yet written)."""

    def __init__(self, message, pid):
        super().__init__(message)
        self.pid = pid


def _lock(folder):
    """An open descriptor of ``folder/LOCK_NAME`` holding its exclusive flock, our PID written.

    Raises FolderBusy when another process holds it. A holder that ends
    removes the file: if the file we locked is no longer the one at the
    path, we lock the new one instead, so two runs never hold two files.
    """
    path = os.path.join(folder, LOCK_NAME)
    while True:
        try:
            fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        except FileNotFoundError:    # the run that made the folder ended and removed it, empty
            os.makedirs(folder, exist_ok=True)
            continue
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            text = os.pread(fd, 32, 0).decode("ascii", "replace").strip()
            os.close(fd)
            raise FolderBusy("busy", int(text) if text.isdigit() else None) from None
        except BaseException:
            os.close(fd)
            raise
        try:
            current = os.stat(path)
        except FileNotFoundError:
            current = None
        if current is not None and os.path.samestat(os.fstat(fd), current):
            os.ftruncate(fd, 0)
            os.pwrite(fd, f"{os.getpid()}\n".encode("ascii"), 0)
            return fd
        os.close(fd)                 # its holder removed it as we opened it: lock the new one


def folder_demo(folder):
    """The demo whose run ``folder`` holds: the ``demo`` of its config.json (or, in a run saved
    before that was recorded, the subcommand of its ``command``); None if it holds no run."""
    try:
        with open(os.path.join(folder, "config.json"), encoding="utf-8") as f:
            record = json.load(f)
    except (OSError, ValueError):
        return None
    if not isinstance(record, dict):
        return None
    if isinstance(record.get("demo"), str):
        return record["demo"]
    words = str(record.get("command", "")).split()
    return words[3] if words[:3] == ["python", "-m", "tinygnet.demo"] and len(words) > 3 else None


def hold_out_folder(path, demo, outputs, given=True, replace=False, continuing=False, advice="",
                    resuming=None) -> OutFolder:
    """Check the output folder before any data is loaded, create it and hold it; an OutFolder.

    Raises UsageError when ``path`` cannot be used (``check_out_folder``),
    when another run holds it (its PID named; ``resuming``: the checkpoint
    that ``--resume`` continues, named instead), or when it holds a run of
    another demo than ``demo`` (even with ``replace``: a folder never holds
    two runs). ``given`` False: ``path`` is a default folder, and a new one
    is made beside it if it exists.
    """
    check_out_folder(path, outputs, given=given, replace=True)   # a file? writable?
    created = missing_folders(path)
    if not given:                    # a default folder: never reuse one, even in the same second
        for n in range(1, 1000):
            candidate = path if n == 1 else f"{path}-{n}"
            created = missing_folders(candidate)
            try:
                os.makedirs(candidate)
                path = candidate
                break
            except FileExistsError:
                continue
    else:
        os.makedirs(path, exist_ok=True)
    name = f"--out {path}" if given else f"output folder {path}"
    try:
        fd = _lock(path)
    except FolderBusy as busy:
        who = "another process" if busy.pid is None else f"PID {busy.pid}"
        message = (f"--resume {resuming}: its run is still running ({who}, writing to {path}); "
                   f"let it finish or stop it before resuming it" if resuming else
                   f"{name}: a run is already writing there ({who}); let it finish, or choose "
                   f"another --out")
        raise FolderBusy(message, busy.pid) from None
    except OSError as error:         # a file system without locks
        remove_empty_folders(created)
        raise UsageError(f"{name}: cannot lock it ({error.strerror}); choose a folder on a local "
                         f"disk with --out DIR") from None
    folder = OutFolder(path, fd, created)
    try:
        other = folder_demo(path)
        if other is not None and other != demo:
            raise UsageError(f"{name} holds a run of the {other} demo; a folder holds one run: "
                             f"choose another --out" + (" (--overwrite replaces only a "
                                                        f"{demo} run)" if replace else ""))
        check_out_folder(path, outputs, given=given, replace=replace, continuing=continuing,
                         advice=advice)
    except BaseException:
        folder.release()
        raise
    return folder




def default_out_folder(kind: str) -> str:
    """``runs/KIND-DATE-TIME``: where a run goes without ``--out``."""
    return os.path.join("runs", time.strftime(f"{kind}-%Y%m%d-%H%M%S"))


def check_out_folder(path, outputs, given=True, replace=False, continuing=False, advice="") -> None:
    """Refuse, before data is loaded or anything trained, an output folder that cannot be used.

    Raises UsageError when ``path`` is a file or lies under one, when it
    cannot be created or written, or when it already holds any of
    ``outputs`` (another run's files) unless ``replace`` (``--overwrite``)
    or ``continuing`` (``--resume`` into the run's own folder). ``given``:
    the path came from ``--out`` (a default folder never refuses: a new one
    is made beside it); ``advice`` ends the "already holds a run" message.
    """
    name = f"--out {path}" if given else f"output folder {path}"
    absolute = os.path.abspath(path)
    existing = absolute              # the deepest part of the path that exists
    while not os.path.lexists(existing):
        existing = os.path.dirname(existing)
    if not os.path.isdir(existing):
        where = "is a file" if existing == absolute else f"lies under {existing}, which is a file"
        raise UsageError(f"{name} {where}, not a folder; choose a folder with --out DIR")
    try:
        tempfile.TemporaryFile(dir=existing).close()      # can we write there? (leaves nothing)
    except OSError as error:
        where = "cannot write in it" if existing == absolute else f"cannot create it in {existing}"
        raise UsageError(f"{name}: {where} ({error.strerror}); choose a writable folder "
                         f"with --out DIR") from None
    if existing == absolute and given and not (replace or continuing):
        found = [output for output in outputs if os.path.lexists(os.path.join(absolute, output))]
        if found:
            raise UsageError(f"{name} already holds a run ({', '.join(found)}): {advice}"
                             f"start it over with --overwrite (which replaces those files), "
                             f"or choose another --out")


def claim_out_folder(path, outputs, replace=False) -> str:
    """Make the held output folder ready to write, once the data is loaded; return its path.

    With ``replace`` the previous run's ``outputs`` are removed first, so a
    run stopped early never leaves a mix of two runs. Temporary files that
    killed writes left behind are removed in every case.
    """
    os.makedirs(path, exist_ok=True)
    if replace:
        for output in outputs:
            with contextlib.suppress(FileNotFoundError):
                os.remove(os.path.join(path, output))
    remove_stale_temp_files(path, outputs)
    return path


# --------------------------------------------------------------------------
# Divergence: a loss that is no longer a number stops the run
# --------------------------------------------------------------------------
class TrainingDiverged(Exception):
    """The loss became NaN or infinite: the run stops and says so (exit status 1)."""


def describe_loss(parts) -> str:
    """"nan (main 2.302, aux1 inf, aux2 nan)" from (total, main, aux1, aux2) floats (aux may be None)."""
    total, *rest = parts
    named = [f"{name} {value:.4g}" for name, value in zip(("main", "aux1", "aux2"), rest)
             if value is not None]
    return f"{total:.4g}" + (f" ({', '.join(named)})" if named else "")


# --------------------------------------------------------------------------
# Signals: SIGTERM (timeout, schedulers, docker stop) stops a run as Ctrl-C does
# --------------------------------------------------------------------------
class Interrupted(KeyboardInterrupt):
    """A stop by signal ``signum`` (SIGINT is Ctrl-C); the exit status is 128 + signum."""

    def __init__(self, signum=signal.SIGINT):
        super().__init__(signal.Signals(signum).name)
        self.signum = int(signum)


def exit_status(interrupt: KeyboardInterrupt) -> int:
    """The shell's convention: 128 + the signal's number (130 for Ctrl-C, 143 for SIGTERM)."""
    return 128 + getattr(interrupt, "signum", signal.SIGINT)


@contextlib.contextmanager
def sigterm_interrupts():
    """Inside the block SIGTERM raises ``Interrupted`` as Ctrl-C raises KeyboardInterrupt."""
    def handler(signum, frame):
        raise Interrupted(signum)

    try:
        previous = signal.signal(signal.SIGTERM, handler)
    except ValueError:               # not the main thread: signals are not ours to handle
        yield
        return
    try:
        yield
    finally:
        signal.signal(signal.SIGTERM, previous)
