"""The CIFAR-10 demo: configuration, exact resume, --quick end to end, clean failures.

Everything runs on tiny synthetic data in the official format, written to a
temporary folder; the network is narrow enough that a step takes milliseconds.
"""
import csv
import dataclasses
import json
import os
import signal
import subprocess
import sys

import numpy as np
import pytest

from tinygnet import backend
from tinygnet.checkpoint import load_checkpoint, save_checkpoint
from tinygnet.demo import cifar
from tinygnet.demo.cifar import ArrayDataset, Config, Trainer

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]
REPO = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))


@pytest.fixture
def fake_cifar(make_fake_cifar):
    """A data folder with 5 x 64 training and 64 test images."""
    return make_fake_cifar(64)


def tiny_config(out, **changes) -> Config:
    values = dict(cifar.CPU_DEFAULTS)
    values.update(device="cpu", epochs=2, batch_size=16, lr=0.05, width=1 / 16, stem_stride=2,
                  aux=True, seed=3, data="unused", download=False, train_images=None,
                  test_images=None, eval_batch_size=32, log_every=2, out=str(out), quick=False,
                  ema=0.9)
    values.update(changes)
    return Config(**values)


def tiny_data(seed=0):
    rng = np.random.default_rng(seed)

    def split(n):
        return ArrayDataset(rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8),
                            rng.integers(0, 10, n).astype(np.int64), CLASSES)
    return split(40), split(24)      # 3 steps an epoch, the last one of 8 images


def quiet_trainer(config, data):
    return Trainer(config, *data, progress=False, plots=False, log=lambda *args, **kwargs: None)


def _without_times(history):
    return [{k: v for k, v in row.items() if not k.endswith(("seconds", "per_second"))}
            for row in history]


# --------------------------------------------------------------------------
# Exact resume
# --------------------------------------------------------------------------
@pytest.mark.parametrize("stop_at_step", [2, 3])   # mid-epoch 1, and its last step
def test_interrupt_and_resume_gives_identical_weights(tmp_path, stop_at_step):
    data = tiny_data()
    straight = quiet_trainer(tiny_config(tmp_path / "straight"), data)
    assert straight.fit()["interrupted"] is False

    first = quiet_trainer(tiny_config(tmp_path / "resumed"), data)
    real_step, steps = first.optimizer.step, []

    def step_then_ctrl_c():
        real_step()
        steps.append(1)
        if len(steps) == stop_at_step:
            signal.raise_signal(signal.SIGINT)     # the real Ctrl-C path

    first.optimizer.step = step_then_ctrl_c
    result = first.fit()
    assert result["interrupted"] and len(steps) == stop_at_step
    assert signal.getsignal(signal.SIGINT) is signal.default_int_handler   # handler restored

    backend.manual_seed(999)                       # scramble the global stream
    state = load_checkpoint(result["checkpoint"])
    assert (state["epoch"], state["step"]) == ((0, 2) if stop_at_step == 2 else (1, 0))
    second = quiet_trainer(Config(**state["config"]), data)
    second.load_state_dict(state)
    assert second.fit()["interrupted"] is False

    expected, got = straight.model.state_dict(), second.model.state_dict()
    assert list(expected) == list(got)
    for name in expected:
        np.testing.assert_array_equal(got[name], expected[name], err_msg=name)
    np.testing.assert_array_equal(second.ema.shadow[0], straight.ema.shadow[0])
    assert _without_times(second.history) == _without_times(straight.history)
    groups = [t.optimizer.state_dict()["param_groups"] for t in (straight, second)]
    assert groups[0] == groups[1]


def test_same_seed_same_run_other_seed_other_run(tmp_path):
    data = tiny_data()
    runs = []
    for k, seed in enumerate([3, 3, 4]):
        config = tiny_config(tmp_path / str(k), epochs=1, seed=seed, schedule="cosine")
        trainer = quiet_trainer(config, data)
        trainer.fit()
        runs.append(trainer.model.state_dict()["fc.weight"])
    np.testing.assert_array_equal(runs[0], runs[1])
    assert not np.array_equal(runs[0], runs[2])


# --------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------
def parse(*argv):
    return cifar.build_parser().parse_args(list(argv))


def test_cpu_defaults_then_quick_then_flags():
    config = cifar.resolve_config(parse("--device", "cpu"))
    for name, value in cifar.CPU_DEFAULTS.items():
        assert getattr(config, name) == value, name
    assert config.aux and config.seed == 0 and config.train_images is None

    quick = cifar.resolve_config(parse("--device", "cpu", "--quick"))
    for name, value in cifar.QUICK_OVERRIDES.items():
        assert getattr(quick, name) == value, name

    given = cifar.resolve_config(parse("--device", "cpu", "--quick", "--width", "0.5", "--no-aux",
                                       "--no-batchnorm", "--lr", "0.01", "--epochs", "3"))
    assert (given.width, given.aux, given.batchnorm) == (0.5, False, False)
    assert (given.lr, given.epochs) == (0.01, 3)
    assert given.eval_batch_size == 2 * given.batch_size
    assert config.init == "he" and quick.init == "he"


