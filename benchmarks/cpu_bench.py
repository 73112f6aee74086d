"""tinygnet against PyTorch on the CPU: GoogLeNet training, inference and single ops.

    python benchmarks/cpu_bench.py                  # everything, all cores (a few minutes)
    python benchmarks/cpu_bench.py --quick          # fewer repeats, no width-1 training
    python benchmarks/cpu_bench.py --threads 1 --out perf.md

What is measured (cifar config, 3 x 32 x 32 images, 10 classes):

* a training step: forward, the combined loss (main + 0.3 * aux, label
  smoothing 0.1), backward and an SGD update (momentum, Nesterov, weight
  decay), at the CIFAR demo's CPU config (``CPU_DEFAULTS``) and at width 1;
* inference (eval mode, no graph) at batch 256, and the demo's test: batches
  of 256 cut into parts, one per worker process (``--processes``), against
  PyTorch running the same batches one after the other;
* single ops, forward + backward, at the shapes of inception3a at 32 x 32.

Fair play: both sides get the same weights (tinygnet's state_dict copied into
the PyTorch model of ``torch_googlenet.py``; the logits are checked to agree
before anything is timed), the same data, the same thread count (``tinygnet.set_num_threads`` and
``torch.set_num_threads``; BLAS and OpenMP pools are sized through environment
variables before NumPy and torch are imported), warm-up runs, then repeats
interleaved (tinygnet, torch, tinygnet, ...) so that a change in machine load
hits both, and medians. Ratios are throughputs, tinygnet / PyTorch (above 1:
tinygnet is faster). Peak memory is the resident-set high-water mark of a
fresh subprocess running training steps (one per framework, so they never
share a high-water mark). GFLOP/s counts the multiply-adds of the convolutions
and linear layers (x 2 flops; backward counted as twice the forward, less the
first conv's unneeded input gradient), compared with a large float32 NumPy
matmul on the same threads: the machine's practical peak. The process keeps
the memory it frees for its next arrays, as the demos' processes do
(``tinygnet.kernels.workspaces.keep_freed_memory``): PyTorch's arrays too,
since both share the process (``--malloc-defaults``: glibc as it starts).

Run it on a quiet machine: with other processes on the cores, BLAS threads
spin and every number drops (the load average is printed before and after).
"""
from __future__ import annotations

import argparse
import os
import platform
import subprocess
import sys
import time

# ----------------------------------------------------------------------------
# Thread pools are sized when the libraries load: parse --threads before
# importing NumPy or torch.
# ----------------------------------------------------------------------------
def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--threads", type=int, default=os.cpu_count(),
                        help="threads for BLAS/OpenMP and torch (default: all cores, %(default)s)")
    parser.add_argument("--quick", action="store_true",
                        help="fewer repeats, per-op batch 32, no width-1 training")
    parser.add_argument("--repeats", type=int, default=None,
                        help="timed repeats per case (default 10; 5 with --quick)")
    parser.add_argument("--width1-repeats", type=int, default=3,
                        help="timed repeats of the (slow) width-1 training step (default 3)")
    parser.add_argument("--skip-width1", action="store_true", help="leave out width-1 rows")
    parser.add_argument("--no-rss", action="store_true", help="leave out the peak-memory runs")
    parser.add_argument("--malloc-defaults", action="store_true",
                        help="leave this process's malloc as glibc starts it (by default freed "
                             "memory is kept for the next arrays, as in the demos' processes, "
                             "for both frameworks; the demo's worker processes keep it always)")
    parser.add_argument("--out", help="also write the markdown report to this file")
    parser.add_argument("--rss-child", choices=("tinygnet", "torch"), help=argparse.SUPPRESS)
    parser.add_argument("--width", type=float, default=None, help=argparse.SUPPRESS)
    parser.add_argument("--stem-stride", type=int, default=None, help=argparse.SUPPRESS)
    return parser.parse_args(argv)


