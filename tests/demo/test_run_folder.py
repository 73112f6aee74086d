"""A run's folder: held by one run for its whole life, and never holding two runs.

The runs here are real processes (``demo_child.py``) on a tiny fake CIFAR-10,
so the hold is tested as users meet it: two shells, one folder.
"""
import json
import os
import signal
import subprocess
import sys

import pytest

from tinygnet.checkpoint import load_checkpoint
from tinygnet.demo import cifar, common, gradflow

CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_child.py")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
PER_BATCH = 16
ARGV = ["--device", "cpu", "--epochs", "2", "--batch-size", "16", "--width", "0.0625",
        "--train-images", "32", "--schedule", "constant", "--no-progress", "--no-download"]
# 2 steps an epoch: after step 3 the first epoch's checkpoint is on disk.


@pytest.fixture(scope="module")
def data(learnable_cifar):
    return learnable_cifar           # 5 x 16 training and 16 test images


# demo_child's signal-at-step with step 0 never sends its signal: a plain run of the demo.
RUN = ("signal-at-step", str(PER_BATCH), "0", "SIGTERM", "--")


def start_child(*args, load_seconds=0):
    env = dict(os.environ, DEMO_CHILD_LOAD_SECONDS=str(load_seconds))
    return subprocess.Popen([sys.executable, CHILD, *args], cwd=REPO, text=True, env=env,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE)


def run_child(*args):
    return subprocess.run([sys.executable, CHILD, *args], cwd=REPO, text=True,
                          capture_output=True, timeout=300)


@pytest.mark.slow
def test_a_running_run_holds_its_folder_and_a_kill_9_leaves_no_stale_hold(data, tmp_path):
    out = tmp_path / "run"
    argv = ARGV + ["--data", data, "--out", str(out)]
    # Run A stops itself (SIGSTOP) after step 3, in epoch 2: alive, its first checkpoint saved.
    a = start_child("signal-at-step", str(PER_BATCH), "3", "SIGSTOP", "--", *argv, "--seed", "0")
    try:
        _, status = os.waitpid(a.pid, os.WUNTRACED)
        assert os.WIFSTOPPED(status), a.communicate()
        checkpoint = out / "checkpoint.npz"
        assert load_checkpoint(checkpoint)["epoch"] == 1

        b = run_child(*RUN, *argv, "--seed", "1",
                      "--overwrite")
        assert (b.returncode, b.stdout) == (2, "")
        assert b.stderr == (f"{cifar.PROG}: error: --out {out}: a run is already writing there "
                            f"(PID {a.pid}); let it finish, or choose another --out\n")
        b = run_child(*RUN, "--resume", str(checkpoint), "--data", data, "--no-progress")
        assert (b.returncode, b.stdout) == (2, "")
        assert b.stderr == (f"{cifar.PROG}: error: --resume {checkpoint}: its run is still running "
                            f"(PID {a.pid}, writing to {out}); let it finish or stop it before "
                            f"resuming it\n")
        assert load_checkpoint(checkpoint)["config"]["seed"] == 0     # A's, untouched
    finally:
        a.kill()                                                      # kill -9 while it holds
        a.communicate()
    assert a.returncode == -signal.SIGKILL
    assert common.LOCK_NAME in os.listdir(out)         # its file stays; its lock died with it
    b = run_child(*RUN, "--resume", str(out / "checkpoint.npz"), "--data", data, "--no-progress")
    assert b.returncode == 0, b.stderr
    assert load_checkpoint(out / "checkpoint.npz")["epoch"] == 2
    assert common.LOCK_NAME not in os.listdir(out)     # a run that ends gives its folder up


@pytest.mark.slow
def test_two_runs_started_at_once_into_one_folder_one_is_refused(data, tmp_path):
    """The issue's reproduction: whichever run takes the folder first, it alone writes there.

    Each run takes 2 s more to load its data, as CIFAR-10 does: the window in which, unheld, both
    passed the --out check and then wrote into the same folder."""
    out = tmp_path / "conc"
    argv = ARGV + ["--data", data, "--out", str(out), "--epochs", "1"]
    runs = [start_child(*RUN, *argv,
                        "--seed", str(seed), "--test-images", str(n), load_seconds=2)
            for seed, n in [(0, 8), (1, 16)]]
    results = [(run.wait(timeout=300), *run.communicate()) for run in runs]
    statuses = sorted(status for status, _, _ in results)
    assert statuses == [0, 2], results
    winner = [seed for seed, (status, _, _) in enumerate(results) if status == 0][0]
    loser_err = [err for status, _, err in results if status == 2][0]
    assert loser_err.count("\n") == 1 and "error: --out" in loser_err, loser_err
    assert "a run is already writing there (PID " in loser_err
    with open(out / "config.json") as f:
        assert json.load(f)["config"]["seed"] == winner
    for name in ("checkpoint.npz", "best.npz"):
        assert load_checkpoint(out / name)["config"]["seed"] == winner, name


