"""The gradflow demo: its flags, the grid of runs, every output written and consistent, and a
stopped experiment kept and resumed.

Runs on tiny synthetic data in the official CIFAR-10 format, with a
network narrow enough that a step takes milliseconds.
"""
import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys
import time
import warnings
from collections import defaultdict

import numpy as np
import pytest

from tinygnet.data import Normalize
from tinygnet.demo import gradflow, gradflow_plots, gradflow_runs, gradflow_stats
from tinygnet.demo.common import TrainingDiverged
from tinygnet.demo.gradflow_runs import Config, build_models
from tinygnet.demo.training import train_step
from tinygnet.diagnostics import split_backward
from tinygnet.optim import SGD

# One run after another in this process: the tests of --jobs N say so.
TINY = ["--steps", "4", "--width", "0.0625", "--batch-size", "8", "--split-every", "2",
        "--test-images", "16", "--no-progress", "--no-download", "--jobs", "1"]
TRUNK_START = ["conv1", "conv2_reduce", "conv2"]
CHILD = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_child.py")
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def fake_cifar(make_fake_cifar):
    """5 x 16 training and 16 test images."""
    return make_fake_cifar(16)


def config(**changes) -> Config:
    values = dict(gradflow.DEFAULTS, device="cpu", data="unused", download=False, out="unused",
                  quick=False)
    values.update(changes)
    return Config(**values)


def read_csv(path):
    with open(path, newline="") as f:
        return list(csv.DictReader(f))


def random_data(n=24, seed=0):
    rng = np.random.default_rng(seed)
    return rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, n)


# --------------------------------------------------------------------------- flags
def parse(*argv):
    return gradflow.resolve_config(gradflow.build_parser().parse_args(list(argv) + ["--device", "cpu"]))


def test_defaults_then_quick_then_flags():
    default = parse()
    assert default.init == ("gaussian", "xavier", "he") and default.seeds >= 2
    assert (default.lr, default.momentum, default.aux_weight) == (0.01, 0.9, 0.3)
    assert (default.dropout, default.aux_dropout) == (0.4, 0.7)       # the paper's: dropout on
    quick = parse("--quick")
    for name, value in gradflow.QUICK_OVERRIDES.items():
        assert getattr(quick, name) == value, name
    given = parse("--quick", "--init", "xavier, he,xavier", "--seeds", "3", "--seed", "5")
    assert given.init == ("xavier", "he") and given.seed_list == [5, 6, 7]
    assert given.steps == gradflow.QUICK_OVERRIDES["steps"]


@pytest.mark.parametrize("argv", [["--init", "lecun"], ["--init", ""], ["--init", "he,Xavier"],
                                  ["--seeds", "0"], ["--steps", "0"], ["--stem-stride", "3"],
                                  ["--dropout", "1"], ["--lr", "nan"], ["--momentum", "1"],
                                  ["--jobs", "0"], ["--jobs", "-2"], ["-j", "two"]])
def test_bad_flags_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        gradflow.main(argv)
    assert stop.value.code == 2
    err = capsys.readouterr().err
    assert argv[0] in err and "Traceback" not in err


# --------------------------------------------------------------------------- the runs
@pytest.mark.parametrize("init", ["gaussian", "xavier", "he"])
def test_both_runs_start_from_the_same_weights(init):
    with_aux, without_aux = build_models(config(width=0.0625), init, seed=3)
    a = dict(with_aux.named_parameters())
    b = dict(without_aux.named_parameters())
    assert set(b) == {name for name in a if not name.startswith(("aux1.", "aux2."))}
    assert any(name.startswith("aux1.") for name in a)
    for name, p in b.items():
        np.testing.assert_array_equal(p.numpy(), a[name].numpy(), err_msg=name)
    assert with_aux.init == init
    other = build_models(config(width=0.0625), init, seed=4)[1]
    assert not np.array_equal(other.conv1.weight.numpy(), without_aux.conv1.weight.numpy())


