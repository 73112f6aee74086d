"""The benchmarks time what they say they time."""
import pathlib
import sys

import pytest

import tinygnet
from tinygnet.models import GoogLeNet

sys.path.insert(0, str(pathlib.Path(__file__).resolve().parents[1] / "benchmarks"))
import train_steps  # noqa: E402


def test_the_timed_training_step_runs_in_train_mode_after_an_eval():
    """gpu_bench.py checks the logits in eval mode on the very model it then times:
    every timed step must still train (aux heads, dropout, batch statistics)."""
    tinygnet.manual_seed(0)
    model = GoogLeNet(10, config="cifar", width=1 / 16, stem_stride=2)
    step = train_steps.tinygnet_train_step(model, batch=2)
    modes = []
    forward = model.forward
    model.forward = lambda x: (modes.append(model.training), forward(x))[1]
    model.eval()                      # as the logits check does, between building and timing
    step()
    assert modes == [True]


ROOT = pathlib.Path(__file__).resolve().parents[1]


def test_the_gpu_check_fits_one_device_call():
    """benchmarks/gpu_check.sh runs in one call of at most 600 s: the step limits on its
    critical path (the steps run in the background overlap the next one) leave a
    minute for the summary, the kill-after grace and the machine's own start-up."""
    import re
    import subprocess
    script = ROOT / "benchmarks" / "gpu_check.sh"
    subprocess.run(["bash", "-n", str(script)], check=True)
    subprocess.run(["bash", "-n", str(ROOT / "benchmarks" / "stage_gpu_data.sh")], check=True)
    lines = script.read_text().replace("\\\n", " ").splitlines()
    total, overlapping = 0, []
    for line in lines:
        match = re.search(r"\bstep (\w+) (\d+) ", line)
        if not match or line.lstrip().startswith("#"):
            continue
        if line.rstrip().endswith("&"):
            overlapping.append(int(match.group(2)))
        else:
            total += max([int(match.group(2))] + overlapping)
            overlapping = []
    assert 0 < total <= 540, total


def test_the_step_profiler_times_each_op_call_once_as_the_class_that_ran():
    """benchmarks/step_profile.py: every op's forward and backward counted once per
    call, under the class that ran (the fast path, or the reference with fast paths
    off), a fast path's call of its reference's method not counted again, the ops'
    sum within the step, and the library's methods put back afterwards."""
    import time

    import numpy as np

    import step_profile
    from tinygnet import nn
    from tinygnet.kernels.cpu_conv import Conv2dOneGemm
    from tinygnet.tensor import Function

    class Doubling(Function):
        def forward(self, x):
            return 2 * x

        def backward(self, gy):
            return 2 * gy

    class DoublingViaReference(Doubling):     # a "fast path" that calls its reference
        def forward(self, x):
            return super().forward(x)

    tinygnet.manual_seed(0)
    model = GoogLeNet(10, config="cifar", width=1 / 16, stem_stride=2, batchnorm=True)
    convs = sum(isinstance(m, nn.Conv2d) for m in model.modules())
    originals = {cls: dict(vars(cls)) for cls in (Conv2dOneGemm, Doubling, DoublingViaReference)}
    for fast in (True, False):
        with tinygnet.use_fast(fast):
            start = time.perf_counter()
            step, share, ops = step_profile.profile_step(model, batch=2, steps=1, warmup=0)
            elapsed = time.perf_counter() - start
        conv = "Conv2dOneGemm" if fast else "Conv2d"
        assert ops[conv, "forward"][2] == ops[conv, "backward"][2] == convs
        other = "Conv2d" if fast else "Conv2dOneGemm"
        assert (other, "forward") not in ops
        assert 0 < sum(wall for wall, _, _ in ops.values()) <= step <= elapsed
        assert 0 < sum(cpu for _, cpu, _ in ops.values())   # the CPU time of the ops' threads
        assert share > 0
    with step_profile.op_timer() as totals:
        x = tinygnet.tensor(np.ones(3), requires_grad=True)
        DoublingViaReference.apply(x).backward(tinygnet.tensor(np.ones(3)))
    calls = {key: calls for key, (_, _, calls) in totals.items()}
    assert calls == {("DoublingViaReference", "forward"): 1, ("DoublingViaReference", "backward"): 1}
    for cls, methods in originals.items():
        assert dict(vars(cls)) == methods


def test_the_step_profiler_times_the_demo_loader_and_inference():
    import step_profile
    from tinygnet import nn
    assert 0 < step_profile.time_loader_batch(8, repeats=3) < 1
    tinygnet.manual_seed(0)
    model = GoogLeNet(10, config="cifar", width=1 / 16, stem_stride=2, batchnorm=True)
    model.train()
    seconds, ops = step_profile.time_inference(model, 2, repeats=2)
    assert 0 < seconds < 10
    assert model.training
    def convs_in(module):
        return sum(isinstance(m, nn.Conv2d) for m in module.modules())
    convs = convs_in(model) - convs_in(model.aux1) - convs_in(model.aux2)
    assert ops["Conv2dOneGemm", "forward"][2] == convs          # per view: eval drops the aux heads
    assert not any(name == "backward" for _, name in ops)