ARGS = parse_args() if __name__ == "__main__" else parse_args([])
for _name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS",
              "BLIS_NUM_THREADS", "VECLIB_MAXIMUM_THREADS", "NUMEXPR_NUM_THREADS"):
    os.environ[_name] = str(ARGS.threads)
# Both frameworks share this process so that their runs can be interleaved.
# After a parallel region, torch's OpenMP threads spin for a while by default,
# taking the cores from the NumPy/OpenBLAS call that runs next (we saw a 3x3
# conv run 10x slower). PASSIVE makes idle OpenMP threads sleep instead.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

import numpy as np  # noqa: E402

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tinygnet  # noqa: E402
import tinygnet.functional as F  # noqa: E402

# tinygnet's own CPU threads (elementwise passes and blocks of each matmul; it then
# keeps NumPy's OpenBLAS to one thread), as many as torch gets.
tinygnet.set_num_threads(ARGS.threads)
from tinygnet.kernels.workspaces import keep_freed_memory  # noqa: E402
# The demos' processes keep freed memory for their next arrays (no page faults for the same
# arrays every step); this process does too, for both frameworks, unless asked not to.
MEMORY_KEPT = False if ARGS.malloc_defaults else keep_freed_memory()
from tinygnet.demo.cifar import CPU_DEFAULTS  # noqa: E402
from tinygnet.models import GoogLeNet  # noqa: E402
from tinygnet.nn import Conv2d, Linear  # noqa: E402
from tinygnet.tensor import Tensor, no_grad  # noqa: E402

BATCH = 128                 # training batch (the demo's)
EVAL_BATCH = 256
from train_steps import (NUM_CLASSES, data, interleaved, tinygnet_parallel_train_step,  # noqa: E402
                         tinygnet_train_step, torch_train_step)
from tinygnet.data import DataLoader  # noqa: E402
from tinygnet.demo.parallel import DataParallel  # noqa: E402
DEFAULT = dict(width=CPU_DEFAULTS["width"], stem_stride=CPU_DEFAULTS["stem_stride"],
               batchnorm=CPU_DEFAULTS["batchnorm"])
WIDTH1 = dict(width=1.0, stem_stride=1, batchnorm=CPU_DEFAULTS["batchnorm"])
PROCESSES = CPU_DEFAULTS["processes"]    # the demo's step: each batch in this many processes


def config_name(cfg):
    return (f"width {cfg['width']:g}, stem_stride {cfg['stem_stride']}"
            f"{', BN' if cfg['batchnorm'] else ''}")


# ----------------------------------------------------------------------------
# The two models and their training steps
# ----------------------------------------------------------------------------
def make_tinygnet(cfg):
    tinygnet.manual_seed(0)
    return GoogLeNet(NUM_CLASSES, "cifar", width=cfg["width"], batchnorm=cfg["batchnorm"],
                     stem_stride=cfg["stem_stride"])


def make_torch(cfg, state_dict):
    import torch_googlenet
    model = torch_googlenet.GoogLeNet(NUM_CLASSES, width=cfg["width"],
                                      batchnorm=cfg["batchnorm"],
                                      stem_stride=cfg["stem_stride"])
    torch_googlenet.load_tinygnet_state_dict(model, state_dict)
    return model


def tinygnet_inference(model, batch):
    x = Tensor(data(batch, seed=1)[0])

    def run():
        model.eval()
        with no_grad():
            model(x)
    return run


def torch_inference(model, batch, batches=1):
    import torch
    x = torch.from_numpy(data(batch, seed=1)[0])

    def run():
        model.eval()
        with torch.inference_mode():
            for _ in range(batches):
                model(x)
    return run


def tinygnet_parallel_inference(model, parallel, batch, batches):
    """The CIFAR demo's test: ``batches`` batches of ``batch`` uint8 test images, cut into
    parts, one per worker of ``parallel``, each predicting its part's classes
    (``DataParallel.predict_classes``: the weights sent, the images normalised, eval, no
    graph), as the demo tests after every epoch."""
    images = np.random.default_rng(1).integers(0, 256, (batch * batches, 3, 32, 32),
                                               dtype=np.uint8)
    loader = DataLoader((images, np.zeros(len(images), dtype=np.int64)), batch, shuffle=False,
                        augment=False, seed=0)

    def run():
        parallel.predict_classes(model, loader)
    return run