def test_a_step_whose_backward_splits_the_heads_updates_as_the_plain_step_does():
    """gradflow's step is training.train_step with its backward replaced by split_backward,
    which must leave in .grad the gradient of the total loss, exactly once."""
    settings = config(width=0.0625, dropout=0.0, aux_dropout=0.0)
    plain, split = (build_models(settings, "xavier", seed=2)[0] for _ in range(2))
    before = {name: p.numpy().copy() for name, p in plain.named_parameters()}
    images, labels = random_data(n=8, seed=5)
    x = Normalize()(images)
    calls = []

    def backward(losses):
        calls.append(losses)
        terms = {"main": (losses.main, 1.0), "aux1": (losses.aux1, 0.3), "aux2": (losses.aux2, 0.3)}
        split_backward(split, terms)

    for model, hook in ((plain, None), (split, backward)):
        model.train()
        optimizer = SGD(model.parameters(), lr=0.05, momentum=0.9)
        losses, outputs = train_step(model, x, labels, optimizer, "cpu", aux_weight=0.3,
                                     backward=hook)
        assert outputs.aux1 is not None and losses.aux1 is not None
    assert len(calls) == 1
    for name in ("conv1.weight", "fc.weight", "aux1.fc2.weight", "aux2.fc2.weight"):
        assert not np.array_equal(before[name], dict(plain.named_parameters())[name].numpy())
    for name, p in split.named_parameters():
        expected = dict(plain.named_parameters())[name].numpy()
        np.testing.assert_allclose(p.numpy(), expected, rtol=1e-5, atol=1e-7, err_msg=name)


def test_same_seed_same_numbers_and_the_heads_reach_only_below_them():
    settings = config(steps=3, width=0.0625, batch_size=8, split_every=2, test_images=0,
                      dropout=0.0, aux_dropout=0.0, init=("xavier",), seeds=1)
    first, second = (gradflow_runs.run_experiment(settings, random_data(), progress=False,
                                             log=lambda *a: None) for _ in range(2))
    assert set(first) == {("xavier", "aux", 0), ("xavier", "no_aux", 0)}
    for key in first:
        np.testing.assert_array_equal(first[key].losses, second[key].losses)
        np.testing.assert_array_equal(first[key].grad_norms, second[key].grad_norms)
    # Same weights and batches, no dropout: at step 0 the runs differ only by the aux heads'
    # gradient, which does not reach the layers above inception4d.
    a, b = first["xavier", "aux", 0], first["xavier", "no_aux", 0]
    assert a.losses[0, 1] == pytest.approx(b.losses[0, 1], rel=1e-6)
    assert a.norms("inception5b")[0] == pytest.approx(b.norms("inception5b")[0], rel=1e-5)
    assert a.norms("conv1")[0] != pytest.approx(b.norms("conv1")[0], rel=1e-3)
    assert a.trunk == b.layers and a.layers[-2:] == ["aux1", "aux2"]


def test_a_diverging_run_stops_at_once_and_says_so(fake_cifar, tmp_path, capsys):
    settings = config(steps=50, width=0.0625, batch_size=8, split_every=100, test_images=0,
                      init=("he",), seeds=1, lr=1e6)
    with np.errstate(all="ignore"), pytest.raises(TrainingDiverged,
                                                  match="'he, with aux heads, seed 0' diverged"):
        gradflow_runs.run_experiment(settings, random_data(), progress=False, log=lambda *a: None)
    out = tmp_path / "out"
    status = gradflow.main(["--data", fake_cifar, "--out", str(out), "--lr", "1e4",
                            "--init", "xavier,he"] + TINY)
    err = capsys.readouterr().err
    assert status == 1
    assert err.startswith("python -m tinygnet.demo gradflow: error: run 'xavier, with aux heads, "
                          "seed 0' diverged: the loss is nan")
    assert "at step 2 of 4; stopped. Try a smaller --lr (this run: 10000)" in err
    assert err.count("\n") == 1 and "Warning" not in err
    assert sorted(os.listdir(out)) == ["config.json", "gradflow_runs.npz"]


def test_an_existing_run_is_refused_unless_overwrite(fake_cifar, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "gradflow.csv").write_text("an earlier run\n")
    (out / "notes.txt").write_text("mine")
    argv = ["--data", fake_cifar, "--out", str(out), "--init", "he", "--seeds", "1"] + TINY
    assert gradflow.main(argv) == 2
    assert capsys.readouterr().err == (
        f"python -m tinygnet.demo gradflow: error: --out {out} already holds a run "
        f"(gradflow.csv): start it over with --overwrite (which replaces those files), or "
        f"choose another --out\n")
    assert (out / "gradflow.csv").read_text() == "an earlier run\n"
    assert gradflow.main(argv + ["--overwrite", "--steps", "2", "--split-every", "1"]) == 0
    assert (out / "gradflow.csv").read_text().startswith("init,run,seed,step,quantity,layer,value\n")
    assert (out / "notes.txt").read_text() == "mine"          # not a file of the run: kept


