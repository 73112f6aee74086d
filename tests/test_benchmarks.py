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