def training_flops(model, batch):
    """Flops of one training step: 2 per multiply-add of every conv and linear layer,
    forward + backward (gx and gW each cost a forward, except the first conv's gx)."""
    macs, handles = [], []
    for module in model.modules():
        if isinstance(module, Conv2d):
            def hook(m, inputs, y):
                N, O, OH, OW = y.shape
                macs.append(N * O * OH * OW * m.in_channels * m.kernel_size[0] * m.kernel_size[1])
        elif isinstance(module, Linear):
            def hook(m, inputs, y):
                macs.append(y.size * m.in_features)
        else:
            continue
        handles.append(module.register_forward_hook(hook))
    model.train()
    with no_grad():
        model(Tensor(data(batch)[0]))
    for h in handles:
        h.remove()
    first_conv = macs[0]
    return 2 * (3 * sum(macs) - first_conv)


# ----------------------------------------------------------------------------
# Timing
# ----------------------------------------------------------------------------
def median_times(cases: dict, repeats: int, warmup: int = 1) -> dict:
    """{name: fn} -> {name: median seconds}, repeats interleaved across the cases."""
    return {name: float(np.median(t)) for name, t in interleaved(cases, repeats, warmup).items()}


def gemm_peak(repeats=5, n=2048):
    """GFLOP/s of a float32 n x n x n NumPy matmul (median of ``repeats``)."""
    rng = np.random.default_rng(0)
    a = rng.standard_normal((n, n), dtype=np.float32)
    b = rng.standard_normal((n, n), dtype=np.float32)
    c = np.empty((n, n), dtype=np.float32)
    np.matmul(a, b, out=c)
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        np.matmul(a, b, out=c)
        times.append(time.perf_counter() - start)
    return 2 * n ** 3 / np.median(times) / 1e9


# ----------------------------------------------------------------------------
# Same logits on both sides
# ----------------------------------------------------------------------------
def check_same_logits(cfg, batch=8):
    import torch
    model = make_tinygnet(cfg)
    # Give batch norm non-trivial running statistics, so eval mode really uses them.
    rng = np.random.default_rng(2)
    for name, buffer in model.named_buffers():
        if name.endswith("running_mean"):
            buffer.data[...] = rng.normal(0, 0.1, buffer.shape)
        elif name.endswith("running_var"):
            buffer.data[...] = rng.uniform(0.5, 2.0, buffer.shape)
    reference = make_torch(cfg, model.state_dict())
    x = data(batch, seed=3)[0]
    model.eval()
    reference.eval()
    with no_grad():
        ours = model(Tensor(x)).numpy()
    with torch.no_grad():
        theirs = reference(torch.from_numpy(x)).numpy()
    error = float(np.abs(ours - theirs).max() / np.abs(theirs).max())
    ok = error < 1e-4
    return ok, error