def test_the_seed_sets_the_order_of_the_batches():
    images, labels = random_data(n=40)
    settings = config(batch_size=8)

    def first_labels(seed, n=6):
        stream = gradflow_runs.batches(images, labels, settings, seed)
        return np.concatenate([next(stream)[1] for _ in range(n)])      # 6 batches: past an epoch
    np.testing.assert_array_equal(first_labels(0), first_labels(0))
    assert not np.array_equal(first_labels(0), first_labels(1))


# --------------------------------------------------------------------------- derived numbers
def test_smoothing_profiles_and_spread():
    np.testing.assert_allclose(gradflow_stats.smooth(np.arange(5.0), 2), [0, 0.5, 1.5, 2.5, 3.5])
    result = gradflow_runs.RunResult("he", "aux", 0, ["conv1", "fc", "aux1", "aux2"], None,
                                np.array([[1.0, 4.0, 9.0, 9.0], [3.0, 4.0, 9.0, 9.0]]), [], None, 0)
    assert result.trunk == ["conv1", "fc"]
    np.testing.assert_allclose(gradflow_stats.profile(result, [0]), [0.25, 1.0])
    np.testing.assert_allclose(gradflow_stats.profile(result, [0, 1]), [0.5, 1.0])
    stats = gradflow_stats.spread([[1.0, 5.0], [3.0, 2.0]])
    np.testing.assert_allclose(stats["mean"], [2.0, 3.5])
    np.testing.assert_allclose(stats["min"], [1.0, 2.0])
    np.testing.assert_allclose(stats["max"], [3.0, 5.0])
    assert config(steps=200).window == 20 and list(gradflow_stats.late_steps(config(steps=200))) == \
        list(range(180, 200))


