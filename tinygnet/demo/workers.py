"""Worker processes of the demos: born on one core, deaf to the terminal, dying with their parent.

Two demos hand work to processes of their own: ``gradflow --jobs`` trains
whole runs side by side (``gradflow_runs.py``), and ``cifar --processes``
cuts each training step's batch into parts (``parallel.py``). Their workers
are born the same way, here:

- ``spawn``-started (``start_process``): each a fresh interpreter. A fork would
  copy the parent's threads' state (tinygnet's thread pool, BLAS's) without
  the threads;
- on one core: BLAS held to one thread through the environment the worker
  starts with (``ONE_THREAD``: it must be set before NumPy loads BLAS), and
  again by the worker with tinygnet's own pool (``settle_in``: ``use_one_core``),
  whatever the script that spawned it asked of BLAS;
- keeping the memory it frees for its next arrays (``settle_in``:
  ``keep_freed_memory``): each step allocates the arrays the last one freed;
- deaf to Ctrl-C (and to whatever else ``deaf_to`` names): the terminal
  sends Ctrl-C to every process of the group, and it is the parent's to
  handle. A worker is born ignoring them: an ignored signal stays ignored
  across the ``exec`` of a new interpreter (a blocked one does not, with
  ``spawn``), and Python then leaves it ignored. The parent blocks them
  meanwhile, so that one sent while a worker starts waits for the parent's
  own handler, not lost;
- dying with the parent (``die_with``, called by ``settle_in``): a parent
  killed by ``kill -9`` cleans nothing up, and a worker left behind would
  hold a core for nothing.
"""
from __future__ import annotations

import ctypes
import os
import signal
import sys
import threading

from tqdm.auto import tqdm

from ..kernels.threads import use_one_core
from ..kernels.workspaces import keep_freed_memory

__all__ = ["ONE_THREAD", "WorkerDied", "WorkerTraceback", "start_process", "settle_in",
           "die_with", "how_it_ended", "quiet_tqdm", "usable_cores", "more_workers_than_cores"]

ONE_THREAD = dict.fromkeys(("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"), "1")


class WorkerDied(RuntimeError):
    """A worker process ended without sending what it owed (killed, out of memory...)."""


class WorkerTraceback(Exception):
    """The traceback, as text, of an error raised in a worker: the cause of the same error
    raised again in the parent (as ``concurrent.futures`` shows a worker's error)."""

    def __str__(self):
        return "\n\nin the worker process:\n" + self.args[0]


def usable_cores() -> int:
    """The CPU cores this process may run on (its affinity, where the system tells it)."""
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0))
    return os.cpu_count() or 1


def more_workers_than_cores(workers: int, option: str) -> str:
    """A one-line note when ``workers`` worker processes, each meant to have a core of its
    own, would share fewer cores than that (``option`` names the flag that asked for them);
    '' when each has its core."""
    cores = usable_cores()
    if workers <= cores:
        return ""
    return (f"note: {option} {workers} starts {workers} worker processes, one for each core, "
            f"but this process may run on {cores} core{'' if cores == 1 else 's'}: "
            f"the workers will take turns")


def start_process(context, target, args, name, deaf_to=(signal.SIGINT,)):
    """Start ``target(*args)`` in a new process of ``context`` (a ``spawn`` context), born with
    BLAS on one thread and ignoring the signals ``deaf_to``; returns the started Process.
    Call it from the main thread (where signal handlers are set)."""
    process = context.Process(target=target, name=name, daemon=True, args=args)
    saved = {name: os.environ.get(name) for name in ONE_THREAD}
    os.environ.update(ONE_THREAD)
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, set(deaf_to))    # ours wait meanwhile
    handlers = {signum: signal.signal(signum, signal.SIG_IGN) for signum in deaf_to}
    try:
        process.start()
    finally:
        for signum, handler in handlers.items():
            signal.signal(signum, handler)
        signal.pthread_sigmask(signal.SIG_SETMASK, mask)
        for variable, value in saved.items():
            if value is None:
                os.environ.pop(variable, None)
            else:
                os.environ[variable] = value
    return process


def settle_in(parent: int) -> None:
    """What a worker does first: end with its ``parent`` (``die_with``), run on one core
    (tinygnet's threads and BLAS's, ``use_one_core``) and keep the memory it frees for its
    next arrays (``keep_freed_memory``)."""
    die_with(parent)
    use_one_core()
    keep_freed_memory()


def die_with(parent: int) -> None:
    """End this process when its parent ends, however it ends. On Linux the kernel sends this
    process SIGKILL when the parent ends (``prctl(PR_SET_PDEATHSIG)``); elsewhere a worker
    ends when it next finds its pipe closed."""
    if sys.platform.startswith("linux"):
        PR_SET_PDEATHSIG = 1
        ctypes.CDLL(None, use_errno=True).prctl(PR_SET_PDEATHSIG, signal.SIGKILL)
    if os.getppid() != parent:    # the parent ended before that took hold
        os._exit(1)


def how_it_ended(process) -> str:
    """"killed by SIGKILL: out of memory?", "exit status 1" or "its pipe closed": what ended a
    worker that stopped answering (waiting a few seconds for it to end)."""
    process.join(5)
    code = process.exitcode
    if code is None:
        return "its pipe closed"
    if code < 0:
        how = f"killed by {signal.Signals(-code).name}"
        return how + ": out of memory?" if code == -signal.SIGKILL else how
    return f"exit status {code}"


def quiet_tqdm() -> None:
    """No tqdm machinery in a worker that draws no bars: no monitor thread, and no default
    lock (a named semaphore that a killed worker leaves behind, warned of at exit)."""
    tqdm.monitor_interval = 0
    tqdm.set_lock(threading.RLock())
