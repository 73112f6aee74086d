"""No run is ever lost: a CIFAR demo run killed at any file write, or stopped by SIGTERM.

The run (2 epochs of 2 steps on tiny data whose test accuracy improves in
epoch 2, so best.npz is written twice) is killed with SIGKILL at every step
of every file write: before the temporary file, after it is written, after
the rename (``demo_child.py``, through ``tinygnet.checkpoint``'s write hook:
the kill lands at that point by construction, not by timing). After each
kill the folder must be consistent: nothing half-written, nothing ahead of
checkpoint.npz, at most one epoch-end write behind it. Then ``--resume`` (or,
before the first checkpoint, a restart with ``--overwrite``) must finish the
run with exactly the weights, best.npz and metrics.csv of a run never stopped.
"""
import csv
import importlib.util
import json
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

import tinygnet.checkpoint
from tinygnet.checkpoint import load_checkpoint
from tinygnet.demo import cifar, common, run

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_child.py")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PER_BATCH = 16
SEED = 6     # one whose test accuracy improves in epoch 2 (best.npz is written twice)
ARGV = ["--device", "cpu", "--epochs", "2", "--batch-size", "16", "--width", "0.0625",
        "--train-images", "32", "--seed", str(SEED), "--no-progress", "--no-download"]
# The kill at every write runs dozens of runs; the writes are the parent's alone whatever
# --processes (the CPU default, two, above), so there one process, with no workers to start in
# each run; seed 0 improves in epoch 2 there.
ARGV_ONE = ARGV[:ARGV.index("--seed")] + ["--seed", "0", "--processes", "1", "--no-progress",
                                          "--no-download"]
STEPS_PER_EPOCH = 2
METRICS_WITHOUT_TIMES = 10    # epoch, the four losses, train_acc, test_acc (main, aux1, aux2), lr


demo_child = importlib.util.module_from_spec(
    importlib.util.spec_from_file_location("demo_child", CHILD))
demo_child.__spec__.loader.exec_module(demo_child)


def untimed(history):
    return [{k: v for k, v in row.items() if not k.endswith(("seconds", "per_second"))}
            for row in history]


def metrics_rows(path):
    with open(path, newline="") as f:
        return [row[:METRICS_WITHOUT_TIMES] for row in csv.reader(f)][1:]


def best_epoch(history):
    return max(history, key=lambda row: row["test_acc"])["epoch"] if history else None


def assert_same_arrays(got: dict, expected: dict, what):
    assert list(got) == list(expected), what
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=f"{what}: {name}")


def run_demo(*argv):
    """The demo in this process (the imports are paid once); its exit status."""
    return cifar.main(list(argv))


@pytest.fixture(scope="module")
def reference(learnable_cifar, tmp_path_factory):
    """An uninterrupted run of ARGV: its write steps, its checkpoint after each epoch, its
    outputs."""
    return uninterrupted(ARGV, learnable_cifar, tmp_path_factory)


@pytest.fixture(scope="module")
def reference_one(learnable_cifar, tmp_path_factory):
    """The same of ARGV_ONE (one process)."""
    return uninterrupted(ARGV_ONE, learnable_cifar, tmp_path_factory)


def uninterrupted(argv, learnable_cifar, tmp_path_factory):
    out = str(tmp_path_factory.mktemp("reference") / "run")
    events, checkpoints = [], {}

    def record(event, path):
        events.append((event, os.path.basename(path)))
        if event == "renamed" and path.endswith("checkpoint.npz"):
            state = load_checkpoint(path)
            checkpoints[state["epoch"]] = state

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run.Trainer, "write_plots", demo_child.fake_plots)
        patch.setattr(tinygnet.checkpoint, "_write_hook", record)
        assert run_demo(*argv, "--data", learnable_cifar, "--out", out) == 0
    final = load_checkpoint(os.path.join(out, "checkpoint.npz"))
    # The point of these tests needs a run whose best epoch changes: best.npz written twice.
    assert [name for event, name in events if event == "start"].count("best.npz") == 2, \
        "the reference run must improve in epoch 2; choose another --seed in its ARGV"
    return {"argv": argv, "seed": int(argv[argv.index("--seed") + 1]), "out": out,
            "events": events, "checkpoints": checkpoints, "final": final,
            "best": load_checkpoint(os.path.join(out, "best.npz")),
            "metrics": metrics_rows(os.path.join(out, "metrics.csv")), "data": learnable_cifar}