# --------------------------------------------------------------------------- end to end
def test_quick_run_end_to_end_writes_every_output(fake_cifar, tmp_path, capsys):
    out = tmp_path / "out"
    status = gradflow.main(["--quick", "--data", fake_cifar, "--out", str(out), "--seeds", "2"]
                           + TINY)
    assert status == 0
    for name in ("gradflow.png", "gradflow_training.png", "gradflow_split.png", "gradflow.csv",
                 "config.json"):
        assert (out / name).stat().st_size > 0, name
    with open(out / "config.json") as f:
        saved = json.load(f)["config"]
    assert saved["quick"] and saved["steps"] == 4 and saved["init"] == ["gaussian", "xavier", "he"]
    assert json.loads((out / "config.json").read_text())["demo"] == "gradflow"   # the folder's demo

    rows = read_csv(out / "gradflow.csv")
    assert list(rows[0]) == ["init", "run", "seed", "step", "quantity", "layer", "value"]
    by = defaultdict(list)
    for row in rows:
        by[row["init"], row["run"], row["seed"], row["quantity"]].append(row)
    for init in ("gaussian", "xavier", "he"):
        for seed in ("0", "1"):
            # Losses: one per step in both runs; the aux ones only in run (a).
            assert [int(r["step"]) for r in by[init, "aux", seed, "loss_main"]] == list(range(4))
            assert len(by[init, "no_aux", seed, "loss_main"]) == 4
            assert not by[init, "no_aux", seed, "loss_aux1"]
            for main, aux1, aux2, total in zip(*(by[init, "aux", seed, f"loss_{k}"]
                                                 for k in ("main", "aux1", "aux2", "total"))):
                expected = float(main["value"]) + 0.3 * (float(aux1["value"]) + float(aux2["value"]))
                assert float(total["value"]) == pytest.approx(expected, rel=1e-4)
            # Gradient norms: every layer, every step, network order; the aux heads only in (a).
            layers_a = [r["layer"] for r in by[init, "aux", seed, "grad_norm"] if r["step"] == "0"]
            layers_b = [r["layer"] for r in by[init, "no_aux", seed, "grad_norm"] if r["step"] == "0"]
            assert layers_a[:3] == TRUNK_START and layers_a[-3:] == ["fc", "aux1", "aux2"]
            assert layers_b == layers_a[:-2] and len(by[init, "no_aux", seed, "grad_norm"]) == 4 * len(layers_b)
            # The split at steps 0 and 2 of run (a), every trunk layer; shares add up to 1.
            shares = defaultdict(float)
            for head in ("main", "aux1", "aux2"):
                for r in by[init, "aux", seed, f"split_share_{head}"]:
                    shares[r["step"], r["layer"]] += float(r["value"])
            assert {step for step, _ in shares} == {"0", "2"}
            assert {layer for _, layer in shares} == set(layers_b)
            for key, total in shares.items():
                assert total == pytest.approx(1.0, abs=1e-3), key
            reached = {r["layer"] for r in by[init, "aux", seed, "split_norm_aux1"]
                       if float(r["value"]) > 0}
            assert "conv1" in reached and "inception4b" not in reached
            for run in ("aux", "no_aux"):
                assert 0 <= float(by[init, run, seed, "test_acc"][0]["value"]) <= 1
        # The plotted numbers: mean, min and max over the two seeds, the mean between.
        for run in ("aux", "no_aux"):
            profile = {s: {r["layer"]: float(r["value"]) for r in by[init, run, s, "profile_step0"]}
                       for s in ("mean", "min", "max")}
            assert list(profile["mean"])[:3] == TRUNK_START and profile["mean"]["fc"] == 1.0
            for layer, mean in profile["mean"].items():
                assert profile["min"][layer] <= mean * (1 + 1e-5)
                assert mean <= profile["max"][layer] * (1 + 1e-5)
            raw = [float(r["value"]) for s in ("0", "1") for r in by[init, run, s, "grad_norm"]
                   if r["step"] == "0" and r["layer"] in ("conv1", "fc")]
            ratios = [raw[0] / raw[1], raw[2] / raw[3]]
            assert profile["mean"]["conv1"] == pytest.approx(np.mean(ratios), rel=1e-4)
            assert profile["min"]["conv1"] == pytest.approx(min(ratios), rel=1e-4)
            assert len(by[init, run, "mean", "conv1_over_fc_smoothed"]) == 4
            assert len(by[init, run, "mean", "loss_main_smoothed"]) == 4
            accuracies = [float(by[init, run, s, "test_acc"][0]["value"]) for s in ("0", "1")]
            assert float(by[init, run, "mean", "test_acc"][0]["value"]) == pytest.approx(
                np.mean(accuracies), abs=1e-6)
        assert len(by[init, "aux", "mean", "split_share_aux1_conv1"]) == 2

    printed = capsys.readouterr().out
    for init in ("gaussian", "xavier", "he"):
        assert f"init {init} " in printed
    for text in ("gradient norm conv1 / fc, step 0", "main loss, steps 0-0", "test accuracy, 16",
                 "aux share of conv1's gradient, step 0", "with aux heads", "without aux heads",
                 "[", "12 runs"):
        assert text in printed, text
    table = [line for line in printed.splitlines() if line.startswith(("init ", "  "))]
    assert len(table) == 3 * 8 and max(map(len, table)) <= 110        # a table that reads


def test_missing_data_fails_cleanly(tmp_path, capsys):
    status = gradflow.main(["--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")] + TINY)
    assert status == 1
    err = capsys.readouterr().err
    assert "error" in err and "Traceback" not in err


# --------------------------------------------------------------------------- stop and resume
def untimed_rows(path):
    """gradflow.csv without its wall-clock rows (train_seconds)."""
    return [row for row in read_csv(path) if row["quantity"] != "train_seconds"]


@pytest.fixture
def fast_figures(monkeypatch):
    """The three figures as small stand-in files: these tests are about runs, not pictures."""
    def stand_in(results, config, path):
        with open(path, "wb") as f:
            f.write(b"figure")
    for name in ("plot_gradflow", "plot_training", "plot_split"):
        monkeypatch.setattr(gradflow, name, stand_in)


