"""The gradflow demo: the two runs start equal, and every output is written and consistent.

Runs on tiny synthetic data in the official CIFAR-10 format, with a
network narrow enough that a step takes milliseconds.
"""
import csv
import json
import os
from collections import defaultdict

import numpy as np
import pytest

from tinygnet.demo import gradflow
from tinygnet.demo.gradflow import Config, build_models

TINY = ["--steps", "5", "--width", "0.0625", "--batch-size", "8", "--split-every", "2",
        "--points", "3", "--test-images", "16", "--no-progress", "--no-download"]


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


def test_both_runs_start_from_the_same_weights():
    with_aux, without_aux = build_models(config(width=0.0625))
    a = dict(with_aux.named_parameters())
    b = dict(without_aux.named_parameters())
    assert set(b) == {name for name in a if not name.startswith(("aux1.", "aux2."))}
    assert any(name.startswith("aux1.") for name in a)
    for name, p in b.items():
        np.testing.assert_array_equal(p.numpy(), a[name].numpy(), err_msg=name)


def test_plot_points_and_window_means():
    assert gradflow.plot_points(config(steps=100, points=4)) == [0, 33, 66, 99]
    assert gradflow.plot_points(config(steps=5, points=10)) == [0, 1, 2, 3, 4]
    assert gradflow.plot_points(config(steps=7, points=1)) == [6]
    assert config(steps=200).window == 20 and config(steps=5).window == 1
    values = np.arange(10.0)[:, None]
    assert gradflow.window_mean(values, 0, 3)[0] == 0.0
    assert gradflow.window_mean(values, 5, 3)[0] == 4.0          # mean of 3, 4, 5


def test_quick_run_writes_every_output(fake_cifar, tmp_path, capsys):
    out = tmp_path / "out"
    status = gradflow.main(["--data", fake_cifar, "--out", str(out)] + TINY)
    assert status == 0
    for name in ("gradflow.png", "gradflow_split.png", "gradflow.csv", "config.json"):
        assert (out / name).stat().st_size > 0, name
    with open(out / "config.json") as f:
        saved = json.load(f)["config"]
    assert saved["steps"] == 5 and saved["width"] == 0.0625 and saved["aux_weight"] == 0.3

    rows = read_csv(out / "gradflow.csv")
    assert list(rows[0]) == ["run", "step", "quantity", "layer", "value"]
    by = defaultdict(list)
    for row in rows:
        by[row["run"], row["quantity"]].append(row)
    # Losses: one per step for both runs; the aux ones only in run (a).
    assert [int(r["step"]) for r in by["aux", "loss_main"]] == list(range(5))
    assert len(by["no_aux", "loss_main"]) == 5 and not by["no_aux", "loss_aux1"]
    for main, aux1, aux2, total in zip(by["aux", "loss_main"], by["aux", "loss_aux1"],
                                       by["aux", "loss_aux2"], by["aux", "loss_total"]):
        expected = float(main["value"]) + 0.3 * (float(aux1["value"]) + float(aux2["value"]))
        assert float(total["value"]) == pytest.approx(expected, rel=1e-4)
    # Gradient norms: every layer, every step, in network order; the aux heads only in (a).
    layers_a = [r["layer"] for r in by["aux", "grad_norm"] if r["step"] == "0"]
    layers_b = [r["layer"] for r in by["no_aux", "grad_norm"] if r["step"] == "0"]
    assert layers_a[:3] == ["conv1", "conv2_reduce", "conv2"] and layers_a[-3:] == ["fc", "aux1", "aux2"]
    assert layers_b == layers_a[:-2]
    assert len(by["no_aux", "grad_norm"]) == 5 * len(layers_b)
    assert all(float(r["value"]) > 0 for r in by["no_aux", "grad_norm"])
    assert {int(r["step"]) for r in by["aux", "grad_norm_plotted"]} == {0, 2, 4}
    # The split: at steps 0, 2, 4 of run (a), for every trunk layer; shares add up to 1.
    shares = defaultdict(float)
    for head in ("main", "aux1", "aux2"):
        for r in by["aux", f"split_share_{head}"]:
            shares[r["step"], r["layer"]] += float(r["value"])
    assert {step for step, _ in shares} == {"0", "2", "4"}
    assert {layer for _, layer in shares} == set(layers_b)
    for key, total in shares.items():
        assert total == pytest.approx(1.0, abs=1e-3), key
    reached = {r["layer"] for r in by["aux", "split_norm_aux1"] if float(r["value"]) > 0}
    assert "conv1" in reached and "inception4a" in reached and "inception4b" not in reached
    assert not by["no_aux", "split_share_main"]

    printed = capsys.readouterr().out
    assert "with / without aux heads" in printed
    assert "conv1" in printed and "inception3a" in printed and "ratio" in printed
    assert "training loss after 5 steps" in printed
    assert "test accuracy" in printed
    assert "per-head split" in printed and "main/aux1" in printed


