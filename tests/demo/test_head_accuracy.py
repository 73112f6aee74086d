"""The CIFAR demo's test of every head: each aux head's accuracy on the test images alone,
each epoch, in metrics.csv, the epoch line and the plot; old checkpoints still resume."""
import csv
import importlib.util
import math
import os

import numpy as np
import pytest

from tinygnet.checkpoint import load_checkpoint, save_checkpoint
from tinygnet.data import DataLoader
from tinygnet.demo.cifar import ArrayDataset
from tinygnet.demo import cifar, plots, training
from tinygnet.models import GoogLeNetOutputs
from tinygnet.tensor import Tensor, no_grad

_spec = importlib.util.spec_from_file_location(
    "demo_cifar_tests", os.path.join(os.path.dirname(os.path.abspath(__file__)),
                                     "test_demo_cifar.py"))
_tests = importlib.util.module_from_spec(_spec)
_spec.loader.exec_module(_tests)
tiny_config, tiny_data, quiet_trainer = _tests.tiny_config, _tests.tiny_data, _tests.quiet_trainer


@pytest.fixture
def fake_cifar(make_fake_cifar):
    return make_fake_cifar(64)


def randomise_running_statistics(model, seed=0):
    """Batch-norm running statistics unlike a batch's: eval mode must show in the logits."""
    rng = np.random.default_rng(seed)
    for name, buffer in model.named_buffers():
        values = rng.uniform(0.5, 2.0, buffer.shape) if name.endswith("var") else \
            rng.standard_normal(buffer.shape) * 0.3
        buffer.data[...] = values.astype(np.float32)


def test_evaluate_reports_each_aux_head_on_the_image_alone_in_one_forward(tmp_path):
    """With --tta mirror the main head averages two views; each aux head is tested on the
    image alone, in eval mode: one forward pass per view, the first giving all three heads."""
    trainer = quiet_trainer(tiny_config(tmp_path, tta="mirror", ema=0.0, batchnorm=True),
                            tiny_data(seed=1))
    model = trainer.model
    randomise_running_statistics(model)
    images = np.concatenate([x for x, _ in trainer.test_loader])
    labels = trainer.test_loader.labels
    model.eval()
    with no_grad():
        expected = model.heads(Tensor(images))
    model.train()
    stem_calls = []
    model.conv1.register_forward_hook(lambda *args: stem_calls.append(1))
    result = training.evaluate_heads(model, trainer.test_loader, "cpu", 10, tta="mirror")
    batches = len(range(0, len(labels), trainer.config.eval_batch_size))
    assert len(stem_calls) == 2 * batches and model.training        # two views, train mode again
    for head, accuracy in (("aux1", result.aux1_accuracy), ("aux2", result.aux2_accuracy)):
        predicted = getattr(expected, head).data.argmax(axis=1)
        assert accuracy == np.mean(predicted == labels), head
    assert result.aux1_accuracy != result.aux2_accuracy               # so the check tells them apart
    aux_calls = []
    model.aux1.register_forward_hook(lambda *args: aux_calls.append(1))
    accuracy, confusion = training.evaluate(model, trainer.test_loader, "cpu", 10, tta="mirror")
    assert accuracy == result.accuracy and (confusion == result.confusion).all()
    assert aux_calls == []                            # the main head's test runs no aux head
    for tta in training.TTA_VIEWS:                    # every --tta: the aux heads see the image
        again = training.evaluate_heads(model, trainer.test_loader, "cpu", 10, tta=tta)
        assert (again.aux1_accuracy, again.aux2_accuracy) == \
            (result.aux1_accuracy, result.aux2_accuracy), tta


def test_a_model_without_aux_heads_has_nan_aux_accuracies(tmp_path):
    trainer = quiet_trainer(tiny_config(tmp_path, aux=False), tiny_data())
    result = trainer.evaluate_heads()
    assert math.isnan(result.aux1_accuracy) and math.isnan(result.aux2_accuracy)
    assert 0 <= result.accuracy <= 1


