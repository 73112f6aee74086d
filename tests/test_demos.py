"""Run every script in demos/ as a learner would (a subprocess, --quick), so they never rot."""
import os
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMOS = os.path.join(REPO, "demos")

# script -> lines its output must contain (the point of each demo)
EXPECTED = {
    "gradcheck_walkthrough.py": ["passed:", "GradcheckError"],
    "inception_by_hand.py": ["total multiply-adds 128.0 M", "\nmatch"],
    "three_losses.py": ["total", "inception4e", "eval mode"],
    "vanishing_gradients.py": ["forward", "gaussian no aux", "conv1", "inception5b"],
}


def test_every_demo_is_covered():
    scripts = sorted(name for name in os.listdir(DEMOS) if name.endswith(".py"))
    assert scripts == sorted(EXPECTED)


@pytest.mark.parametrize("script", sorted(EXPECTED))
def test_demo_runs(script):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               MPLBACKEND="Agg")
    result = subprocess.run([sys.executable, os.path.join(DEMOS, script), "--quick"], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    for text in EXPECTED[script]:
        assert text in result.stdout, f"{script}: {text!r} not in its output"
