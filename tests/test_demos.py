"""Run every script in demos/ as a learner would (a subprocess, --quick), and check what it shows.

Each demo makes a point with numbers; the checks below read those numbers
back from its output and test the point itself, so that a demo that still
runs but shows nothing (a gradient of zero, a comparison with itself) fails.
"""
import os
import re
import subprocess
import sys

import pytest

REPO = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEMOS = os.path.join(REPO, "demos")
AUX_WEIGHT = 0.3
# GoogLeNet's layers from the input up, as three_losses.py names them.
LOWER = ["conv1", "conv2_reduce", "conv2", "inception3a", "inception3b", "inception4a"]
MIDDLE = ["inception4b", "inception4c", "inception4d"]
UPPER = ["inception4e", "inception5a", "inception5b", "fc"]


def run_demo(script):
    env = dict(os.environ, PYTHONPATH=REPO + os.pathsep + os.environ.get("PYTHONPATH", ""),
               MPLBACKEND="Agg")
    result = subprocess.run([sys.executable, os.path.join(DEMOS, script), "--quick"], cwd=REPO,
                            env=env, capture_output=True, text=True, timeout=120)
    assert result.returncode == 0, result.stdout[-2000:] + result.stderr[-2000:]
    return result.stdout


def table_rows(text, first_column):
    """{row name: [cells]} of the whitespace table whose rows start with the given names."""
    rows = {}
    for line in text.splitlines():
        words = line.split()
        if words and words[0] in first_column and len(words) > 1:
            rows[words[0]] = words[1:]
    return rows


def number(pattern, text):
    match = re.search(pattern, text, re.M)
    assert match, f"{pattern!r} not found in the output"
    return float(match.group(1))


def check_gradcheck_walkthrough(out):
    """Backprop agrees with finite differences element by element, gradcheck passes, and a
    broken ReLU backward is caught."""
    differences = re.findall(r"^\s+(?:branch3\.weight|x)\(.*\)\s+\S+\s+\S+\s+(\S+)$", out, re.M)
    assert len(differences) == 4 and all(float(d) < 1e-7 for d in differences)
    assert float(re.findall(r"eps\s+1e-05: \|backprop - numeric\| = (\S+)", out)[0]) < 1e-8
    assert number(r"passed: (\d+) derivatives checked", out) > 400
    assert re.search(r"GradcheckError: gradcheck failed for input 0 .* disagree", out)


def check_inception_by_hand(out):
    """The hand-built module counts Table 1's multiply-adds and equals the library's Inception."""
    assert number(r"total multiply-adds ([\d.]+) M per image", out) == 128.0
    assert number(r"largest difference from ours (\S+)", out) < 1e-5
    assert out.rstrip().endswith("match")


def check_three_losses(out):
    """Each loss's gradient reaches exactly the layers below its head, non-zero there;
    the total is main + 0.3 (aux1 + aux2); one SGD step on it lowers every loss."""
    losses = {name: number(rf"^  {name}\s+([\d.]+)", out.split("\nwhich layers")[0])
              for name in ("main", "aux1", "aux2")}
    total = number(r"^  total ([\d.]+) =", out)
    assert total == pytest.approx(losses["main"] + AUX_WEIGHT * (losses["aux1"] + losses["aux2"]),
                                  abs=2e-4)
    reach = table_rows(out.split("look at the gradient norm")[1].split("'-': not reached")[0],
                       LOWER + MIDDLE + UPPER + ["aux1", "aux2"])
    expected = {layer: ("+", "+", "+") for layer in LOWER}
    expected.update({layer: ("+", "-", "+") for layer in MIDDLE})
    expected.update({layer: ("+", "-", "-") for layer in UPPER})
    expected.update({"aux1": ("-", "+", "-"), "aux2": ("-", "-", "+")})
    seen = {layer: tuple("-" if cell == "-" else "+" for cell in cells)
            for layer, cells in reach.items()}
    assert seen == expected
    assert all(float(cell) > 1e-3 for cells in reach.values() for cell in cells if cell != "-")
    step = table_rows(out.split("one SGD step")[1].split("eval mode")[0],
                      ["total", "main", "aux1", "aux2"])
    assert len(step) == 4
    for name, (before, _, after) in step.items():
        assert float(after) < float(before), f"{name} did not go down after the step"
    assert "eval mode: the model returns the main logits only, (16, 10)" in out


def check_vanishing_gradients(out):
    """The gaussian start's signal shrinks layer after layer, He's does not; the aux heads
    add gradient below where they join and none above."""
    forward = table_rows(out.split("1. forward")[1].split("2. backward")[0], ["conv1", "fc"])
    he, _, gaussian = (float(v) for v in forward["fc"])
    assert he > 0.3 and gaussian < 1e-6 * float(forward["conv1"][2])
    backward = table_rows(out.split("2. backward")[1], LOWER + MIDDLE + UPPER)
    for layer in LOWER + MIDDLE + UPPER:
        cells = [float(v) for v in backward[layer]]
        for with_aux, without_aux in zip(cells[0::2], cells[1::2]):   # he, xavier, gaussian
            if layer in UPPER:
                assert with_aux == without_aux, layer
            elif layer in LOWER:
                assert with_aux > without_aux, layer
    conv1 = [float(v) for v in backward["conv1"]]
    assert conv1[4] > 1e3 * conv1[5]            # gaussian: the heads are most of what arrives


CHECKS = {
    "gradcheck_walkthrough.py": check_gradcheck_walkthrough,
    "inception_by_hand.py": check_inception_by_hand,
    "three_losses.py": check_three_losses,
    "vanishing_gradients.py": check_vanishing_gradients,
}


def test_every_demo_is_covered():
    scripts = sorted(name for name in os.listdir(DEMOS) if name.endswith(".py"))
    assert scripts == sorted(CHECKS)


@pytest.mark.parametrize("script", sorted(CHECKS))
def test_demo_runs_and_shows_its_point(script):
    CHECKS[script](run_demo(script))