def assert_consistent(out, reference, event):
    """What a kill at write step ``event`` may leave in ``out``."""
    names = os.listdir(out) if os.path.isdir(out) else []
    # The killed run held the folder from its --out check: its lock file stays, the lock
    # itself died with the process (the resume below would be refused if it had not).
    assert common.LOCK_NAME in names
    temporary = [name for name in names if name.startswith(".") and name != common.LOCK_NAME]
    # A temporary file exists only between its creation and its rename.
    assert len(temporary) == (1 if event == "written" else 0), temporary
    assert set(names) - set(temporary) <= set(run.OUTPUTS) | {common.LOCK_NAME}
    if "config.json" in names:
        with open(os.path.join(out, "config.json")) as f:
            assert json.load(f)["config"]["seed"] == reference["seed"]
    history = reference["final"]["history"]
    epoch = 0                     # epochs in checkpoint.npz
    if "checkpoint.npz" in names:
        state = load_checkpoint(os.path.join(out, "checkpoint.npz"))
        epoch = state["epoch"]
        assert state["step"] == 0 and epoch >= 1
        expected = reference["checkpoints"][epoch]
        assert_same_arrays(state["model"], expected["model"], "checkpoint.npz")
        assert untimed(state["history"]) == untimed(history[:epoch])
    rows = metrics_rows(os.path.join(out, "metrics.csv")) if "metrics.csv" in names else []
    # Never ahead of the checkpoint; at most the one epoch-end write behind it.
    assert rows == reference["metrics"][:len(rows)] and len(rows) in (epoch, epoch - 1)
    if "best.npz" in names:
        best = load_checkpoint(os.path.join(out, "best.npz"))
        assert best["epoch"] in (best_epoch(history[:epoch]), best_epoch(history[:epoch - 1]))
        assert_same_arrays(best["model"], reference["checkpoints"][best["epoch"]]["model"],
                           "best.npz")
    else:
        assert epoch <= 1                           # epoch 1 is always a best
    for plot in run.PLOTS:
        if plot in names:
            with open(os.path.join(out, plot), "rb") as f:
                content = f.read()
            assert content.startswith(demo_child.PNG)
            assert int(content.split(b"epoch ")[1]) in (epoch, epoch - 1)


def assert_finished_like_the_reference(out, reference):
    assert not [name for name in os.listdir(out) if name.startswith(".")]   # no temporary files
    final = load_checkpoint(os.path.join(out, "checkpoint.npz"))
    expected = reference["final"]
    assert (final["epoch"], final["step"]) == (2, 0)
    assert_same_arrays(final["model"], expected["model"], "final weights")
    for got, want in zip(final["optimizer"]["state"].values(), expected["optimizer"]["state"].values()):
        np.testing.assert_array_equal(got["momentum_buffer"], want["momentum_buffer"])
    assert untimed(final["history"]) == untimed(expected["history"])
    best = load_checkpoint(os.path.join(out, "best.npz"))
    assert best["epoch"] == reference["best"]["epoch"] == 2
    assert_same_arrays(best["model"], reference["best"]["model"], "best.npz")
    assert metrics_rows(os.path.join(out, "metrics.csv")) == reference["metrics"]
    for plot in run.PLOTS:
        with open(os.path.join(out, plot), "rb") as f:
            assert f.read() == demo_child.PNG + b"epoch 2"


@pytest.mark.parametrize("half", [0, 1])     # every other write step: two tests that run in parallel
def test_a_kill_at_any_write_leaves_a_consistent_run_that_resumes_exactly(reference_one, tmp_path,
                                                                          half):
    reference = reference_one
    events = reference["events"]
    points = list(range(half, len(events), 2))
    outroot = tmp_path / "killed"
    child = subprocess.run([sys.executable, CHILD, "kill-each", str(PER_BATCH),
                            ",".join(map(str, points)), str(outroot), "--",
                            *reference["argv"], "--data", reference["data"]],
                           cwd=REPO, capture_output=True, text=True, timeout=300)
    assert child.returncode == 0, child.stderr[-3000:]
    assert child.stdout.split("\n")[:-1] == [f"{i} killed" for i in points]

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run.Trainer, "write_plots", demo_child.fake_plots)
        for i in points:
            event, name = events[i]
            out = str(outroot / str(i))
            where = f"killed at {event} of {name} (write step {i})"
            try:
                assert_consistent(out, reference, event)
                checkpoint = os.path.join(out, "checkpoint.npz")
                if os.path.exists(checkpoint):
                    status = run_demo("--resume", checkpoint, "--data", reference["data"],
                                      "--no-progress", "--no-download")
                else:                               # stopped before its first checkpoint
                    status = run_demo(*reference["argv"], "--data", reference["data"], "--out",
                                      out, "--overwrite")
                assert status == 0
                assert_finished_like_the_reference(out, reference)
            except AssertionError as error:
                raise AssertionError(f"{where}: {error}") from error