def test_init_flag_reaches_the_model(tmp_path):
    config = cifar.resolve_config(parse("--device", "cpu", "--init", "xavier", "--no-batchnorm"))
    assert config.init == "xavier"
    trainer = quiet_trainer(tiny_config(tmp_path, init="xavier", batchnorm=False), tiny_data())
    assert trainer.model.init == "xavier"
    np.testing.assert_array_equal(trainer.model.conv1.bias.numpy(), np.float32(0.2))


def test_a_checkpoint_from_before_init_resumes_as_he(tmp_path, capsys):
    saved = dataclasses.asdict(tiny_config(tmp_path))
    del saved["init"]
    config = cifar.config_for_resume(parse("--device", "cpu"), saved, str(tmp_path / "c.npz"))
    assert config.init == "he"
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, {"kind": "tinygnet.demo.cifar", "config": saved})
    assert cifar.main(["--resume", str(path), "--init", "gaussian", "--device", "cpu"]) == 2
    assert "--init gaussian (saved: he)" in capsys.readouterr().err


def test_data_root_resolution(monkeypatch, tmp_path):
    monkeypatch.setenv("TINYGNET_DATA", str(tmp_path / "env"))
    assert cifar.resolve_config(parse("--device", "cpu")).data == str(tmp_path / "env")
    assert cifar.resolve_config(parse("--device", "cpu", "--data", str(tmp_path / "x"))).data == \
        str(tmp_path / "x")


@pytest.mark.parametrize("argv", [["--epochs", "0"], ["--lr", "-1"], ["--width", "abc"],
                                  ["--dropout", "1"], ["--stem-stride", "3"], ["--init", "lecun"]])
def test_bad_values_are_usage_errors(argv, capsys):
    with pytest.raises(SystemExit) as stop:
        parse(*argv)
    assert stop.value.code == 2
    assert argv[0] in capsys.readouterr().err


def test_resume_refuses_changed_settings(tmp_path, capsys):
    path = tmp_path / "checkpoint.npz"
    save_checkpoint(path, {"kind": "tinygnet.demo.cifar",
                           "config": dataclasses.asdict(tiny_config(tmp_path))})
    assert cifar.main(["--resume", str(path), "--lr", "0.5", "--device", "cpu"]) == 2
    err = capsys.readouterr().err
    assert "--lr 0.5 (saved: 0.05)" in err and "Traceback" not in err


def test_resume_from_a_bad_file_names_it(tmp_path, capsys):
    path = tmp_path / "broken.npz"
    path.write_bytes(b"garbage")
    assert cifar.main(["--resume", str(path)]) == 1
    assert "broken.npz" in capsys.readouterr().err


# --------------------------------------------------------------------------
# End to end
# --------------------------------------------------------------------------
def test_quick_run_writes_every_output(fake_cifar, tmp_path, capsys):
    out = tmp_path / "run"
    argv = ["--quick", "--device", "cpu", "--data", fake_cifar, "--out", str(out),
            "--no-download", "--no-progress"]
    assert cifar.main(argv) == 0
    printed = capsys.readouterr().out
    assert "final test accuracy" in printed and "best" in printed
    for name in CLASSES:                              # the per-class table
        assert f"  {name} " in printed

    assert sorted(os.listdir(out)) == ["best.npz", "checkpoint.npz", "config.json", "curves.png",
                                       "metrics.csv", "per_class.png"]
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["epoch"] == "1"
    assert {"loss", "loss_main", "loss_aux1", "loss_aux2", "train_acc", "test_acc"} <= set(rows[0])
    record = json.loads((out / "config.json").read_text())
    assert record["config"]["quick"] and record["config"]["width"] == cifar.QUICK_OVERRIDES["width"]
    assert record["config"]["train_images"] == cifar.QUICK_OVERRIDES["train_images"]
    for png in ("curves.png", "per_class.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    state = load_checkpoint(out / "checkpoint.npz")
    assert state["epoch"] == 1 and state["history"][0]["test_acc"] == float(rows[0]["test_acc"])

    # Resuming a finished run trains nothing more and reports again.
    assert cifar.main(["--resume", str(out / "checkpoint.npz"), "--device", "cpu",
                       "--data", fake_cifar, "--no-progress"]) == 0
    assert "final test accuracy" in capsys.readouterr().out


def _demo(*argv, env=None):
    return subprocess.run([sys.executable, "-m", "tinygnet.demo", *argv], cwd=REPO,
                          capture_output=True, text=True, timeout=60,
                          env={**os.environ, **(env or {})})


def test_missing_data_exits_cleanly(tmp_path):
    empty = tmp_path / "nothing here"
    result = _demo("cifar", "--data", str(empty), "--no-download", "--out", str(tmp_path / "run"))
    assert result.returncode == 1
    assert "CIFAR-10 not found" in result.stderr and str(empty) in result.stderr
    assert "Traceback" not in result.stderr + result.stdout


def test_help_and_subcommands():
    result = _demo("cifar", "--help")
    assert result.returncode == 0
    for flag in ("--device", "--epochs", "--batch-size", "--lr", "--width", "--no-aux",
                 "--aux-weight", "--batchnorm", "--no-batchnorm", "--data", "--out", "--resume",
                 "--seed", "--quick"):
        assert flag in result.stdout, flag
    listing = _demo("--help")
    assert listing.returncode == 0 and "cifar" in listing.stdout
    unknown = _demo("nope")
    assert unknown.returncode == 2 and "unknown subcommand 'nope'" in unknown.stderr
