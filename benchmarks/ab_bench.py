"""A/B speed of two tinygnets in one process: this checkout against another, or fast paths on/off.

    python benchmarks/ab_bench.py --other PATH        # PATH: another checkout (before a change)
    python benchmarks/ab_bench.py --reference         # the fast paths against the reference ops
    python benchmarks/ab_bench.py --other .           # the same code on both sides: the harness's bias
    python benchmarks/ab_bench.py --other PATH --skip-width1 --repeats 20

What is timed: the training step of benchmarks/train_steps.py, rebuilt here
for either package (forward, the combined loss, backward, SGD with momentum)
at batch 128, and inference (eval, no graph) at batch 256, at the CIFAR
demo's CPU configuration and at width 1.
Both sides hold the same weights and data. Their runs are interleaved
in pairs, A B then B A, so that a change in the machine's load hits both
alike, and the table gives medians and the ratio of throughputs B / A per
case: of the two medians, and the median and quartiles of the pairs'
ratios. With ``--other`` the other checkout's ``tinygnet`` is imported under
another name beside this one.

The harness has a bias of its own: ``--other .`` (this checkout against
itself) measures it, and a difference smaller than that is no difference.
"""
from __future__ import annotations

import argparse
import importlib.util
import os
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    which = parser.add_mutually_exclusive_group(required=True)
    which.add_argument("--other", metavar="PATH", help="a checkout of tinygnet to compare with")
    which.add_argument("--reference", action="store_true",
                       help="compare the fast paths (A) with the reference ops (B)")
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="CPU threads for both sides (default: all cores, %(default)s)")
    parser.add_argument("--repeats", type=int, default=15, help="timed pairs per case")
    parser.add_argument("--width1-repeats", type=int, default=3, help="timed pairs at width 1")
    parser.add_argument("--skip-width1", action="store_true", help="leave out width 1")
    return parser.parse_args(argv)


ARGS = parse_args()
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ[_name] = str(ARGS.threads)

import numpy as np  # noqa: E402

sys.path.insert(0, ROOT)
import tinygnet  # noqa: E402
from tinygnet.kernels.workspaces import keep_freed_memory  # noqa: E402

keep_freed_memory()     # as the demos' processes do (both sides share the process)


def load_other(path):
    """The ``tinygnet`` package of another checkout, imported as ``tinygnet_other``."""
    folder = os.path.join(os.path.abspath(path), "tinygnet")
    spec = importlib.util.spec_from_file_location(
        "tinygnet_other", os.path.join(folder, "__init__.py"), submodule_search_locations=[folder])
    module = importlib.util.module_from_spec(spec)
    sys.modules["tinygnet_other"] = module
    spec.loader.exec_module(module)
    return module


def build(package, cfg, state=None):
    from importlib import import_module
    models = import_module(f"{package.__name__}.models")
    package.manual_seed(0)
    model = models.GoogLeNet(10, "cifar", width=cfg["width"], batchnorm=True,
                             stem_stride=cfg["stem_stride"])
    if state is not None:
        model.load_state_dict(state)
    return model


def train_step(package, model, batch, fast=True):
    from importlib import import_module
    optim = import_module(f"{package.__name__}.optim")
    loss_of = import_module(f"{package.__name__}.models").googlenet_loss
    rng = np.random.default_rng(0)
    x = package.tensor(rng.standard_normal((batch, 3, 32, 32), dtype=np.float32))
    y = rng.integers(0, 10, batch)
    optimizer = optim.SGD(model.parameters(), lr=0.01, momentum=0.9, nesterov=True,
                          weight_decay=5e-4)
    model.train()

    def step():
        with fast_paths(package, fast):
            optimizer.zero_grad()
            loss_of(model(x), y, aux_weight=0.3, label_smoothing=0.1).total.backward()
            optimizer.step()
    return step


def inference(package, model, batch, fast=True):
    x = package.tensor(np.random.default_rng(1).standard_normal((batch, 3, 32, 32),
                                                                dtype=np.float32))

    def run():
        model.eval()
        with fast_paths(package, fast), package.no_grad():
            model(x)
    return run


def fast_paths(package, on):
    use_fast = getattr(package, "use_fast", None)
    if use_fast is None:                  # a tinygnet from before the switch existed
        if not on:
            raise SystemExit("the other checkout has no use_fast switch")
        from contextlib import nullcontext
        return nullcontext()
    return use_fast(on)


def pairs(a, b, repeats, warmup=1):
    for fn in (a, b):
        for _ in range(warmup):
            fn()
    times = {"A": [], "B": []}
    for i in range(repeats):
        order = (("A", a), ("B", b)) if i % 2 == 0 else (("B", b), ("A", a))   # A B B A A B ...
        for name, fn in order:
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return np.array(times["A"]), np.array(times["B"])


def main():
    if ARGS.reference:
        package_a = package_b = tinygnet
        label_a, label_b = "fast paths", "reference ops (use_fast(False))"
        fast_b = False
    else:
        package_a, package_b = tinygnet, load_other(ARGS.other)
        label_a, label_b = f"this checkout ({ROOT})", f"other ({os.path.abspath(ARGS.other)})"
        fast_b = True
    for package in {package_a, package_b}:
        package.set_num_threads(ARGS.threads)
    from tinygnet.demo.cifar import CPU_DEFAULTS
    configs = [("demo width", dict(width=CPU_DEFAULTS["width"],
                                   stem_stride=CPU_DEFAULTS["stem_stride"]), ARGS.repeats)]
    if not ARGS.skip_width1:
        configs.append(("width 1", dict(width=1.0, stem_stride=1), ARGS.width1_repeats))
    print(f"A: {label_a}\nB: {label_b}\nthreads {ARGS.threads}, numpy {np.__version__}, "
          f"load average {os.getloadavg()[0]:.2f}\n")
    print("| case | A img/s | B img/s | B / A (of medians) | B / A (median of pairs) "
          "| pairs' quartiles |")
    print("|---|---:|---:|---:|---:|---:|")
    for name, cfg, repeats in configs:
        model_a = build(package_a, cfg)
        model_b = build(package_b, cfg, model_a.state_dict())
        for case, make, batch in (("training step", train_step, 128),
                                  ("inference", inference, 256)):
            a, b = pairs(make(package_a, model_a, batch), make(package_b, model_b, batch, fast_b),
                         repeats)
            ratio = a / b                                # throughput of B over A, pair by pair
            low, high = np.percentile(ratio, [25, 75])
            print(f"| {case}, {name}, batch {batch} ({repeats} pairs) | "
                  f"{batch / np.median(a):.1f} | {batch / np.median(b):.1f} | "
                  f"{np.median(a) / np.median(b):.3f} | {np.median(ratio):.3f} | "
                  f"{low:.3f}-{high:.3f} |", flush=True)
        del model_a, model_b
    print(f"\nload average after: {os.getloadavg()[0]:.2f}")


if __name__ == "__main__":
    main()