@pytest.mark.parametrize("demo", [cifar, gradflow], ids=["cifar", "gradflow"])
def test_a_folder_held_by_another_process_is_refused_before_the_data(demo, tmp_path, capsys):
    out = tmp_path / "held"
    holder = subprocess.Popen(
        [sys.executable, "-c", "import sys\nfrom tinygnet.demo.common import hold_out_folder\n"
         "with hold_out_folder(sys.argv[1], 'cifar', ()):\n"
         "    print('held', flush=True)\n    sys.stdin.read()\n", str(out)],
        cwd=REPO, text=True, stdin=subprocess.PIPE, stdout=subprocess.PIPE)
    try:
        assert holder.stdout.readline() == "held\n"
        # No data there: the hold is checked first.
        assert demo.main(["--out", str(out), "--data", str(tmp_path / "none"),
                          "--no-download"]) == 2
        assert capsys.readouterr().err == (f"{demo.PROG}: error: --out {out}: a run is already "
                                           f"writing there (PID {holder.pid}); let it finish, or "
                                           f"choose another --out\n")
    finally:
        holder.communicate("")                      # it ends: the folder is free, and removed
    assert not out.exists()


@pytest.mark.parametrize("existed", [True, False])    # False: the first run made the folder
def test_a_hold_taken_as_the_last_holder_lets_go_is_the_one_every_later_run_sees(tmp_path,
                                                                                  monkeypatch,
                                                                                  existed):
    """The run that ends removes the lock file (and the folder it made, if empty): one that
    opened the file just before must not hold that removed file, which no later run would see."""
    out = str(tmp_path / "run")
    if existed:
        os.mkdir(out)
    first = common.hold_out_folder(out, "cifar", ())
    real_flock = common.fcntl.flock

    def first_lets_go_then_flock(fd, operation):          # between our open and our flock
        if first._fd is not None:
            first.release()
        return real_flock(fd, operation)

    monkeypatch.setattr(common.fcntl, "flock", first_lets_go_then_flock)
    second = common.hold_out_folder(out, "cifar", ())
    monkeypatch.setattr(common.fcntl, "flock", real_flock)
    try:
        with pytest.raises(common.FolderBusy) as refused:
            common.hold_out_folder(out, "cifar", ())
        assert refused.value.pid == os.getpid()
    finally:
        second.release()
    assert os.listdir(out) == []


def test_a_run_that_fails_before_writing_leaves_no_folder(tmp_path, capsys):
    out = tmp_path / "new" / "run"
    assert cifar.main(["--out", str(out), "--data", str(tmp_path / "none"), "--no-download",
                       "--device", "cpu"]) == 1
    assert "CIFAR-10 not found" in capsys.readouterr().err
    assert os.listdir(tmp_path) == []


# --------------------------------------------------------------------------
# A folder holds one demo's run: --overwrite never mixes two
# --------------------------------------------------------------------------
def fake_run(folder, demo, files, record=None):
    """A finished run of ``demo``: its config.json (``record``) and ``files``."""
    os.makedirs(folder)
    record = record or {"demo": demo, "config": {}}
    with open(os.path.join(folder, "config.json"), "w") as f:
        json.dump(record, f)
    for name in files:
        with open(os.path.join(folder, name), "w") as f:
            f.write(demo)


@pytest.mark.parametrize("demo, other, files", [
    (cifar, "gradflow", ["gradflow.csv", "gradflow.png"]),
    (gradflow, "cifar", ["checkpoint.npz", "best.npz", "metrics.csv"]),
])
@pytest.mark.parametrize("marker", ["demo", "command"])   # command: a run saved before "demo"
def test_overwrite_refuses_a_run_of_the_other_demo(demo, other, files, marker, tmp_path, capsys):
    out = tmp_path / "run"
    record = ({"demo": other, "config": {}} if marker == "demo" else
              {"config": {}, "command": f"python -m tinygnet.demo {other} --quick --out {out}"})
    fake_run(out, other, files, record)
    before = sorted(os.listdir(out))
    for overwrite in ([], ["--overwrite"]):
        assert demo.main(["--out", str(out), "--data", str(tmp_path / "none"), "--no-download",
                          *overwrite]) == 2
        own = demo.__name__.rsplit(".", 1)[1]
        assert capsys.readouterr().err == (
            f"{demo.PROG}: error: --out {out} holds a run of the {other} demo; a folder holds one "
            f"run: choose another --out"
            + (f" (--overwrite replaces only a {own} run)" if overwrite else "") + "\n")
    assert sorted(os.listdir(out)) == before
