"""tinygnet against PyTorch on one NVIDIA GPU: a GoogLeNet training step.

    python benchmarks/gpu_bench.py                  # width 1, batch 128, float32
    python benchmarks/gpu_bench.py --repeats 50 --out gpu.md

The step: forward, the combined loss (main + 0.3 * aux, label smoothing
0.1), backward and an SGD update (momentum, Nesterov, weight decay), on the
GoogLeNet of the CIFAR demo's GPU defaults (cifar config, 3 x 32 x 32,
width 1, stem stride 1, batch norm; ``--no-batchnorm`` for the paper's
plain conv + ReLU units).

Fair play: the same weights on both sides (tinygnet's state_dict copied
into ``torch_googlenet.GoogLeNet``; the logits are checked to agree on the
GPU before anything is timed), the same batch, already on the GPU. Warm-up
steps first (CuPy compiles its kernels, cuDNN picks its algorithms), then
steps interleaved (tinygnet, torch, tinygnet, ...), each timed from a
synchronised GPU to a synchronised GPU; medians. PyTorch runs with cuDNN
(``benchmark=True``) but without TF32, so both do float32 arithmetic
(``--tf32`` lets PyTorch use it). Ratio = tinygnet's throughput / PyTorch's
(target: >= 0.5).

Peak memory: PyTorch's ``max_memory_reserved`` (its caching allocator's
high-water mark) and ``max_memory_allocated`` (live tensors); for tinygnet
the size CuPy's memory pool grew to (it keeps freed blocks for reuse, like
PyTorch's reserved memory), starting from an empty pool.
"""
from __future__ import annotations

import argparse
import os
import sys

import numpy as np

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
sys.path.insert(0, ROOT)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))

import tinygnet  # noqa: E402
from tinygnet import backend  # noqa: E402
from tinygnet.demo.cifar import GPU_DEFAULTS  # noqa: E402
from tinygnet.models import GoogLeNet  # noqa: E402
from tinygnet.tensor import Tensor, no_grad  # noqa: E402

from train_steps import (NUM_CLASSES, data, interleaved, tinygnet_train_step,  # noqa: E402
                         torch_train_step)
MIB = 2 ** 20


def parse_args(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--width", type=float, default=GPU_DEFAULTS["width"])
    parser.add_argument("--batch", type=int, default=GPU_DEFAULTS["batch_size"])
    parser.add_argument("--no-batchnorm", action="store_true",
                        help="plain conv + ReLU units (the paper's) instead of the demo's BN")
    parser.add_argument("--repeats", type=int, default=20, help="timed steps per framework")
    parser.add_argument("--warmup", type=int, default=3, help="untimed steps per framework")
    parser.add_argument("--tf32", action="store_true", help="let PyTorch use TF32 convolutions")
    parser.add_argument("--no-torch", action="store_true", help="time tinygnet alone")
    parser.add_argument("--out", help="also write the markdown report to this file")
    return parser.parse_args(argv)


# ----------------------------------------------------------------------------
# The two training steps (data already on the GPU; no host sync inside)
# ----------------------------------------------------------------------------
def synchronized(step, sync):
    def run():
        step()
        sync()
    return run


# ----------------------------------------------------------------------------
def main(argv=None):
    args = parse_args(argv)
    if not tinygnet.is_cuda_available():
        sys.exit(f"gpu_bench: no usable GPU: {backend.gpu_problem()}")
    cupy = backend.cupy_or_none()
    pool = cupy.get_default_memory_pool()
    name = cupy.cuda.runtime.getDeviceProperties(0)["name"]
    name = name.decode() if isinstance(name, bytes) else name
    batchnorm = not args.no_batchnorm

    tinygnet.manual_seed(0)
    model = GoogLeNet(NUM_CLASSES, "cifar", width=args.width, batchnorm=batchnorm,
                      stem_stride=GPU_DEFAULTS["stem_stride"])
    state = {k: backend.to_numpy(v) for k, v in model.state_dict().items()}
    model.to("cuda")
    lines = [f"# tinygnet vs PyTorch, GoogLeNet training step on {name}", "",
             f"cifar config, width {args.width:g}, batch {args.batch}, float32, "
             f"{'batch norm' if batchnorm else 'no batch norm'}; CuPy {cupy.__version__}, "
             f"NumPy {np.__version__}"]

    cases = {"tinygnet": synchronized(tinygnet_train_step(model, args.batch, "cuda"),
                                      cupy.cuda.runtime.deviceSynchronize)}
    reference = None
    if not args.no_torch:
        import torch
        import torch_googlenet
        torch.backends.cudnn.benchmark = True
        torch.backends.cudnn.allow_tf32 = args.tf32
        torch.backends.cuda.matmul.allow_tf32 = args.tf32
        reference = torch_googlenet.GoogLeNet(NUM_CLASSES, width=args.width, batchnorm=batchnorm,
                                              stem_stride=GPU_DEFAULTS["stem_stride"])
        torch_googlenet.load_tinygnet_state_dict(reference, state)
        reference.cuda()
        lines[-1] += (f", PyTorch {torch.__version__} (cuDNN "
                      f"{torch.backends.cudnn.version()}, TF32 {'on' if args.tf32 else 'off'})")
        # Same logits from the same weights (eval mode) before timing anything.
        x = data(8, seed=3)[0]
        model.eval()
        reference.eval()
        with no_grad():
            ours = model(Tensor(backend.to_device(x, "cuda"))).numpy()
        with torch.no_grad():
            theirs = reference(torch.from_numpy(x).cuda()).cpu().numpy()
        error = float(np.abs(ours - theirs).max() / np.abs(theirs).max())
        lines.append(f"same weights, same logits: max relative difference {error:.1e}"
                     f"{'' if error < 1e-3 else '  <-- MISMATCH'}")
        cases["torch"] = synchronized(torch_train_step(reference, args.batch, "cuda"),
                                      torch.cuda.synchronize)

    # Peak memory of tinygnet: the pool's size after steps from an empty pool.
    cupy.cuda.runtime.deviceSynchronize()
    pool.free_all_blocks()
    if reference is not None:
        torch.cuda.empty_cache()
        torch.cuda.reset_peak_memory_stats()
    times = interleaved(cases, args.repeats, args.warmup)

    lines += ["", "| | ms/step (median) | min | max | images/s | peak GPU memory |",
              "|---|---:|---:|---:|---:|---:|"]
    medians = {k: float(np.median(t)) for k, t in times.items()}
    memory = {"tinygnet": f"{pool.total_bytes() / MIB:.0f} MiB (CuPy pool)"}
    if reference is not None:
        memory["torch"] = (f"{torch.cuda.max_memory_reserved() / MIB:.0f} MiB reserved, "
                           f"{torch.cuda.max_memory_allocated() / MIB:.0f} MiB allocated")
    for k, t in times.items():
        lines.append(f"| {k} | {medians[k] * 1e3:.1f} | {t[0] * 1e3:.1f} | {t[-1] * 1e3:.1f} | "
                     f"{args.batch / medians[k]:.0f} | {memory[k]} |")
    if reference is not None:
        ratio = medians["torch"] / medians["tinygnet"]
        lines += ["", f"throughput ratio tinygnet / PyTorch: {ratio:.2f} "
                      f"({'meets' if ratio >= 0.5 else 'BELOW'} the 0.5 target)"]
    report = "\n".join(lines)
    print(report)
    if args.out:
        with open(args.out, "w") as f:
            f.write(report + "\n")


if __name__ == "__main__":
    main()