# ----------------------------------------------------------------------------
# Single ops, forward + backward
# ----------------------------------------------------------------------------
def op_cases(batch):
    """(name, tinygnet fn, torch fn) for each op, at inception3a shapes at 32 x 32 (width 1)."""
    import torch
    import torch.nn.functional as TF
    rng = np.random.default_rng(4)

    def randn(*shape):
        return rng.standard_normal(shape, dtype=np.float32)

    def pair(forward_ours, forward_theirs, inputs, grad_shape=None):
        """Both sides: forward on fresh leaves (the arrays are shared), backward with gy."""
        def ours():
            leaves = [Tensor(a, requires_grad=True) for a in inputs]
            y = forward_ours(*leaves)
            y.backward(gy if gy is not None else None)

        def theirs():
            leaves = [torch.from_numpy(a).requires_grad_() for a in inputs]
            y = forward_theirs(*leaves)
            y.backward(gy_t if gy_t is not None else None)
        gy = None if grad_shape == () else randn(*grad_shape)
        gy_t = None if gy is None else torch.from_numpy(gy)
        return ours, theirs

    N, S = batch, 32
    cases = []
    for label, C, O, K in (("conv 1x1, 192->64", 192, 64, 1), ("conv 3x3, 96->128", 96, 128, 3),
                           ("conv 5x5, 16->32", 16, 32, 5)):
        x, w, b = randn(N, C, S, S), randn(O, C, K, K) * 0.05, randn(O)
        p = K // 2
        cases.append((label + f" (N={N}, {S}x{S})", *pair(
            lambda x, w, b, p=p: F.conv2d(x, w, b, padding=p),
            lambda x, w, b, p=p: TF.conv2d(x, w, b, padding=p),
            [x, w, b], (N, O, S, S))))
    x = randn(N, 480, S, S)
    cases.append((f"max pool 3x3/2 ceil (N={N}, 480, {S}x{S})", *pair(
        lambda x: F.max_pool2d(x, 3, 2, ceil_mode=True),
        lambda x: TF.max_pool2d(x, 3, 2, ceil_mode=True),
        [x], (N, 480, S // 2, S // 2))))
    branches = [randn(N, c, S, S) for c in (64, 128, 32, 32)]
    cases.append((f"Inception concat (64+128+32+32, {S}x{S})", *pair(
        lambda *b: F.cat(b, dim=1), lambda *b: torch.cat(b, 1), branches, (N, 256, S, S))))
    x = randn(N, 192, S, S)
    cases.append((f"LRN size 5 (N={N}, 192, {S}x{S})", *pair(
        lambda x: F.local_response_norm(x, 5, 1e-4, 0.75, 1.0),
        lambda x: TF.local_response_norm(x, 5, 1e-4, 0.75, 1.0),
        [x], (N, 192, S, S))))
    gamma, beta = rng.uniform(0.5, 1.5, 192).astype(np.float32), randn(192)
    cases.append((f"batch norm, train (N={N}, 192, {S}x{S})", *pair(
        lambda x, g, b: F.batch_norm(x, None, None, g, b, training=True),
        lambda x, g, b: TF.batch_norm(x, None, None, g, b, training=True),
        [x, gamma, beta], (N, 192, S, S))))
    logits, targets = randn(BATCH, NUM_CLASSES), rng.integers(0, NUM_CLASSES, BATCH)
    targets_t = torch.from_numpy(targets)
    cases.append((f"cross-entropy, smoothing 0.1 ({BATCH} x {NUM_CLASSES})", *pair(
        lambda z: F.cross_entropy(z, targets, label_smoothing=0.1),
        lambda z: TF.cross_entropy(z, targets_t, label_smoothing=0.1),
        [logits], ())))
    return cases


# ----------------------------------------------------------------------------
# Peak memory, in a fresh process per framework
# ----------------------------------------------------------------------------
def _status_mib(field):
    """VmRSS (now) or VmHWM (the high-water mark) of this process, in MiB.

    VmHWM, not getrusage's ru_maxrss: after fork + exec, ru_maxrss starts at
    the parent's high-water mark, so a child of a big process would report
    the parent's peak.
    """
    with open("/proc/self/status") as f:
        for line in f:
            if line.startswith(field + ":"):
                return int(line.split()[1]) / 1024
    return float("nan")


def rss_child(framework, cfg):
    """Print 'baseline_MiB peak_MiB' of two training steps of ``framework``."""
    model = make_tinygnet(cfg)
    if framework == "torch":
        import torch
        torch.set_num_threads(ARGS.threads)
        state = model.state_dict()
        del model
        model = make_torch(cfg, state)
        step = torch_train_step(model, BATCH)
    else:
        step = tinygnet_train_step(model, BATCH)
    baseline = _status_mib("VmRSS")
    step()
    step()
    peak = _status_mib("VmHWM")
    print(f"{baseline:.1f} {peak:.1f}")


def peak_rss(framework, cfg):
    command = [sys.executable, os.path.abspath(__file__), "--threads", str(ARGS.threads),
               "--rss-child", framework, "--width", str(cfg["width"]),
               "--stem-stride", str(cfg["stem_stride"])]
    done = subprocess.run(command, capture_output=True, text=True, check=True)
    baseline, peak = map(float, done.stdout.split()[-2:])
    return baseline, peak


# ----------------------------------------------------------------------------
# Report
# ----------------------------------------------------------------------------
def machine_info():
    import torch
    cpu = "unknown"
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    try:
        blas = np.show_config(mode="dicts")["Build Dependencies"]["blas"]
        blas = f"{blas.get('name')} {blas.get('version')}"
    except Exception:
        blas = "unknown"
    return [f"CPU: {cpu}, {os.cpu_count()} logical cores; {platform.system()} "
            f"{platform.release()}",
            f"Python {platform.python_version()}, NumPy {np.__version__} ({blas}), "
            f"torch {torch.__version__} "
            f"(MKL-DNN {'on' if torch.backends.mkldnn.enabled else 'off'})",
            f"threads: {ARGS.threads} (tinygnet.set_num_threads, torch.set_num_threads, "
            f"OMP/OPENBLAS/MKL_NUM_THREADS), torch sees {torch.get_num_threads()}",
            "malloc: " + ("freed memory kept for the next arrays (`keep_freed_memory`, as in "
                          "the demos), for both frameworks" if MEMORY_KEPT else
                          "glibc's defaults (`--malloc-defaults`, or not glibc)")]


def loadavg():
    try:
        with open("/proc/loadavg") as f:
            return " ".join(f.read().split()[:3])
    except OSError:
        return "?"


def main():
    import torch
    torch.set_num_threads(ARGS.threads)
    quick = ARGS.quick
    repeats = ARGS.repeats or (5 if quick else 10)
    op_batch = 32 if quick else BATCH
    lines = []

    def say(text=""):
        print(text, flush=True)
        lines.append(text)

    say("## tinygnet vs PyTorch on the CPU")
    say()
    for line in machine_info():
        say(f"- {line}")
    say(f"- load average before: {loadavg()}")
    peak = gemm_peak()
    say(f"- float32 GEMM peak (NumPy 2048^3 matmul): {peak:.1f} GFLOP/s")
    ok, error = check_same_logits(DEFAULT)
    say(f"- same logits check ({config_name(DEFAULT)}, eval, batch 8): max |diff| / max |logit| "
        f"= {error:.1e} -> {'OK' if ok else 'MISMATCH'}")
    if not ok:
        raise SystemExit("the two models disagree: the benchmark would compare different networks")
    say()

    rows = []
    configs = [("default", DEFAULT)] + ([] if (quick or ARGS.skip_width1) else [("width1", WIDTH1)])
    for key, cfg in configs:
        ours = make_tinygnet(cfg)
        theirs = make_torch(cfg, ours.state_dict())
        flops = training_flops(ours, BATCH)
        n = repeats if key == "default" else ARGS.width1_repeats
        cases = {"tinygnet": tinygnet_train_step(ours, BATCH),
                 "torch": torch_train_step(theirs, BATCH)}
        parallel = None
        if key == "default" and PROCESSES > 1:     # the demo's step: the batch in parts
            parallel = DataParallel(dict(num_classes=NUM_CLASSES, config="cifar", **cfg),
                                    PROCESSES)
            cases["parts"] = tinygnet_parallel_train_step(ours, dict(cfg), BATCH, parallel)
        t = median_times(cases, n)
        rows.append((f"training step, {config_name(cfg)}, batch {BATCH} ({n} repeats)",
                     t, BATCH, flops, peak))
        print(f"  {rows[-1][0]}: tinygnet {t['tinygnet']:.3f} s, torch {t['torch']:.3f} s",
              flush=True)
        if parallel is not None:
            rows.append((f"training step, {config_name(cfg)}, batch {BATCH} in {PROCESSES} "
                         f"processes (the demo's `--processes {PROCESSES}`; {n} repeats)",
                         {"tinygnet": t["parts"], "torch": t["torch"]}, BATCH, flops, peak))
            print(f"  {rows[-1][0]}: tinygnet {t['parts']:.3f} s", flush=True)
        t = median_times({"tinygnet": tinygnet_inference(ours, EVAL_BATCH),
                         "torch": torch_inference(theirs, EVAL_BATCH)}, n)
        rows.append((f"inference (eval), {config_name(cfg)}, batch {EVAL_BATCH} ({n} repeats)",
                     t, EVAL_BATCH, None, None))
        if parallel is not None:        # the demo's test: each worker a part of the images
            batches = PROCESSES
            t = median_times({"tinygnet": tinygnet_parallel_inference(ours, parallel, EVAL_BATCH,
                                                                      batches),
                              "torch": torch_inference(theirs, EVAL_BATCH, batches)}, n)
            rows.append((f"inference (eval), {config_name(cfg)}, {batches} batches of "
                         f"{EVAL_BATCH} in {PROCESSES} processes (the demo's test; PyTorch: "
                         f"one after the other; {n} repeats)", t, batches * EVAL_BATCH, None, None))
            parallel.close()
        del ours, theirs

    say("### Whole network (images/s, median)")
    say()
    say("| case | tinygnet img/s | PyTorch img/s | ratio | tinygnet GFLOP/s (% of GEMM peak) "
        "| PyTorch GFLOP/s |")
    say("|---|---:|---:|---:|---:|---:|")
    for name, t, batch, flops, gemm in rows:
        a, b = batch / t["tinygnet"], batch / t["torch"]
        if flops:
            fa, fb = flops / t["tinygnet"] / 1e9, flops / t["torch"] / 1e9
            fl = (f"{fa:.1f} ({100 * fa / gemm:.0f}%)", f"{fb:.1f} ({100 * fb / gemm:.0f}%)")
        else:
            fl = ("", "")
        say(f"| {name} | {a:.1f} | {b:.1f} | {a / b:.2f} | {fl[0]} | {fl[1]} |")
    say()

    say(f"### Single ops, forward + backward (ms, median of {repeats})")
    say()
    say("| op | tinygnet ms | PyTorch ms | ratio |")
    say("|---|---:|---:|---:|")
    for name, ours, theirs in op_cases(op_batch):
        t = median_times({"tinygnet": ours, "torch": theirs}, repeats)
        a, b = t["tinygnet"] * 1e3, t["torch"] * 1e3
        say(f"| {name} | {a:.2f} | {b:.2f} | {b / a:.2f} |")
    say()

    if not ARGS.no_rss:
        say(f"### Peak memory of a training step (batch {BATCH}, fresh process each)")
        say()
        say("| config | tinygnet peak RSS MiB (step's growth) | PyTorch peak RSS MiB "
            "(step's growth) | ratio of growth |")
        say("|---|---:|---:|---:|")
        for key, cfg in configs:
            b0, p0 = peak_rss("tinygnet", cfg)
            b1, p1 = peak_rss("torch", cfg)
            say(f"| {config_name(cfg)} | {p0:.0f} ({p0 - b0:.0f}) | {p1:.0f} ({p1 - b1:.0f}) "
                f"| {(p0 - b0) / (p1 - b1):.2f} |")
        say()
    say("Ratios are tinygnet / PyTorch throughput (above 1: tinygnet is faster). "
        "Growth = peak RSS minus the RSS after building the model and data (the torch process "
        "also holds the torch library).")
    say(f"Load average after: {loadavg()}. Command: `python benchmarks/cpu_bench.py "
        f"--threads {ARGS.threads}{' --quick' if quick else ''}"
        f"{' --malloc-defaults' if ARGS.malloc_defaults else ''}`")
    if ARGS.out:
        with open(ARGS.out, "w") as f:
            f.write("\n".join(lines) + "\n")


if __name__ == "__main__":
    if ARGS.rss_child:
        cfg = dict(DEFAULT)
        if ARGS.width is not None:
            cfg.update(width=ARGS.width, stem_stride=ARGS.stem_stride)
        rss_child(ARGS.rss_child, cfg)
    else:
        main()