def test_same_seed_same_numbers():
    rng = np.random.default_rng(0)
    train = (rng.integers(0, 256, (24, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 24))
    settings = config(steps=3, width=0.0625, batch_size=8, split_every=2, test_images=0,
                      dropout=0.0, aux_dropout=0.0)
    first, second = (gradflow.run_experiment(settings, train, progress=False, log=lambda *a: None)
                     for _ in range(2))
    for run in gradflow.RUNS:
        np.testing.assert_array_equal(first[run].losses, second[run].losses)
        np.testing.assert_array_equal(first[run].grad_norms, second[run].grad_norms)
    # Same weights and batches, no dropout: at step 0 the runs differ only by the aux heads'
    # gradient, which does not reach the layers above inception4d.
    a, b = first["aux"], first["no_aux"]
    assert a.losses[0, 1] == pytest.approx(b.losses[0, 1], rel=1e-6)
    top_a, top_b = a.layers.index("inception5b"), b.layers.index("inception5b")
    assert a.grad_norms[0, top_a] == pytest.approx(b.grad_norms[0, top_b], rel=1e-5)
    assert a.grad_norms[0, 0] != pytest.approx(b.grad_norms[0, 0], rel=1e-3)     # conv1 differs


def test_missing_data_and_bad_options_fail_cleanly(tmp_path, capsys):
    status = gradflow.main(["--data", str(tmp_path / "nothing"), "--out", str(tmp_path / "o")] + TINY)
    assert status == 1
    assert "error" in capsys.readouterr().err
    with pytest.raises(SystemExit) as stop:
        gradflow.main(["--steps", "0"])
    assert stop.value.code == 2
    with pytest.raises(SystemExit):
        gradflow.main(["--stem-stride", "3"])


def test_a_diverging_run_stops_at_once_and_says_so(fake_cifar, tmp_path, capsys):
    out = tmp_path / "out"
    status = gradflow.main(["--data", fake_cifar, "--out", str(out), "--lr", "1e4"] + TINY)
    err = capsys.readouterr().err
    assert status == 1
    assert err.startswith("python -m tinygnet.demo gradflow: error: run 'with aux heads' "
                          "diverged: the loss is nan")
    assert "at step 2 of 5; stopped. Try a smaller --lr (this run: 10000)" in err
    assert err.count("\n") == 1 and "Warning" not in err
    assert os.listdir(out) == ["config.json"]


def test_an_existing_run_is_refused_unless_overwrite(fake_cifar, tmp_path, capsys):
    out = tmp_path / "out"
    out.mkdir()
    (out / "gradflow.csv").write_text("an earlier run\n")
    (out / "notes.txt").write_text("mine")
    argv = ["--data", fake_cifar, "--out", str(out)] + TINY
    assert gradflow.main(argv) == 2
    assert capsys.readouterr().err == (
        f"python -m tinygnet.demo gradflow: error: --out {out} already holds a run "
        f"(gradflow.csv): start it over with --overwrite (which replaces those files), or "
        f"choose another --out\n")
    assert (out / "gradflow.csv").read_text() == "an earlier run\n"
    assert gradflow.main(argv + ["--overwrite", "--steps", "2", "--split-every", "1"]) == 0
    assert (out / "gradflow.csv").read_text().startswith("run,step,quantity,layer,value\n")
    assert (out / "notes.txt").read_text() == "mine"          # not a file of the run: kept


def test_momentum_is_bounded_as_pytorch_users_expect(capsys):
    with pytest.raises(SystemExit) as stop:
        gradflow.main(["--momentum", "5"])
    assert stop.value.code == 2 and "'5': must be in [0, 1)" in capsys.readouterr().err