@pytest.mark.parametrize("step, signals, checkpoint_at", [
    (1, "SIGTERM", (0, 1)),           # mid-epoch: a checkpoint of epoch 1, step 1
    (2, "SIGTERM", (1, 0)),           # the last step of epoch 1: its epoch-end checkpoint
    (3, "SIGTERMx2", (1, 0)),         # twice: stop at once, keeping the last checkpoint
])
def test_sigterm_saves_a_checkpoint_and_resume_finishes_the_run(reference, tmp_path, step,
                                                                 signals, checkpoint_at):
    out = tmp_path / "run"
    child = subprocess.run([sys.executable, CHILD, "signal-at-step", str(PER_BATCH), str(step),
                            signals, "--", *ARGV, "--data", reference["data"], "--out", str(out)],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
    printed = child.stdout + child.stderr
    assert child.returncode == 128 + signal.SIGTERM, printed
    assert "Traceback" not in printed
    checkpoint = out / "checkpoint.npz"
    if signals == "SIGTERM":
        assert "SIGTERM: stopping after this step and saving a checkpoint" in printed
        assert f"checkpoint saved. Resume with:\n  python -m tinygnet.demo cifar --resume {checkpoint}" \
            in printed
    else:
        assert f"stopped at once; the last checkpoint is kept. Resume with:\n" \
               f"  python -m tinygnet.demo cifar --resume {checkpoint}" in printed
    state = load_checkpoint(checkpoint)
    assert (state["epoch"], state["step"]) == checkpoint_at

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run.Trainer, "write_plots", demo_child.fake_plots)
        assert run_demo("--resume", str(checkpoint), "--data", reference["data"],
                        "--no-progress", "--no-download") == 0
    assert_finished_like_the_reference(str(out), reference)


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_signal_to_the_whole_group_stops_the_run_after_the_step_workers_and_all(
        reference, tmp_path, signum):
    """A terminal's Ctrl-C reaches every process of the group, the worker processes of
    --processes too (ARGV runs the CPU default, two), here while they train their parts of
    step 1: they must not die of it, and the parent finishes the step and stops as it would
    alone, with a checkpoint that resumes."""
    out = tmp_path / "run"
    child = subprocess.run([sys.executable, CHILD, "signal-at-step", str(PER_BATCH), "1",
                            f"group-{signum.name}", "--", *ARGV, "--data", reference["data"],
                            "--out", str(out)],
                           cwd=REPO, capture_output=True, text=True, timeout=120,
                           start_new_session=True)
    printed = child.stdout + child.stderr
    assert child.returncode == 128 + signum, printed
    assert "Traceback" not in printed and "worker" not in printed
    assert "stopping after this step and saving a checkpoint" in printed
    checkpoint = out / "checkpoint.npz"
    assert (load_checkpoint(checkpoint)["epoch"], load_checkpoint(checkpoint)["step"]) == (0, 1)
    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(run.Trainer, "write_plots", demo_child.fake_plots)
        assert run_demo("--resume", str(checkpoint), "--data", reference["data"],
                        "--no-progress", "--no-download") == 0
    assert_finished_like_the_reference(str(out), reference)


def test_a_worker_killed_mid_run_is_one_line_and_the_checkpoint_kept(reference, tmp_path):
    out = tmp_path / "run"
    child = subprocess.run([sys.executable, CHILD, "signal-at-step", str(PER_BATCH), "3",
                            "worker-SIGKILL", "--", *ARGV, "--data", reference["data"],
                            "--out", str(out)],
                           cwd=REPO, capture_output=True, text=True, timeout=120)
    assert child.returncode == 1, child.stdout + child.stderr
    assert re.fullmatch(r"python -m tinygnet\.demo cifar: error: the worker process "
                        r"tinygnet-part-[01] ended before its part was done \(killed by "
                        r"SIGKILL: out of memory\?\); \S+checkpoint\.npz and best\.npz are "
                        r"kept as they were \(epoch 1\)\n", child.stderr), child.stderr