def stop_child(data, signal_name, when, out, jobs=1):
    """The gradflow demo in a child process, sent ``signal_name``: with ``jobs`` 1 after
    optimiser step ``when``; with more, once ``when`` runs are kept (the steps are taken in
    the worker processes).

    The experiment: four runs of 4 steps (xavier; seeds 0 and 1, each with and without the
    aux heads, in that order), 16 steps in all."""
    argv = ["--data", data, "--init", "xavier", "--seeds", "2", "--device", "cpu"] + TINY
    mode = "gradflow-signal-at-step" if jobs == 1 else "gradflow-signal-at-run"
    child = subprocess.run([sys.executable, CHILD, mode, "16", str(when), signal_name, "--",
                            *argv, "--jobs", str(jobs), "--out", str(out)],
                           cwd=REPO, capture_output=True, text=True, timeout=120,
                           start_new_session=True)      # a process group of its own
    assert "Traceback" not in child.stdout + child.stderr
    return child, argv


def assert_ended(pids, seconds=5.0):
    """Every process ``pids`` ended (or a zombie, left to be reaped) within ``seconds``."""
    deadline = time.monotonic() + seconds
    alive = list(pids)
    while alive and time.monotonic() < deadline:
        alive = [pid for pid in alive if running(pid)]
        time.sleep(0.05)
    for pid in alive:                   # the test fails; the process must not train on
        os.kill(pid, signal.SIGKILL)
    assert not alive, f"processes {alive} outlived their parent"


def running(pid) -> bool:
    try:
        with open(f"/proc/{pid}/stat") as f:
            return f.read().rsplit(")", 1)[1].split()[0] != "Z"
    except FileNotFoundError:
        return False


def workers_of(child) -> list:
    """The worker PIDs that ``demo_child.py gradflow-signal-at-run`` printed."""
    lines = [line for line in child.stdout.splitlines() if line.startswith("workers ")]
    assert len(lines) == 1, child.stdout
    return [int(pid) for pid in lines[0].split()[1:]]


@pytest.mark.slow
@pytest.mark.parametrize("jobs, when, stop", [
    (1, 10, "SIGTERM"),             # inside the third run
    (2, 2, "SIGTERM"),              # two runs kept, two in the workers
    (2, 2, "group-SIGINT")])        # Ctrl-C in a terminal: to the workers too, theirs to ignore
def test_sigterm_keeps_the_finished_runs_and_says_how_to_continue(fake_cifar, tmp_path, capsys,
                                                                  jobs, when, stop):
    stopped = tmp_path / "stopped"
    child, argv = stop_child(fake_cifar, stop, when, stopped, jobs=jobs)
    assert child.returncode == 128 + signal.Signals[stop.split("-")[-1]], child.stderr
    assert child.stderr.endswith(
        f"python -m tinygnet.demo gradflow: stopped; 2 of 4 runs finished, kept in "
        f"{stopped / 'gradflow_runs.npz'}. Continue with:\n"
        f"  python -m tinygnet.demo gradflow --resume {stopped}\n")
    _, kept = gradflow_runs.load_runs(stopped / "gradflow_runs.npz")
    grid = gradflow.resolve_config(gradflow.build_parser().parse_args(argv)).grid()
    if jobs == 1:
        assert list(kept) == [("xavier", "aux", 0), ("xavier", "no_aux", 0)]
    else:   # the two that ended first (the first two, unless one ran slow), in the grid's order
        assert len(kept) == 2 and list(kept) == [key for key in grid if key in kept]
        assert_ended(workers_of(child))
    assert sorted(os.listdir(stopped)) == ["config.json", "gradflow_runs.npz"]
    # A rerun into the folder is refused, and points at --resume.
    assert gradflow.main(argv + ["--out", str(stopped)]) == 2
    assert f"continue it with --resume {stopped}, start it over" in capsys.readouterr().err
    # (the kill -9 test below resumes a stopped jobs-2 experiment)


