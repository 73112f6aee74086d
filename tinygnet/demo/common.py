"""Pieces the demos share: options and their errors, the device, the output folder, text
files, the divergence stop and the signals that stop a run."""
import argparse
import contextlib
import math
import os
import signal
import tempfile
import time

from .. import backend
from ..checkpoint import atomic_write, remove_stale_temp_files


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
momentum_factor = number(float, lambda v: 0 <= v < 1, "in [0, 1)")   # the range PyTorch users expect


def write_text(path, text: str) -> None:
    """Write ``text`` to ``path`` as UTF-8, atomically (old content or new, never half)."""
    data = text.encode("utf-8")
    atomic_write(path, lambda f: f.write(data))


# --------------------------------------------------------------------------
# The output folder: checked before any work, claimed just before writing
# --------------------------------------------------------------------------
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


def claim_out_folder(path, outputs, given=True, replace=False) -> str:
    """Create the output folder (or with ``given`` False, a new one); return its path.

    With ``replace`` the previous run's ``outputs`` are removed first, so a
    run stopped early never leaves a mix of two runs. Temporary files that
    killed writes left behind are removed in every case.
    """
    if not given:                    # a default folder: never reuse one, even in the same second
        for n in range(1, 1000):
            candidate = path if n == 1 else f"{path}-{n}"
            try:
                os.makedirs(candidate)
                return candidate
            except FileExistsError:
                continue
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