def test_each_epoch_records_and_prints_the_aux_accuracies(tmp_path):
    lines = []
    config = tiny_config(tmp_path, ema=0.0)
    trainer = _tests.Trainer(config, *tiny_data(learnable=True), progress=False, plots=False,
                             log=lines.append)
    trainer.fit()
    row = trainer.history[-1]
    result = trainer.evaluate_heads()
    assert (row["test_acc"], row["test_acc_aux1"], row["test_acc_aux2"]) == \
        (result.accuracy, result.aux1_accuracy, result.aux2_accuracy)
    epoch_line = [line for line in lines if line.startswith("epoch")][-1]
    assert f"aux1 {100 * row['test_acc_aux1']:5.2f}%  aux2 {100 * row['test_acc_aux2']:5.2f}%" \
        in epoch_line
    with open(tmp_path / "metrics.csv") as f:
        written = list(csv.DictReader(f))[-1]
    assert float(written["test_acc_aux1"]) == pytest.approx(row["test_acc_aux1"], abs=1e-6)
    assert float(written["test_acc_aux2"]) == pytest.approx(row["test_acc_aux2"], abs=1e-6)


def test_a_run_from_before_the_aux_accuracies_resumes(fake_cifar, fast_plots, tmp_path, capsys):
    """A checkpoint whose history lacks test_acc_aux1/2 (written before they were measured)
    resumes; metrics.csv gets "nan" for its epochs, numbers for the new ones."""
    out = tmp_path / "run"
    assert cifar.main(_tests.SMALL + ["--data", fake_cifar, "--out", str(out)]) == 0
    state = load_checkpoint(out / "checkpoint.npz")
    for row in state["history"]:
        del row["test_acc_aux1"], row["test_acc_aux2"]
    state["config"]["epochs"] = 2                   # as if stopped after epoch 1 of 2
    save_checkpoint(out / "checkpoint.npz", state)
    capsys.readouterr()
    assert cifar.main(["--resume", str(out / "checkpoint.npz"), "--device", "cpu",
                       "--data", fake_cifar, "--no-progress"]) == 0
    printed = capsys.readouterr().out
    assert "the aux heads alone, final epoch" in printed
    with open(out / "metrics.csv") as f:
        rows = list(csv.DictReader(f))
    assert [row["epoch"] for row in rows] == ["1", "2"]
    assert rows[0]["test_acc_aux1"] == rows[0]["test_acc_aux2"] == "nan"
    assert 0 <= float(rows[1]["test_acc_aux1"]) <= 1 and 0 <= float(rows[1]["test_acc_aux2"]) <= 1