@pytest.mark.slow
@pytest.mark.parametrize("jobs, when", [(1, 14), (2, 3)])
def test_resume_after_kill_9_ends_as_if_never_stopped(fake_cifar, tmp_path, capsys, fast_figures,
                                                      jobs, when):
    stopped, uninterrupted = tmp_path / "stopped", tmp_path / "uninterrupted"
    # Killed inside the last run (with jobs 1: seed 1 without aux heads, its twin with them
    # kept): the run trained after the restart must not depend on what the process did before.
    child, argv = stop_child(fake_cifar, "SIGKILL", when, stopped, jobs=jobs)
    assert child.returncode == -signal.SIGKILL, child.stderr
    if jobs > 1:
        assert_ended(workers_of(child))         # no worker trains on, orphaned
    _, kept = gradflow_runs.load_runs(stopped / "gradflow_runs.npz")
    assert len(kept) == 3
    assert gradflow.main(["--resume", str(stopped), "--steps", "5"]) == 2
    assert "these options differ from them: --steps 5 (saved: 4)" in capsys.readouterr().err

    # --jobs is not one of the experiment's settings: a resume may change it.
    assert gradflow.main(["--resume", str(stopped), "--no-progress", "--data", fake_cifar,
                          "--jobs", str(3 - jobs)]) == 0
    resumed = capsys.readouterr().out
    assert f"resuming {stopped}: 3 of 4 runs finished and kept, 1 to train" in resumed
    assert resumed.count("kept from the interrupted experiment") == 3
    assert "4 runs (3 kept, 1 trained in" in resumed
    assert gradflow.main(argv + ["--out", str(uninterrupted)]) == 0
    assert untimed_rows(stopped / "gradflow.csv") == untimed_rows(uninterrupted / "gradflow.csv")
    _, runs = gradflow_runs.load_runs(stopped / "gradflow_runs.npz")
    assert {key: runs[key].seconds for key in kept} == {key: r.seconds for key, r in kept.items()}


def test_resume_refuses_what_it_cannot_continue(tmp_path, capsys):
    folder = tmp_path / "run"
    gradflow_runs.save_runs(folder / "gradflow_runs.npz", config(out=str(folder)), {})
    for argv, status, message in [
            (["--resume", ""], 2, "--resume needs the folder of a stopped experiment"),
            (["--resume", str(tmp_path / "none")], 1, f"cannot resume: {tmp_path / 'none'} is "
                                                       f"not a folder"),
            (["--resume", str(tmp_path)], 1, f"cannot resume: {tmp_path} holds no gradflow "
                                             f"experiment (no gradflow_runs.npz)"),
            (["--resume", str(folder), "--overwrite"], 2, "--overwrite would delete the experiment"),
            (["--resume", str(folder), "--out", str(tmp_path / "other")], 2,
             "--resume continues the experiment in its own folder"),
            (["--resume", str(folder), "--init", "he,xavier", "--quick"], 2,
             "differ from them: --init he,xavier (saved: gaussian,xavier,he), --quick (the saved "
             "experiment is not a quick one)")]:
        assert gradflow.main(argv + ["--device", "cpu"]) == status, argv
        err = capsys.readouterr().err
        assert err.startswith("python -m tinygnet.demo gradflow: error: ") and message in err, err
        assert err.count("\n") == 1


def test_each_run_is_kept_as_it_ends_loads_back_exactly_and_is_not_trained_again(tmp_path,
                                                                                 monkeypatch):
    settings = config(steps=3, width=0.0625, batch_size=8, split_every=2, test_images=0,
                      init=("he",), seeds=1)
    path = tmp_path / "gradflow_runs.npz"
    kept = []

    def keep(results):
        kept.append(list(results))
        gradflow_runs.save_runs(path, settings, results)
    results = gradflow_runs.run_experiment(settings, random_data(), progress=False,
                                           log=lambda *a: None, keep=keep)
    assert kept == [[("he", "aux", 0)], [("he", "aux", 0), ("he", "no_aux", 0)]]
    saved_config, loaded = gradflow_runs.load_runs(path)
    assert Config(**saved_config) == settings
    assert list(loaded) == list(results)
    for key, result in results.items():
        back = loaded[key]
        np.testing.assert_array_equal(back.losses, result.losses)        # NaN where no aux
        np.testing.assert_array_equal(back.grad_norms, result.grad_norms)
        assert (back.layers, back.test_acc, back.seconds) == \
            (result.layers, result.test_acc, result.seconds)
        assert [step for step, _ in back.splits] == [step for step, _ in result.splits]
        for (_, got), (_, expected) in zip(back.splits, result.splits):
            assert list(got) == list(expected)
            for layer in expected:
                assert str(got[layer]) == str(expected[layer])
                np.testing.assert_equal(vars(got[layer]), vars(expected[layer]))  # NaN == NaN
    assert len(results["he", "aux", 0].splits) == 2

    def no_training(*args, **kwargs):
        raise AssertionError("a kept run was trained again")
    monkeypatch.setattr(gradflow_runs, "train_run", no_training)
    again = gradflow_runs.run_experiment(settings, random_data(), progress=False,
                                         log=lambda *a: None, finished=loaded)
    assert list(again) == list(results) and all(again[k] is loaded[k] for k in loaded)


