"""Where a CIFAR training step's time goes: per op, outside the ops, and in the data pipeline.

    python benchmarks/step_profile.py                 # the demo's CPU configuration, fast paths on
    python benchmarks/step_profile.py --reference     # the reference ops (use_fast(False))
    python benchmarks/step_profile.py --steps 40 --top 30

What is timed, at the CIFAR demo's CPU configuration (``CPU_DEFAULTS``: width,
stem stride, batch norm, batch size; the demo's own ``train_step`` with SGD,
momentum, Nesterov and weight decay, aux weight 0.3, label smoothing 0.1):

* the training step (median wall time) and the share of it the process's
  threads kept busy (process CPU time / wall time: 100% is one core, 200%
  two);
* each op's forward and backward, summed over its calls in a step (the class
  that ran: the fast path when fast paths are on), by wrapping every
  ``Function`` subclass's ``forward`` and ``backward`` for the run (and
  putting them back after). A fast path that calls its reference's method is
  timed once, as itself. What no op's forward or backward holds - building
  the graph, the backward walk and its gradient sums, the optimiser,
  freeing arrays - is the step less the ops;
* the data pipeline: one augmented training batch of the demo's ``DataLoader``
  (random crop of ``crop_padding``, flip, normalise) on the calling thread,
  the time a background thread could at most hide;
* inference: one test view (eval, no graph) at the demo's test batch size.

The ops' times are wall times on the calling thread: an op that hands blocks
to tinygnet's threads is timed until its last block is done. An op's CPU
share counts every thread of the process while it ran, so with the fast
paths off it also counts OpenBLAS's threads spinning after an earlier
product (shares above 200% on 2 cores). The machine and its load average
are printed with the numbers.
"""
from __future__ import annotations

import argparse
import collections
import contextlib
import os
import platform
import sys
import time

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)

import tinygnet  # noqa: E402
from tinygnet.data import DataLoader  # noqa: E402
from tinygnet.demo.cifar import CPU_DEFAULTS  # noqa: E402
from tinygnet.demo.training import train_step  # noqa: E402
from tinygnet.models import GoogLeNet  # noqa: E402
from tinygnet.optim import SGD  # noqa: E402
from tinygnet.kernels.workspaces import keep_freed_memory  # noqa: E402
from tinygnet.tensor import Function  # noqa: E402

keep_freed_memory()     # as the demo's processes do: no page faults for a step's arrays


def _function_classes(cls=Function):
    for sub in cls.__subclasses__():
        yield sub
        yield from _function_classes(sub)


@contextlib.contextmanager
def op_timer():
    """Time every op's forward and backward while inside; yields ``{(op class name, pass):
    [wall seconds, process CPU seconds, calls]}`` (CPU time of all the process's threads
    while the op ran). The methods are restored on exit, even after an error."""
    totals = collections.defaultdict(lambda: [0.0, 0.0, 0])
    busy = [False]              # inside a timed method: a nested one (super()) is not timed again
    patched = []

    def timed(method, name):
        def wrapper(self, *args, **kwargs):
            if busy[0]:
                return method(self, *args, **kwargs)
            busy[0] = True
            start, cpu_start = time.perf_counter(), time.process_time()
            try:
                return method(self, *args, **kwargs)
            finally:
                entry = totals[type(self).__name__, name]
                entry[0] += time.perf_counter() - start
                entry[1] += time.process_time() - cpu_start
                entry[2] += 1
                busy[0] = False
        return wrapper

    try:
        for cls in set(_function_classes()):
            for name in ("forward", "backward"):
                if name in vars(cls):
                    patched.append((cls, name, vars(cls)[name]))
                    setattr(cls, name, timed(vars(cls)[name], name))
        yield totals
    finally:
        for cls, name, method in patched:
            setattr(cls, name, method)


def demo_model(width=None, stem_stride=None):
    tinygnet.manual_seed(0)
    return GoogLeNet(10, "cifar", width=CPU_DEFAULTS["width"] if width is None else width,
                     batchnorm=CPU_DEFAULTS["batchnorm"],
                     stem_stride=CPU_DEFAULTS["stem_stride"] if stem_stride is None else stem_stride)


