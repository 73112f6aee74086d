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