def test_the_accuracy_panel_without_a_test_says_so_without_a_warning(tmp_path):
    settings = config(steps=2, width=0.0625, batch_size=8, split_every=1, test_images=0,
                      init=("he",), seeds=1)
    results = gradflow_runs.run_experiment(settings, random_data(), progress=False,
                                           log=lambda *a: None)
    with warnings.catch_warnings():
        warnings.simplefilter("error")
        gradflow_plots.plot_training(results, settings, tmp_path / "training.png")
    assert (tmp_path / "training.png").stat().st_size > 0


@pytest.mark.parametrize("field, value, rule", [
    ("steps", 0, "steps 0, which must be"), ("lr", -0.1, "lr -0.1, which must be"),
    ("width", 50.0, "width 50.0, which must be"), ("stem_stride", 3, "stem_stride 3, which must be"),
    ("dropout", 1.5, "dropout 1.5, which must be"), ("seeds", "2", "seeds '2', which must be"),
    ("init", ("he", "lecun"), "init ('he', 'lecun'), which must be one or more of"),
    ("init", (), "init (), which must be one or more of")])
def test_resume_checks_a_saved_configuration_as_the_command_line_does(tmp_path, capsys, field,
                                                                       value, rule):
    """An edited or damaged experiment file is refused in one line naming the value, never
    trained on or turned into a traceback; its values go through the command line's rules."""
    folder = tmp_path / "run"
    gradflow_runs.save_runs(folder / "gradflow_runs.npz",
                            config(out=str(folder), **{field: value}), {})
    assert gradflow.main(["--resume", str(folder), "--device", "cpu"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("python -m tinygnet.demo gradflow: error: cannot resume: ") and \
        f"its saved configuration has {rule}" in err, err
    assert err.count("\n") == 1
    if not isinstance(value, (str, tuple)):     # the same value typed is refused by the same rule
        flag = "--" + field.replace("_", "-")
        with pytest.raises(SystemExit):
            gradflow.build_parser().parse_args([flag, str(value)])


# --------------------------------------------------------------------------- runs side by side
def assert_same_runs(got: dict, expected: dict):
    """Bit for bit, every measurement of every run (not the wall-clock seconds)."""
    assert list(got) == list(expected)
    for key, want in expected.items():
        run = got[key]
        assert (run.layers, run.test_acc) == (want.layers, want.test_acc), key
        np.testing.assert_array_equal(run.losses, want.losses, err_msg=str(key))
        np.testing.assert_array_equal(run.grad_norms, want.grad_norms, err_msg=str(key))
        assert repr(run.splits) == repr(want.splits), key          # floats written exactly


@pytest.mark.slow
def test_runs_in_two_workers_are_the_runs_of_one_process_kept_in_the_grids_order(capsys):
    settings = config(steps=3, width=0.0625, batch_size=8, split_every=2, test_images=8,
                      init=("xavier", "he"), seeds=1)
    train, test = random_data(n=24), random_data(n=8, seed=1)
    expected = gradflow_runs.run_experiment(settings, train, test, progress=False,
                                            log=lambda *a: None)
    grid = settings.grid()
    # One run kept from a stopped experiment, after two of those still to train: the order
    # the runs end in (kept first, then as the workers finish) is not the grid's.
    finished = {grid[2]: expected[grid[2]]}
    kept = []
    results = gradflow_runs.run_experiment(settings, train, test, progress=True, jobs=2,
                                           finished=finished, keep=lambda r: kept.append(list(r)))
    assert_same_runs(results, expected)
    assert results[grid[2]] is finished[grid[2]]
    assert len(kept) == 3 and [len(k) for k in kept] == [2, 3, 4]
    assert all(k == [key for key in grid if key in k] for k in kept)      # the grid's order
    printed = capsys.readouterr()
    assert printed.out.count("3 steps in") == 3 and "kept from the interrupted" in printed.out
    assert "9/9" in printed.err        # the one bar, of the three runs' steps, run to its end


WORKER = """
import os, signal, sys
import multiprocessing
from tinygnet.demo import gradflow_runs
from tinygnet.demo.gradflow import DEFAULTS
import numpy as np

config = gradflow_runs.Config(**dict(DEFAULTS, steps=10**6, test_images=0, device="cpu",
                                     data="", download=False, out="", quick=False))
rng = np.random.default_rng(0)
train = rng.integers(0, 256, (64, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 64)
context = multiprocessing.get_context("spawn")
process, connection = gradflow_runs.start_worker(context, config, train, None, True)
connection.send(("he", "aux", 0))
for _ in range(3):
    assert connection.recv() == ("step", None)         # training: three steps taken
with open(f"/proc/{process.pid}/status") as f:
    threads = [line.split()[1] for line in f if line.startswith("Threads:")][0]
print(process.pid, threads, flush=True)
os.kill(os.getpid(), signal.SIGKILL)                   # kill -9: the parent cleans nothing up
"""


@pytest.mark.slow
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="/proc, and PR_SET_PDEATHSIG")
def test_a_worker_trains_on_one_thread_and_ends_with_its_parent_even_after_kill_9():
    """A worker must use one core (tinygnet's threads and BLAS's both held to one: the demo's
    width and batch, where the fast paths split their work) and must not train on, orphaned,
    when its parent is killed."""
    # Started as a user starts it: without the one-thread BLAS that tests/conftest.py sets.
    env = {name: value for name, value in os.environ.items()
           if name not in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS")}
    parent = subprocess.run([sys.executable, "-c", WORKER], cwd=REPO, capture_output=True,
                            text=True, timeout=120, env=dict(env, PYTHONPATH=REPO))
    assert parent.returncode == -signal.SIGKILL, parent.stderr
    pid, threads = map(int, parent.stdout.split())
    assert_ended([pid], seconds=3)
    assert threads == 1


@pytest.mark.slow
def test_a_worker_that_dies_stops_the_experiment_in_one_line_keeping_the_finished_runs(
        fake_cifar, tmp_path):
    out = tmp_path / "out"
    child, _ = stop_child(fake_cifar, "worker-SIGKILL", 1, out, jobs=2)   # killed, as by OOM
    assert child.returncode == 1, child.stderr
    _, kept = gradflow_runs.load_runs(out / "gradflow_runs.npz")
    assert child.stderr.startswith("python -m tinygnet.demo gradflow: error: the worker process "
                                   "training run 'xavier, ")
    assert child.stderr.endswith(
        f"ended without it (killed by SIGKILL: out of memory?); {len(kept)} of 4 runs finished, "
        f"kept in {out / 'gradflow_runs.npz'}: continue with python -m tinygnet.demo gradflow "
        f"--resume {out}\n")
    assert child.stderr.count("\n") == 1 and 1 <= len(kept) <= 2


@pytest.mark.slow
def test_a_run_diverging_in_a_worker_stops_the_experiment_with_the_same_line(fake_cifar, tmp_path,
                                                                             capfd, monkeypatch):
    out = tmp_path / "out"              # capfd: the workers write to the file descriptors
    monkeypatch.setattr(os, "sched_getaffinity", lambda pid: {0}, raising=False)  # taskset -c 0
    status = gradflow.main(["--data", fake_cifar, "--out", str(out), "--lr", "1e4", "--init",
                            "xavier", "--seeds", "1"] + TINY + ["--jobs", "2"])
    captured = capfd.readouterr()
    err = captured.err
    assert ("note: --jobs 2 starts 2 worker processes, one for each core, but this process may "
            "run on 1 core: the workers will take turns\n") in captured.out
    assert status == 1
    assert err.startswith("python -m tinygnet.demo gradflow: error: run 'xavier, with")
    assert "aux heads, seed 0' diverged: the loss is nan" in err
    assert "at step 2 of 4; stopped. Try a smaller --lr (this run: 10000)" in err
    assert err.count("\n") == 1 and "Warning" not in err
    assert sorted(os.listdir(out)) == ["config.json", "gradflow_runs.npz"]


def test_jobs_is_no_setting_of_the_experiment_so_a_resume_may_change_it(tmp_path):
    saved = dataclasses.asdict(config(out=str(tmp_path)))
    for jobs in ("1", "3"):
        args = gradflow.build_parser().parse_args(["--resume", str(tmp_path), "--jobs", jobs,
                                                   "--device", "cpu", "--no-download"])
        assert args.jobs == int(jobs)
        assert gradflow.config_for_resume(args, saved) == Config(**saved)
    assert gradflow.default_jobs("cpu") == len(os.sched_getaffinity(0))
    assert gradflow.default_jobs("cuda") == 1
