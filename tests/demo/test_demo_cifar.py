"""The CIFAR-10 demo: configuration, exact resume, --quick end to end, clean failures.

Everything runs on tiny synthetic data in the official format, written to a
temporary folder; the network is narrow enough that a step takes milliseconds.
"""
import csv
import dataclasses
import json
import math
import os
import re
import signal
import subprocess
import sys

import numpy as np
import pytest

from tinygnet import backend
from tinygnet.checkpoint import load_checkpoint, save_checkpoint
from tinygnet.demo import cifar
from tinygnet.demo.cifar import ArrayDataset, Config
from tinygnet.demo.common import TrainingDiverged, UsageError
from tinygnet.demo.run import Trainer
from tinygnet.demo.workers import more_workers_than_cores
from tinygnet.models import INITS

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


def tiny_data(seed=0, learnable=False):
    """(train, test): 40 and 24 random images; ``learnable``: their red and green levels give
    their class away (plus noise), so that a few steps teach the network something."""
    rng = np.random.default_rng(seed)

    def split(n):
        images = rng.integers(0, 256, (n, 3, 32, 32), dtype=np.uint8)
        labels = rng.integers(0, 10, n).astype(np.int64)
        if learnable:
            levels = np.stack([25 * labels, 250 - 25 * labels], axis=1)[:, :, None, None]
            images[:, :2] = (levels + rng.integers(0, 30, (n, 2, 32, 32))).clip(0, 255)
        return ArrayDataset(images, labels, CLASSES)
    return split(40), split(24)      # 3 steps an epoch, the last one of 8 images


def quiet_trainer(config, data):
    return Trainer(config, *data, progress=False, plots=False, log=lambda *args, **kwargs: None)


def _without_times(history):
    return [{k: v for k, v in row.items() if not k.endswith(("seconds", "per_second"))}
            for row in history]


# --------------------------------------------------------------------------
# Exact resume
# --------------------------------------------------------------------------
@pytest.mark.parametrize("stop_at_step, processes", [(2, 2), (3, 2), (2, 1)])   # mid-epoch 1,
def test_interrupt_and_resume_gives_identical_weights(tmp_path, stop_at_step, processes):
    data = tiny_data()                                                  # and its last step
    straight = quiet_trainer(tiny_config(tmp_path / "straight", processes=processes), data)
    assert straight.fit()["interrupted"] is False

    first = quiet_trainer(tiny_config(tmp_path / "resumed", processes=processes), data)
    real_step, steps = first.optimizer.step, []

    def step_then_ctrl_c():
        real_step()
        steps.append(1)
        if len(steps) == stop_at_step:
            signal.raise_signal(signal.SIGINT)     # the real Ctrl-C path

    first.optimizer.step = step_then_ctrl_c
    handler_before = signal.getsignal(signal.SIGINT)
    result = first.fit()
    assert result["interrupted"] and len(steps) == stop_at_step
    assert signal.getsignal(signal.SIGINT) is handler_before              # handler restored

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
# How the test is taken: the mirror (--tta), the EMA weights; the crops
# --------------------------------------------------------------------------
def _model_predictions(model, images):
    """Eval-mode logits of the main head, computed here without training.evaluate."""
    from tinygnet.tensor import Tensor, no_grad
    model.eval()
    with no_grad():
        logits = model(Tensor(images)).data
    model.train()
    return logits