def profile_step(model, batch, steps, warmup=2):
    """Time ``steps`` training steps of ``model`` on a fixed random batch.

    Returns ``(step_seconds, cpu_share, ops)``: the median step, process CPU
    time over wall time across the timed steps, and ``{(op, pass): (wall
    seconds per step, CPU seconds per step, calls per step)}``."""
    rng = np.random.default_rng(0)
    x = rng.standard_normal((batch, 3, 32, 32), dtype=np.float32)
    y = rng.integers(0, 10, batch)
    optimizer = SGD(model.parameters(), lr=CPU_DEFAULTS["lr"] / 100, momentum=CPU_DEFAULTS["momentum"],
                    nesterov=CPU_DEFAULTS["nesterov"], weight_decay=CPU_DEFAULTS["weight_decay"])
    model.train()

    def step():
        train_step(model, x, y, optimizer, "cpu", aux_weight=CPU_DEFAULTS["aux_weight"],
                   label_smoothing=CPU_DEFAULTS["label_smoothing"])
    for _ in range(warmup):
        step()
    times = []
    with op_timer() as totals:
        cpu0, wall0 = time.process_time(), time.perf_counter()
        for _ in range(steps):
            start = time.perf_counter()
            step()
            times.append(time.perf_counter() - start)
        cpu_share = (time.process_time() - cpu0) / (time.perf_counter() - wall0)
    ops = {key: (wall / steps, cpu / steps, calls // steps)
           for key, (wall, cpu, calls) in totals.items()}
    return float(np.median(times)), cpu_share, ops


def time_loader_batch(batch, repeats=50):
    """Median seconds for one augmented, normalised training batch of the demo's loader."""
    images = np.random.default_rng(0).integers(0, 256, (max(4 * batch, 1024), 3, 32, 32),
                                               dtype=np.uint8)
    loader = DataLoader((images, np.zeros(len(images), dtype=np.int64)), batch, shuffle=True,
                        augment=True, seed=0, padding=CPU_DEFAULTS["crop_padding"])
    times = []
    while len(times) < repeats:
        batches = iter(loader)
        while len(times) < repeats:
            start = time.perf_counter()
            if next(batches, None) is None:
                break
            times.append(time.perf_counter() - start)
    return float(np.median(times))


def time_inference(model, batch, repeats=10):
    """One test view of ``batch`` images (eval mode, no graph): ``(median seconds,
    ops)``, ``ops`` as ``profile_step``'s, per view."""
    x = tinygnet.tensor(np.random.default_rng(1).standard_normal((batch, 3, 32, 32),
                                                                 dtype=np.float32))
    model.eval()
    times = []
    with tinygnet.no_grad():
        model(x)
        with op_timer() as totals:
            for _ in range(repeats):
                start = time.perf_counter()
                model(x)
                times.append(time.perf_counter() - start)
    model.train()
    ops = {key: (wall / repeats, cpu / repeats, calls // repeats)
           for key, (wall, cpu, calls) in totals.items()}
    return float(np.median(times)), ops


def print_ops(ops, total, top):
    """The ``top`` ops by time, with their share of ``total`` seconds and their CPU use."""
    print(f"  {'op':>28} {'pass':<8} {'ms':>8} {'share':>6} {'CPU':>5} {'calls':>6}")
    for (op, name), (wall, cpu, calls) in sorted(ops.items(), key=lambda kv: -kv[1][0])[:top]:
        print(f"  {op:>28} {name:<8} {wall * 1e3:8.2f} {wall / total:6.1%} "
              f"{cpu / max(wall, 1e-12):5.0%} {calls:6d}")


def cpu_model() -> str:
    """The processor's name (Linux: /proc/cpuinfo), else what ``platform`` knows."""
    try:
        with open("/proc/cpuinfo") as info:
            for line in info:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--steps", type=int, default=20, help="timed training steps (default 20)")
    parser.add_argument("--top", type=int, default=20, help="ops listed (default 20)")
    parser.add_argument("--reference", action="store_true", help="the reference ops, fast paths off")
    args = parser.parse_args(argv)
    tinygnet.use_fast(not args.reference)
    batch = CPU_DEFAULTS["batch_size"]
    print(f"{cpu_model()}, {os.cpu_count()} cores, "
          f"load average {os.getloadavg()[0]:.2f}; fast paths {'off' if args.reference else 'on'}")
    model = demo_model()
    step, cpu_share, ops = profile_step(model, batch, args.steps)
    in_ops = sum(wall for wall, _, _ in ops.values())
    in_ops_cpu = sum(cpu for _, cpu, _ in ops.values())
    print(f"training step, batch {batch}: {step * 1e3:.1f} ms (median of {args.steps}), "
          f"CPU {cpu_share * 100:.0f}%")
    print(f"  inside ops' forward/backward {in_ops * 1e3:.1f} ms (CPU {in_ops_cpu / in_ops:.0%}), "
          f"outside them {(step - in_ops) * 1e3:.1f} ms (graph, backward walk and gradient sums, "
          f"optimiser)")
    print_ops(ops, step, args.top)
    loader = time_loader_batch(batch)
    print(f"data pipeline: one training batch {loader * 1e3:.2f} ms ({loader / step:.1%} of a step)")
    eval_batch = 2 * batch
    view, view_ops = time_inference(model, eval_batch)
    print(f"inference: one view of {eval_batch} test images {view * 1e3:.1f} ms "
          f"({eval_batch / view:.0f} images/s)")
    print_ops(view_ops, view, min(args.top, 8))
    print(f"load average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