def test_the_accuracy_plot_draws_the_aux_heads_where_measured(tmp_path, monkeypatch):
    drawn = []
    real_new_figure = plots.new_figure

    def spying_figure(*args):
        figure = real_new_figure(*args)
        drawn.append(figure)
        return figure

    monkeypatch.setattr(plots, "new_figure", spying_figure)
    base = {"loss": 2.0, "loss_main": 1.5, "loss_aux1": 1.0, "loss_aux2": 1.0, "train_acc": 0.3,
            "test_acc": 0.4}
    history = [dict(base, epoch=1),                                   # an old row: no aux columns
               dict(base, epoch=2, test_acc_aux1=0.25, test_acc_aux2=0.35)]
    plots.plot_curves(history, tmp_path / "curves.png")
    accuracies = drawn[0].axes[1]
    labels = [line.get_label() for line in accuracies.get_lines()]
    assert any("aux1" in label for label in labels) and any("aux2" in label for label in labels)
    aux1 = next(line for line in accuracies.get_lines() if "aux1" in line.get_label())
    np.testing.assert_array_equal(aux1.get_ydata(), [np.nan, 25.0])
    assert (tmp_path / "curves.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


class ViewSensitiveModel:
    """A stand-in for GoogLeNet in eval mode whose logits are a fixed random linear map of
    the pixels, so that every view of an image gets logits of its own and the views'
    accuracies differ: a mix-up of views shows in the numbers."""

    def __init__(self, seed=0):
        self.weight = np.random.default_rng(seed).standard_normal((3 * 32 * 32, 10))
        self.training, self.forwards = True, 0

    def eval(self):
        self.training = False

    def train(self):
        self.training = True

    def __call__(self, x):
        self.forwards += 1
        return Tensor(x.data.reshape(len(x.data), -1) @ self.weight)

    def heads(self, x):
        logits = self(x)
        return GoogLeNetOutputs(logits, logits, logits)


@pytest.mark.parametrize("tta, final_tta", [("none", "mirror"), ("none", "shifts"),
                                            ("mirror", "shifts")])
def test_one_pass_gives_the_epoch_test_and_the_final_views(tta, final_tta):
    """The last epoch's test goes on through --final-tta's extra views: its accuracy is
    --tta's, its final_accuracy exactly what a separate test on --final-tta's views gives,
    and no view runs twice."""
    model = ViewSensitiveModel()
    images = np.random.default_rng(1).integers(0, 256, (96, 3, 32, 32), dtype=np.uint8)
    unlabelled = DataLoader(ArrayDataset(images, np.zeros(96, np.int64), _tests.CLASSES), 96,
                            shuffle=False)
    normalised = next(iter(unlabelled))[0]
    # Labels that the sum of the mirror's two views gets right: --tta mirror scores 100%,
    # the image alone and the 6 views less.
    logits = sum(model(Tensor(view)).data for view in training._views(normalised, "mirror"))
    loader = DataLoader(ArrayDataset(images, logits.argmax(axis=1), _tests.CLASSES), 32,
                        shuffle=False)
    accuracies = {views: training.evaluate(model, loader, "cpu", 10, tta=views)[0]
                  for views in training.TTA_VIEWS}
    assert len(set(accuracies.values())) == 3                  # the views tell apart
    model.forwards = 0
    both = training.evaluate_heads(model, loader, "cpu", 10, tta=tta, final_tta=final_tta)
    assert model.forwards == len(training.TTA_VIEWS[final_tta]) * 3 and model.training
    assert (both.accuracy, both.final_accuracy) == (accuracies[tta], accuracies[final_tta])
    alone = training.evaluate_heads(model, loader, "cpu", 10, tta=tta)
    assert alone[:1] + alone[2:4] == both[:1] + both[2:4]
    assert (alone.confusion == both.confusion).all() and math.isnan(alone.final_accuracy)


@pytest.mark.parametrize("tta, final_tta", [("mirror", "none"), ("shifts", "mirror"),
                                            ("mirror", "mirror")])
def test_final_views_must_begin_with_the_epoch_views_and_add_more(tmp_path, tta, final_tta):
    assert not training.continues(final_tta, tta)
    trainer = quiet_trainer(tiny_config(tmp_path), tiny_data())
    with pytest.raises(ValueError, match="does not begin with"):
        training.evaluate_heads(trainer.model, trainer.test_loader, "cpu", 10, tta=tta,
                                final_tta=final_tta)


def test_each_view_list_continues_the_shorter_ones():
    """none -> mirror -> shifts: the defaults' final test can go on from each epoch's."""
    assert training.continues("mirror", "none") and training.continues("shifts", "none")
    assert training.continues("shifts", "mirror")


def test_the_final_test_is_not_run_twice(tmp_path, monkeypatch):
    """After the last epoch the final weights' 6-view accuracy comes from the last epoch's
    test: cifar's final test reuses it instead of testing again, and it is the same number."""
    config = tiny_config(tmp_path, ema=0.0, tta="mirror", final_tta="shifts")
    trainer = quiet_trainer(config, tiny_data(learnable=True))
    trainer.fit()
    assert trainer.final_test is not None
    accuracy, seconds = trainer.final_test
    assert accuracy == trainer.evaluate(views="shifts")[0] and seconds > 0
    monkeypatch.setattr(trainer, "evaluate", lambda *a, **k: pytest.fail("tested again"))
    assert cifar._final_test(trainer) == (accuracy, seconds)
    trainer.final_test = None                    # a resumed finished run: the test runs again
    monkeypatch.undo()
    assert cifar._final_test(trainer)[0] == accuracy