def _reflect_shift(images, dy, dx):
    """The image moved by (dy, dx) pixels, the edge reflected into the gap (NumPy's words)."""
    padded = np.pad(images, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect")
    return np.ascontiguousarray(padded[:, :, 1 + dy:33 + dy, 1 + dx:33 + dx])


def test_each_tta_averages_the_logits_of_its_views(tmp_path):
    from tinygnet.demo import training
    # Weights whose predictions the views change, so that the checks below can tell the views
    # apart: the first seed from 4 that trains them (which one depends on the machine's
    # rounding: NumPy and BLAS pick their kernels by CPU).
    for seed in range(4, 12):
        trainer = quiet_trainer(tiny_config(tmp_path / str(seed), ema=0.0, seed=seed),
                                tiny_data(learnable=True))
        trainer.fit()
        images = np.concatenate([x for x, _ in trainer.test_loader])  # normalised, N x 3 x 32 x 32
        labels = trainer.test_loader.labels

        def logits(views):
            return sum(_model_predictions(trainer.model, np.ascontiguousarray(v)) for v in views)

        shifted = [_reflect_shift(images, -1, -1), _reflect_shift(images, 1, 1)]
        expected_logits = {
            "none": logits([images]),
            "mirror": logits([images, images[..., ::-1]]),
            "shifts": logits([images, images[..., ::-1]]
                             + [v for s in shifted for v in (s, s[..., ::-1])]),
        }
        predictions = [logits.argmax(1) for logits in expected_logits.values()]
        if (predictions[0] != predictions[1]).any() and (predictions[1] != predictions[2]).any():
            break
    else:
        pytest.fail("no seed of 4 to 11 trains weights whose predictions the views change")
    for tta, expected in expected_logits.items():
        accuracy, confusion = training.evaluate(trainer.model, trainer.test_loader, "cpu", 10,
                                                tta=tta)
        expected = np.bincount(labels * 10 + expected.argmax(1), minlength=100).reshape(10, 10)
        np.testing.assert_array_equal(confusion, expected, err_msg=tta)
        assert accuracy == np.trace(expected) / len(labels)


def test_the_final_test_takes_the_final_views_once_more(tmp_path, monkeypatch, capsys):
    from tinygnet.demo import training
    trainer = quiet_trainer(tiny_config(tmp_path, tta="mirror", final_tta="shifts"), tiny_data())
    calls = []
    real_evaluate = training.evaluate

    def spy(*args, tta, **kwargs):
        calls.append(tta)
        return real_evaluate(*args, tta=tta, **kwargs)

    monkeypatch.setattr(training, "evaluate", spy)
    accuracy, seconds = cifar._final_test(trainer)
    assert calls == ["shifts"] and accuracy == real_evaluate(
        trainer.model, trainer.test_loader, "cpu", 10, tta="shifts")[0]
    assert "testing the final weights on 6 views" in capsys.readouterr().out
    trainer.config.final_tta = "mirror"                   # the same views as every test: no more
    assert cifar._final_test(trainer) is None and calls == ["shifts"]


def test_tta_changes_only_the_test(tmp_path):
    data = tiny_data(learnable=True)
    # The first seed from 4 whose weights the mirror changes the test of (checked at the end,
    # so that the test can tell the two apart; which seed depends on the machine's rounding).
    for seed in range(4, 12):
        runs = {}
        for tta in ("none", "mirror"):    # one after the other: each seeds the global stream
            runs[tta] = quiet_trainer(tiny_config(tmp_path / f"{seed}-{tta}", tta=tta, ema=0.0,
                                                  seed=seed), data)
            runs[tta].fit()
        if not np.array_equal(runs["none"].confusion, runs["mirror"].confusion):
            break
    else:
        pytest.fail("no seed of 4 to 11 trains weights whose test the mirror changes")
    weights = [trainer.model.state_dict() for trainer in runs.values()]
    for name in weights[0]:
        np.testing.assert_array_equal(weights[0][name], weights[1][name], err_msg=name)
    train_columns = [[{k: v for k, v in row.items() if k.startswith(("loss", "train_acc", "lr"))}
                      for row in trainer.history] for trainer in runs.values()]
    assert train_columns[0] == train_columns[1]
    from tinygnet.demo import training
    for tta, trainer in runs.items():     # the same weights, tested two ways
        expected = training.evaluate(runs["none"].model, trainer.test_loader, "cpu", 10,
                                     tta=tta)
        assert (trainer.history[-1]["test_acc"], trainer.confusion.tolist()) == \
            (expected[0], expected[1].tolist())


def test_the_test_uses_the_ema_weights_and_training_goes_on_with_the_live_ones(tmp_path):
    from tinygnet.demo import training
    trainer = quiet_trainer(tiny_config(tmp_path, ema=0.5, tta="none", seed=4),
                            tiny_data(learnable=True))     # seed 4: the EMA changes predictions
    trainer.fit()
    live = {name: value.copy() for name, value in trainer.model.state_dict().items()}
    accuracy, confusion = trainer.evaluate()
    for name, value in trainer.model.state_dict().items():       # swapped back afterwards
        np.testing.assert_array_equal(value, live[name], err_msg=name)

    images = np.concatenate([x for x, _ in trainer.test_loader])
    labels = trainer.test_loader.labels
    for p, shadow in zip(trainer.ema.params, trainer.ema.shadow):
        assert not np.array_equal(p.data, shadow)
        p.data[...] = shadow                                       # the averaged weights, by hand
    for b, shadow in zip(trainer.ema.buffers, trainer.ema.shadow_buffers):
        b.data[...] = shadow
    averaged = _model_predictions(trainer.model, images).argmax(1)
    expected = np.bincount(labels * 10 + averaged, minlength=100).reshape(10, 10)
    np.testing.assert_array_equal(confusion, expected)
    trainer.model.load_state_dict(live)
    live_confusion = training.evaluate(trainer.model, trainer.test_loader, "cpu", 10)[1]
    assert not np.array_equal(live_confusion, expected)           # so the check above can tell


@pytest.mark.parametrize("padding", [0, 2, 4])
def test_crop_padding_bounds_the_shifts_of_the_training_crops(tmp_path, padding):
    config = cifar.resolve_config(parse("--device", "cpu", "--crop-padding", str(padding)))
    assert config.crop_padding == padding
    trainer = quiet_trainer(tiny_config(tmp_path, crop_padding=padding), tiny_data())
    assert trainer.train_loader.padding == padding
    loader = trainer.train_loader
    # Images of one bright pixel in the middle: its shift in a crop is the crop's offset.
    dot = np.zeros((64, 3, 32, 32), dtype=np.uint8)
    dot[..., 16, 16] = 255
    loader.images, loader.labels = dot, np.zeros(64, np.int64)
    shifts = set()
    for images, _ in loader:
        rows, cols = np.nonzero(images[:, 0] == images[:, 0].max(axis=(1, 2), keepdims=True))[1:]
        shifts |= set(np.abs(rows - 16)) | set(np.minimum(np.abs(cols - 16), np.abs(cols - 15)))
    assert max(shifts) == padding


@pytest.mark.parametrize("field, value, why, typed", [
    ("init", "lecun", "one of INITS", True),
    ("optimizer", "rmsprop", "one of sgd, adam, adamw", True),
    ("batch_size", 0, "a positive integer", True),
    ("batch_size", 16.5, "a positive integer", True),
    ("lr", -0.1, "a number > 0", True),
    ("lr", "0.1", "a number > 0", False),           # a string in the JSON
    ("label_smoothing", 1.0, "in [0, 1)", True),
    ("schedule", "foo", "one of onecycle, cosine, paper, constant", True),
    ("crop_padding", 99, "an integer from 0 to 16 (half an image)", True),
    ("tta", "flips", "one of none, mirror, shifts", True),
    ("width", 50.0, None, True),
    ("nesterov", "yes", "true or false", False),
    ("eval_batch_size", True, "a positive integer", False),
])
def test_a_saved_configuration_is_checked_by_the_command_line_s_rules(tmp_path, capsys, field,
                                                                      value, why, typed):
    path = tmp_path / "checkpoint.npz"
    saved = dataclasses.asdict(tiny_config(tmp_path))
    saved[field] = value
    save_checkpoint(path, {"kind": "tinygnet.demo.cifar", "config": saved})
    assert cifar.main(["--resume", str(path), "--device", "cpu"]) == 1
    why = (why or cifar.RULES[field].what).replace("INITS", ", ".join(INITS))
    assert capsys.readouterr().err == (
        f"python -m tinygnet.demo cifar: error: cannot resume: {str(path)!r}: its configuration "
        f"has {field} {value!r}, which must be {why}\n")
    if typed:                                       # the same value on the command line: refused
        flag = f"--{field.replace('_', '-')}"
        with pytest.raises(SystemExit):
            parse(flag, str(value))
        assert f"argument {flag}: " in capsys.readouterr().err


def test_every_setting_has_a_rule_and_the_defaults_keep_them(tmp_path):
    assert set(cifar.RULES) == {field.name for field in dataclasses.fields(Config)}
    for device in ("cpu", "cuda:0"):
        config = tiny_config(tmp_path, device=device)
        cifar.check_saved_config(dataclasses.asdict(config), "c.npz")
    for defaults in (cifar.CPU_DEFAULTS, cifar.GPU_DEFAULTS):
        cifar.check_saved_config(dataclasses.asdict(tiny_config(tmp_path, **defaults)), "c.npz")


def test_runs_saved_before_tta_crop_padding_and_processes_resume_as_they_ran(tmp_path):
    saved = dataclasses.asdict(tiny_config(tmp_path))
    del saved["tta"], saved["final_tta"], saved["crop_padding"], saved["processes"]
    config = cifar.config_for_resume(parse("--device", "cpu"), saved, str(tmp_path / "c.npz"))
    assert (config.tta, config.final_tta, config.crop_padding, config.processes) == \
        ("none", "none", 4, 1)


def test_two_processes_on_a_gpu_are_a_usage_error_before_the_gpu_is_touched(tmp_path):
    with pytest.raises(UsageError, match=r"^--processes 2 trains on the CPU only; on cuda:0 "
                                         r"use --processes 1$"):
        quiet_trainer(tiny_config(tmp_path, device="cuda:0", processes=2), tiny_data())


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


@pytest.mark.parametrize("optimizer", ["sgd", "adam", "adamw"])
def test_weight_decay_reaches_conv_and_linear_weights_only(tmp_path, optimizer):
    """One step on zero gradients moves only what weight decay acts on: every conv and linear
    weight shrinks, and biases and batch-norm scales and shifts stay exactly as they were."""
    from tinygnet.tensor import Tensor
    trainer = quiet_trainer(tiny_config(tmp_path, optimizer=optimizer, weight_decay=0.1,
                                        lr=0.01), tiny_data())
    params = dict(trainer.model.named_parameters())
    before = {name: p.numpy().copy() for name, p in params.items()}
    for p in params.values():
        p.grad = Tensor(np.zeros(p.shape, dtype=p.dtype))
    trainer.optimizer.step()
    decayed = [name for name, p in params.items() if p.ndim > 1]
    kept = [name for name, p in params.items() if p.ndim <= 1]
    assert any(".bn." in name for name in kept) and any(name.endswith(".bias") for name in kept)
    for name in decayed:
        assert np.abs(params[name].numpy()).sum() < np.abs(before[name]).sum(), name
    for name in kept:
        np.testing.assert_array_equal(params[name].numpy(), before[name], err_msg=name)


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
                                  ["--dropout", "1"], ["--stem-stride", "3"], ["--momentum", "5"],
                                  ["--momentum", "1"], ["--momentum", "-0.1"], ["--init", "lecun"],
                                  ["--crop-padding", "-1"], ["--crop-padding", "17"],
                                  ["--tta", "all"], ["--final-tta", "6"]])
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
    # Flags as they are spelled: there is no "--aux False".
    assert cifar.main(["--resume", str(path), "--no-aux", "--no-batchnorm", "--device", "cpu"]) == 2
    assert capsys.readouterr().err == (
        "python -m tinygnet.demo cifar: error: --resume continues the saved run with its own "
        "configuration; these options differ from it: --no-batchnorm (saved: batchnorm on), "
        "--no-aux (saved: aux on)\n")


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
    # Every accuracy printed says which views of the test images it averaged.
    assert "testing the main head on the image alone, the final weights also on 6 views" \
           in printed
    assert "  test " in printed and ", on the image alone;" in printed
    final = re.search(r"final weights on 6 views of each image .*: test accuracy ([0-9.]+)%", printed)
    trainer_acc = _final_views_accuracy(out)
    assert final and float(final.group(1)) == pytest.approx(100 * trainer_acc, abs=0.005)
    for name in CLASSES:                              # the per-class table
        assert f"  {name} " in printed

    assert sorted(os.listdir(out)) == ["best.npz", "checkpoint.npz", "config.json", "curves.png",
                                       "metrics.csv", "per_class.png", "results.json"]
    # The headline number is kept in the run, with the views it averaged.
    results = json.loads((out / "results.json").read_text())
    assert results["final_test"] == {"tta": "shifts", "views": [list(v) for v in
                                                                cifar.TTA_VIEWS["shifts"]],
                                     "accuracy": trainer_acc,
                                     "seconds": results["final_test"]["seconds"]}
    assert results["each_epoch"]["tta"] == "none" and results["epochs"] == 1
    assert results["test_images"] == 64                 # all the fake data's test images
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert len(rows) == 1 and rows[0]["epoch"] == "1"
    assert {"loss", "loss_main", "loss_aux1", "loss_aux2", "train_acc", "test_acc"} <= set(rows[0])
    record = json.loads((out / "config.json").read_text())
    assert record["config"]["quick"] and record["config"]["width"] == cifar.QUICK_OVERRIDES["width"]
    assert record["demo"] == "cifar"                  # the folder's demo (common.folder_demo)
    assert record["config"]["train_images"] == cifar.QUICK_OVERRIDES["train_images"]
    for png in ("curves.png", "per_class.png"):
        assert (out / png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"
    state = load_checkpoint(out / "checkpoint.npz")
    assert state["epoch"] == 1 and state["history"][0]["test_acc"] == float(rows[0]["test_acc"])

    # Resuming a finished run trains nothing more, says so, and reports again.
    assert cifar.main(["--resume", str(out / "checkpoint.npz"), "--device", "cpu",
                       "--data", fake_cifar, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert (f"resuming from {out / 'checkpoint.npz'}: the run is already finished (1 of 1 epoch), "
            f"nothing to train; to train longer, start a new run with a larger --epochs") in printed
    assert "final test accuracy" in printed and "epoch 2" not in printed


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_in_the_final_test_says_training_is_saved_and_resume_tests_again(
        fake_cifar, fast_plots, tmp_path, monkeypatch, capsys, signum):
    from tinygnet.demo import training
    out, real_evaluate = tmp_path / "run", training.evaluate

    def stopped_in_the_final_test(*args, tta, **kwargs):
        if tta == "none":
            signal.raise_signal(signum)
        return real_evaluate(*args, tta=tta, **kwargs)

    # The image alone is not a continuation of the mirror's views: a test of its own, after
    # training (the 6 views after the mirror are tested with the last epoch, the next test).
    monkeypatch.setattr(training, "evaluate", stopped_in_the_final_test)
    argv = SMALL + ["--data", fake_cifar, "--out", str(out), "--tta", "mirror", "--final-tta", "none"]
    assert cifar.main(argv) == 128 + signum
    checkpoint = out / "checkpoint.npz"
    assert capsys.readouterr().err == (
        f"\nstopped during the final test. Training finished and is saved in {checkpoint}; run "
        f"the final test again with:\n  python -m tinygnet.demo cifar --resume {checkpoint}\n")
    assert not (out / "results.json").exists()

    monkeypatch.setattr(training, "evaluate", real_evaluate)
    assert cifar.main(["--resume", str(checkpoint), "--data", fake_cifar, "--device", "cpu",
                       "--no-progress"]) == 0
    results = json.loads((out / "results.json").read_text())
    assert results["final_test"]["tta"] == "none" and results["each_epoch"]["tta"] == "mirror"
    assert f"test accuracy {100 * results['final_test']['accuracy']:.2f}%" in capsys.readouterr().out


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_a_stop_in_the_last_epochs_test_finishes_the_run(fake_cifar, fast_plots, tmp_path,
                                                         monkeypatch, capsys, signum):
    """The last epoch's test runs the final 6 views too; a stop during it comes when every
    step is trained: the run ends as it would have, results.json and all, nothing lost."""
    from tinygnet.demo import training
    out, real_evaluate_heads, stops = tmp_path / "run", training.evaluate_heads, []

    def stopped_in_the_last_test(*args, final_tta=None, **kwargs):
        if final_tta is not None:
            stops.append(final_tta)
            signal.raise_signal(signum)
        return real_evaluate_heads(*args, final_tta=final_tta, **kwargs)

    monkeypatch.setattr(training, "evaluate_heads", stopped_in_the_last_test)
    argv = SMALL + ["--data", fake_cifar, "--out", str(out), "--tta", "mirror", "--final-tta", "shifts"]
    assert cifar.main(argv) == 0 and stops == ["shifts"]
    results = json.loads((out / "results.json").read_text())
    assert results["final_test"]["accuracy"] == _final_views_accuracy(out)
    assert "final weights on 6 views" in capsys.readouterr().out


def _final_views_accuracy(out) -> float:
    """The 6-view accuracy of the weights saved in ``out/checkpoint.npz``, computed here."""
    from tinygnet.demo import training
    state = load_checkpoint(out / "checkpoint.npz")
    config = Config(**state["config"])
    train, test = cifar.load_cifar10(config)
    trainer = quiet_trainer(config, (train, test))
    trainer.load_state_dict(state)
    return training.evaluate(trainer.model, trainer.test_loader, "cpu", 10, tta="shifts")[0]


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
    nothing = _demo()
    assert (nothing.returncode, nothing.stdout) == (2, "")
    assert nothing.stderr.startswith("error: a subcommand is required\n\nusage: ")


# --------------------------------------------------------------------------
# A diverging run stops, and saves nothing of it
# --------------------------------------------------------------------------
SMALL = ["--device", "cpu", "--epochs", "1", "--batch-size", "16", "--width", "0.0625",
         "--train-images", "32", "--test-images", "16", "--schedule", "constant",
         "--no-progress", "--no-download"]


def _outputs(out):
    """Every file of a run folder and its bytes."""
    return {name: (out / name).read_bytes() for name in sorted(os.listdir(out))}


@pytest.mark.parametrize("poisoned_step, caught_by", [
    (4, "the loss is nan (main nan, aux1 nan, aux2 nan) at epoch 2, step 2 of 3"),
    (6, "the weights hold NaN or infinite values (conv1.weight first) at epoch 2, step 3"),
])
def test_divergence_stops_the_run_and_keeps_the_last_good_files(tmp_path, poisoned_step, caught_by):
    """A NaN planted in the weights after a step: the next loss is NaN (step 4 of 6), or,
    after the last step of the run (6), only the weights show it. Either way the run stops
    and checkpoint.npz, best.npz and metrics.csv stay as epoch 1 left them."""
    trainer = quiet_trainer(tiny_config(tmp_path / "run", ema=0.0), tiny_data())
    real_step, steps = trainer.optimizer.step, []

    def step_then_poison():
        real_step()
        steps.append(1)
        if len(steps) == poisoned_step:
            trainer.model.conv1.weight.data[0, 0, 0, 0] = np.nan

    trainer.optimizer.step = step_then_poison
    trainer.config.epochs = 1                         # epoch 1 (of the 2 the schedule expects)
    trainer.fit()
    after_epoch_1 = _outputs(tmp_path / "run")
    assert {"checkpoint.npz", "best.npz", "metrics.csv"} <= set(after_epoch_1)
    trainer.config.epochs = 2
    with pytest.raises(TrainingDiverged) as caught:
        trainer.fit()
    assert str(caught.value) == caught_by
    assert _outputs(tmp_path / "run") == after_epoch_1


def test_a_diverging_run_says_what_happened_and_exits_1(fake_cifar, fast_plots, tmp_path, capsys,
                                                        monkeypatch):
    out = tmp_path / "run"
    # Run as under `taskset -c 0`: the two processes (the default) are told to take turns.
    monkeypatch.setattr(cifar.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    status = cifar.main(SMALL + ["--lr", "1e20", "--data", fake_cifar, "--out", str(out)])
    captured = capsys.readouterr()
    err = captured.err
    assert captured.out.startswith("tinygnet CIFAR-10 demo on CPU (1 core): ")
    assert ("\nnote: --processes 2 starts 2 worker processes, one for each core, but this "
            "process may run on 1 core: the workers will take turns\n") in captured.out
    assert status == 1
    assert err.startswith("python -m tinygnet.demo cifar: error: the run diverged: the loss is ")
    assert "at epoch 1, step 2 of 2" in err and "try a smaller --lr (this run: 1e+20)" in err
    assert "no checkpoint was written" in err and err.count("\n") == 1
    assert "Warning" not in err and "Traceback" not in err
    assert os.listdir(out) == ["config.json"]


def test_epoch_line_shows_the_aux_losses_even_when_they_are_nan(tmp_path):
    trainer = quiet_trainer(tiny_config(tmp_path), tiny_data())
    row = {"epoch": 1, "loss": 2.0, "loss_main": 1.5, "loss_aux1": math.nan, "loss_aux2": 1.0,
           "train_acc": 0.1, "test_acc": 0.1, "lr": 0.1, "train_seconds": 1.0,
           "test_seconds": 1.0, "images_per_second": 10.0}
    assert "aux1 nan, aux2 1.0000" in trainer._epoch_line(row, best=0.1)
    trainer.config.aux = False
    assert "aux1" not in trainer._epoch_line(row, best=0.1)


# --------------------------------------------------------------------------
# An existing run is never overwritten without --overwrite
# --------------------------------------------------------------------------
def test_an_existing_run_is_refused_and_kept(fake_cifar, fast_plots, tmp_path, capsys):
    out = tmp_path / "run"
    argv = SMALL + ["--data", fake_cifar, "--out", str(out)]
    assert cifar.main(argv) == 0
    before = _outputs(out)
    capsys.readouterr()

    assert cifar.main(argv + ["--lr", "0.01"]) == 2
    err = capsys.readouterr().err
    assert err == (f"python -m tinygnet.demo cifar: error: --out {out} already holds a run "
                   f"(config.json, metrics.csv, checkpoint.npz, best.npz, curves.png, "
                   f"per_class.png, results.json): continue it with --resume {out / 'checkpoint.npz'}, start "
                   f"it over with --overwrite (which replaces those files), or choose another "
                   f"--out\n")
    # Resuming from best.npz would write over the newer checkpoint.npz beside it: refused too.
    assert cifar.main(["--resume", str(out / "best.npz"), "--data", fake_cifar]) == 2
    assert "already holds a run" in capsys.readouterr().err
    assert cifar.main(["--resume", str(out / "checkpoint.npz"), "--overwrite"]) == 2
    assert "--overwrite would delete the run that --resume continues" in capsys.readouterr().err
    assert _outputs(out) == before

    # --overwrite starts over: the old run's files go before training, so a new run that
    # stops early (here: diverges) never leaves a mix of two runs.
    assert cifar.main(argv + ["--overwrite", "--lr", "1e20"]) == 1
    assert os.listdir(out) == ["config.json"]
    assert json.loads((out / "config.json").read_text())["config"]["lr"] == 1e20


def test_a_resume_into_a_new_out_says_what_it_copied_there(fake_cifar, fast_plots, tmp_path,
                                                            capsys):
    first, second = tmp_path / "first", tmp_path / "second"
    assert cifar.main(SMALL + ["--data", fake_cifar, "--out", str(first)]) == 0
    capsys.readouterr()
    assert cifar.main(["--resume", str(first / "checkpoint.npz"), "--out", str(second),
                       "--data", fake_cifar, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert (f"written from the checkpoint into {second}: best.npz, metrics.csv, curves.png, "
            f"per_class.png\n") in printed
    assert "stopped between two writes" not in printed


def test_default_output_folders_never_collide(fake_cifar, fast_plots, tmp_path, monkeypatch, capsys):
    monkeypatch.chdir(tmp_path)
    monkeypatch.setattr(cifar, "default_out_folder", lambda kind: os.path.join("runs", "same-second"))
    for _ in range(2):
        assert cifar.main(SMALL + ["--data", fake_cifar]) == 0
    assert sorted(os.listdir(tmp_path / "runs")) == ["same-second", "same-second-2"]
    assert "writing to runs/same-second-2" in capsys.readouterr().out


# --------------------------------------------------------------------------
# File-system mistakes: one sentence each, before any data is loaded
# --------------------------------------------------------------------------
def test_data_folder_from_the_environment_that_is_a_file(tmp_path, monkeypatch, capsys):
    (tmp_path / "cifar.tgz").write_bytes(b"x")
    monkeypatch.setenv("TINYGNET_DATA", str(tmp_path / "cifar.tgz"))
    assert cifar.main(["--out", str(tmp_path / "run"), "--device", "cpu"]) == 1
    assert capsys.readouterr().err == (
        f"python -m tinygnet.demo cifar: error: the data folder {tmp_path / 'cifar.tgz'} (from "
        f"$TINYGNET_DATA) is a file, not a folder; point tinygnet at a folder with --data DIR or "
        f"$TINYGNET_DATA\n")
    assert not (tmp_path / "run").exists()


def _unprivileged():
    """A command prefix under which folder permissions hold: root ignores them, so as root
    the child runs without the capabilities that let it (setpriv, from util-linux)."""
    if os.geteuid() != 0:
        return []
    prefix = ["setpriv", "--bounding-set=-dac_override,-dac_read_search"]
    try:
        subprocess.run(prefix + ["true"], check=True, capture_output=True)
    except (OSError, subprocess.CalledProcessError):
        pytest.skip("running as root, and setpriv cannot drop the capability to ignore permissions")
    return prefix


@pytest.mark.parametrize("case", ["out", "data-to-unpack", "data-to-download"])
def test_read_only_folders_get_one_line_errors(tmp_path, case):
    locked = tmp_path / "locked"
    locked.mkdir()
    if case == "data-to-unpack":
        (locked / "cifar-10-python.tar.gz").write_bytes(b"never read: it cannot be unpacked here")
    locked.chmod(0o555)
    try:
        data, out = ((tmp_path / "data", locked / "run") if case == "out" else
                     (locked, tmp_path / "run"))
        argv = ["--data", str(data), "--out", str(out), "--device", "cpu", "--no-progress"]
        result = subprocess.run(_unprivileged() + [sys.executable, "-m", "tinygnet.demo", "cifar",
                                                   *argv], cwd=REPO, capture_output=True,
                                text=True, timeout=60)
    finally:
        locked.chmod(0o755)
    expected = {
        "out": (2, f"--out {out}: cannot create it in {locked} (Permission denied); choose a "
                   f"writable folder with --out DIR"),
        "data-to-unpack": (1, f"cannot unpack {locked}/cifar-10-python.tar.gz in {locked}: "
                              f"Permission denied. Make the folder writable, or unpack the archive "
                              f"into one that is (tar -xzf cifar-10-python.tar.gz -C DIR) and use "
                              f"--data DIR"),
        "data-to-download": (1, f"CIFAR-10 not found in {locked}, and it cannot be downloaded "
                                f"there: Permission denied. Choose a folder you can write with "
                                f"--data DIR or $TINYGNET_DATA"),
    }[case]
    assert (result.returncode, result.stderr) == (
        expected[0], f"python -m tinygnet.demo cifar: error: {expected[1]}\n")
    assert not out.exists()


# --------------------------------------------------------------------------
# Checkpoints that cannot be resumed
# --------------------------------------------------------------------------
def test_resume_from_a_random_file_gives_no_hint_to_unpickle_it(tmp_path, capsys):
    path = tmp_path / "notes.npz"
    path.write_bytes(bytes(range(256)) * 4)
    assert cifar.main(["--resume", str(path)]) == 1
    err = capsys.readouterr().err
    assert err == (f"python -m tinygnet.demo cifar: error: cannot resume: {str(path)!r} is not a "
                   f"tinygnet checkpoint: it is not an .npz archive (another kind of file, or a "
                   f"corrupt one)\n")


def test_resume_from_a_checkpoint_of_other_shapes_is_one_short_line(fake_cifar, tmp_path, capsys):
    config = tiny_config(tmp_path / "run", data=fake_cifar)
    state = quiet_trainer(config, tiny_data()).state_dict()
    state["model"] = {name: np.zeros((1,) + value.shape, value.dtype)
                      for name, value in state["model"].items()}        # every shape wrong
    save_checkpoint(tmp_path / "run" / "checkpoint.npz", state)
    assert cifar.main(["--resume", str(tmp_path / "run" / "checkpoint.npz")]) == 1
    err = capsys.readouterr().err
    assert "the checkpoint does not match this run" in err and "wrong shape for conv1.weight" in err
    assert "more)" in err and len(err) < 700 and err.count("\n") == 1


def test_the_header_counts_the_cores_the_run_may_use(monkeypatch):
    """Under `taskset -c 0` a run has one core (and one thread), whatever the machine has."""
    monkeypatch.setattr(cifar.os, "sched_getaffinity", lambda pid: {0}, raising=False)
    assert cifar._device_name("cpu") == "CPU (1 core)"
    monkeypatch.setattr(cifar.os, "sched_getaffinity", lambda pid: {0, 3, 5}, raising=False)
    assert cifar._device_name("cpu") == "CPU (3 cores)"
    assert more_workers_than_cores(3, "--processes") == ""       # a core each
    assert more_workers_than_cores(4, "--processes") == (
        "note: --processes 4 starts 4 worker processes, one for each core, but this process may "
        "run on 3 cores: the workers will take turns")
