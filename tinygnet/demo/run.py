"""One CIFAR-10 training run and its bookkeeping: what ``python -m tinygnet.demo cifar`` runs.

``Trainer`` owns the model, optimiser, schedule, data loaders and EMA of a
run and drives the loop of ``training.py`` epoch after epoch. Around that
loop it keeps the promises a run makes:

- a checkpoint resumes exactly (``state_dict`` / ``load_state_dict`` hold
  everything the run depends on, random streams included);
- nothing saved is lost at a kill: each file is written atomically, and at
  an epoch's end ``checkpoint.npz`` goes first, the files derived from it
  after (``end_epoch``); ``repair_outputs`` brings them up to date on resume;
- Ctrl-C or SIGTERM stops between two steps with a checkpoint
  (``StopRequested``);
- a loss or weight that is NaN or infinite stops the run before anything of
  it is saved (``check_losses``, ``check_weights``).

The command line and the configuration live in ``cifar.py``.
"""
from __future__ import annotations

import csv
import dataclasses
import io
import json
import math
import os
import shutil
import signal
import time
from contextlib import contextmanager, nullcontext

import numpy as np
from tqdm.auto import tqdm

from .. import backend
from ..checkpoint import CheckpointError, atomic_write, load_checkpoint, save_checkpoint
from ..data import DataLoader
from ..models import GoogLeNet
from ..optim import EMA, SGD, Adam, AdamW, CosineAnnealingLR, OneCycleLR, StepLR
from . import training
from .common import Interrupted, TrainingDiverged, UsageError, describe_loss, write_text
from .parallel import DataParallel
from .training import RunningMetrics

__all__ = ["Trainer", "StopRequested", "make_optimizer", "make_schedule", "OUTPUTS", "PLOTS",
           "CHECKPOINT_KIND"]

CHECKPOINT_KIND = "tinygnet.demo.cifar"
PLOTS = ("curves.png", "per_class.png")
OUTPUTS = ("config.json", "metrics.csv", "checkpoint.npz", "best.npz") + PLOTS + ("results.json",)


class StopRequested:
    """Turns the first Ctrl-C or SIGTERM into a flag the loop checks between steps.

    SIGTERM is what ``timeout``, batch schedulers and ``docker stop`` send:
    it is treated as Ctrl-C is. Stopping between steps keeps the state
    consistent (never half an optimiser update), so the checkpoint saved then
    resumes exactly. A second signal raises ``Interrupted`` at once.
    """

    SIGNALS = (signal.SIGINT, signal.SIGTERM)

    def __init__(self):
        self.signum = None        # the signal that asked to stop, if any

    @property
    def requested(self) -> bool:
        return self.signum is not None

    @contextmanager
    def installed(self, log):
        def handler(signum, frame):
            if self.requested:
                raise Interrupted(signum)
            self.signum = signum
            name, again = (("Ctrl-C", "press Ctrl-C again") if signum == signal.SIGINT else
                           (signal.Signals(signum).name, f"send {signal.Signals(signum).name} again"))
            log(f"\n{name}: stopping after this step and saving a checkpoint ({again} to stop at once)")

        previous = {}
        try:
            for signum in self.SIGNALS:
                previous[signum] = signal.signal(signum, handler)
        except ValueError:            # not the main thread: signals are not ours to handle
            yield self
            return
        try:
            yield self
        finally:
            for signum, old in previous.items():
                signal.signal(signum, old)


class Trainer:
    """One training run: model, optimiser, schedule, data and bookkeeping.

    ``Trainer(config, train, test).fit()`` trains for ``config.epochs``
    epochs, writing every output into ``config.out``. ``config`` is a
    ``cifar.Config``; ``train`` and ``test`` hold ``images`` (uint8
    N x 3 x 32 x 32), ``labels`` (int64 N) and ``classes``.
    ``state_dict()`` / ``load_state_dict()`` are what the checkpoints hold.
    With ``config.processes`` > 1, ``fit()`` starts that many worker processes
    (``parallel.DataParallel``) that train each batch's parts and test the
    test images' parts, and ends them when it returns.

    What a kill at any moment leaves: every file is written atomically, and
    at the end of an epoch ``checkpoint.npz`` is written first. It is the
    record of the run; ``best.npz``, ``metrics.csv`` and the plots are
    derived from it, written after it, so they are never ahead of it: a kill
    between the writes leaves them one epoch behind, and ``repair_outputs``
    (run on ``--resume``) brings them up to date.
    """

    def __init__(self, config, train, test, progress=True, plots=True, log=print):
        self.config, self.progress, self.plots, self.log = config, progress, plots, log
        self.classes = list(train.classes)
        self.xp = backend.cupy_or_none() if config.device != "cpu" else np
        # Order matters for reproducibility: the seed, then the train loader
        # (which draws its own seed from the host stream), then the weights.
        backend.manual_seed(config.seed)
        self.train_loader = DataLoader(train, config.batch_size, shuffle=True, augment=True,
                                       padding=config.crop_padding)
        self.test_loader = DataLoader(test, config.eval_batch_size, shuffle=False, augment=False,
                                      seed=0)
        if config.processes > 1 and config.device != "cpu":
            raise UsageError(f"--processes {config.processes} trains on the CPU only; on "
                             f"{config.device} use --processes 1")
        # What the network is: the worker processes of --processes build the same one.
        self.model_args = dict(num_classes=len(self.classes), config="cifar", aux=config.aux,
                               width=config.width, batchnorm=config.batchnorm,
                               dropout=config.dropout, aux_dropout=config.aux_dropout,
                               stem_stride=config.stem_stride, init=config.init)
        self.model = GoogLeNet(**self.model_args).to(config.device)
        self.optimizer = make_optimizer(config, self.model)
        self.scheduler = make_schedule(config, self.optimizer, len(self.train_loader))
        self.ema = (EMA(self.model.parameters(), decay=config.ema, buffers=self.model.buffers())
                    if config.ema > 0 else None)
        self.epoch = 0            # epochs completed
        self.step = 0             # steps done in the current epoch
        self.history = []         # one dict per completed epoch (the rows of metrics.csv)
        self.running = RunningMetrics(self.xp)
        self.confusion = None     # of the last test
        self.seconds = 0.0        # time spent in completed epochs, across resumes
        self.train_seconds = 0.0  # time spent training in the current epoch (across a resume)
        self.final_test = None    # (accuracy, seconds) on --final-tta's views, from the last test
        self.stop = StopRequested()
        self.parallel = None      # while fit() runs with --processes > 1: its DataParallel

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {
            "kind": CHECKPOINT_KIND,
            "config": dataclasses.asdict(self.config),
            "epoch": self.epoch, "step": self.step,
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": self.scheduler.state_dict(),
            "ema": self.ema.state_dict() if self.ema is not None else None,
            "train_loader": self.train_loader.state_dict(),
            "rng": backend.get_rng_state(),
            "running": self.running.state_dict(),
            "history": self.history, "confusion": self.confusion,
            "seconds": self.seconds, "train_seconds": self.train_seconds,
        }

    def load_state_dict(self, state: dict) -> None:
        self.model.load_state_dict(state["model"])
        self.optimizer.load_state_dict(state["optimizer"])
        self.scheduler.load_state_dict(state["scheduler"])
        if self.ema is not None:
            self.ema.load_state_dict(state["ema"])
        self.train_loader.load_state_dict(state["train_loader"])
        backend.set_rng_state(state["rng"])
        self.running.load_state_dict(state["running"])
        self.epoch, self.step = int(state["epoch"]), int(state["step"])
        self.history = [dict(row) for row in state["history"]]
        self.confusion = state["confusion"]
        self.seconds, self.train_seconds = float(state["seconds"]), float(state["train_seconds"])

    def save(self, name="checkpoint.npz") -> str:
        """Write the state to ``OUT/name`` atomically; never a state with non-finite weights."""
        self.check_weights()
        path = os.path.join(self.config.out, name)
        save_checkpoint(path, self.state_dict())
        return path

    # ---------------------------------------------------------- divergence
    def check_losses(self, unread) -> None:
        """Raise TrainingDiverged if a loss of the last ``len(unread)`` steps is NaN or infinite.

        ``unread``: each step's (total, main, aux1, aux2) arrays, still on the
        device; reading them back is the one host sync.
        """
        totals = backend.to_numpy(self.xp.stack([parts[0] for parts in unread]))
        if np.isfinite(totals).all():
            return
        first = int(np.flatnonzero(~np.isfinite(totals))[0])
        parts = [None if a is None else float(backend.to_numpy(a)) for a in unread[first]]
        step = self.step - len(unread) + 1 + first
        raise TrainingDiverged(f"the loss is {describe_loss(parts)} at epoch {self.epoch + 1}, "
                               f"step {step} of {len(self.train_loader)}")

    def check_weights(self) -> None:
        """Raise TrainingDiverged if a parameter or buffer holds a NaN or an infinity."""
        tensors = list(self.model.named_parameters()) + list(self.model.named_buffers())
        finite = backend.to_numpy(self.xp.stack([self.xp.isfinite(t.data).all()
                                                 for _, t in tensors]))
        if not finite.all():
            name = tensors[int(np.flatnonzero(~finite)[0])][0]
            raise TrainingDiverged(f"the weights hold NaN or infinite values ({name} first) at "
                                   f"epoch {self.epoch + 1}, step {self.step}")

    # ---------------------------------------------------------------- loop
    def fit(self) -> dict:
        """Train until ``config.epochs``; returns a summary (``interrupted`` if a signal stopped it).

        Raises TrainingDiverged (having saved nothing of the diverged state)
        when the loss stops being a number.
        """
        config = self.config
        # The run checks its losses and weights itself (check_losses, check_weights); NumPy's
        # warnings about the same NaNs and overflows would only say it less clearly.
        with self.stop.installed(self.log), np.errstate(over="ignore", invalid="ignore",
                                                        divide="ignore"), self._workers():
            while self.epoch < config.epochs:
                if not self.train_epoch():
                    return self.summary(interrupted=True, checkpoint=self.save())
                self.check_weights()      # the last step's update is in no loss checked yet
                started = time.perf_counter()
                last = self.epoch + 1 == config.epochs
                result = self.evaluate_heads(with_final_views=last)
                seconds = time.perf_counter() - started
                if not math.isnan(result.final_accuracy):
                    self.final_test = (result.final_accuracy, seconds)
                self.end_epoch(result.accuracy, result.confusion, test_seconds=seconds,
                               aux_accuracies=(result.aux1_accuracy, result.aux2_accuracy))
                if self.stop.requested and self.epoch < config.epochs:
                    return self.summary(interrupted=True,
                                        checkpoint=os.path.join(config.out, "checkpoint.npz"))
        return self.summary(interrupted=False)

    @contextmanager
    def _workers(self):
        """With --processes > 1: the worker processes that train each batch's parts
        (``self.parallel``), started here and ended when training ends."""
        if self.config.processes == 1:
            yield
            return
        with DataParallel(self.model_args, self.config.processes) as self.parallel:
            try:
                yield
            finally:
                self.parallel = None

    def train_epoch(self) -> bool:
        """Train through the rest of the current epoch; False if stopped part-way.

        Every ``log_every`` steps, at the last step of the epoch and before
        stopping, the losses are read back: for the progress bar, and to stop
        a diverging run (``check_losses``) before any of it is saved.
        """
        config = self.config
        if self.step == 0:
            self.running = RunningMetrics(self.xp)
        started = time.perf_counter()
        steps = training.train_epoch(self.model, self.train_loader, self.optimizer, self.scheduler,
                                     self.running, config.device, aux_weight=config.aux_weight,
                                     label_smoothing=config.label_smoothing, ema=self.ema,
                                     step=(self.parallel.train_step if self.parallel is not None
                                           else training.train_step))
        bar = tqdm(total=len(self.train_loader.labels), initial=self.running.images, unit="img",
                   desc=f"epoch {self.epoch + 1}/{config.epochs}", leave=False,
                   disable=not self.progress, dynamic_ncols=True)
        unread = []               # each step's loss parts since the last read, on the device
        with bar:
            images_before = self.running.images
            for losses in steps:
                self.step += 1
                unread.append([None if part is None else part.data for part in losses])
                last = self.step == len(self.train_loader)
                if self.step % config.log_every == 0 or last or self.stop.requested:
                    self.check_losses(unread)                     # reads values: a host sync
                    unread = []
                    bar.set_postfix_str(self._postfix(self.running.means()), refresh=False)
                bar.update(self.running.images - images_before)
                images_before = self.running.images
                if self.stop.requested and not last:
                    self.train_seconds += time.perf_counter() - started
                    return False
        self.train_seconds += time.perf_counter() - started
        return True

    def _postfix(self, m) -> str:
        text = f"loss {m['loss']:.3f} main {m['loss_main']:.3f}"
        if self.config.aux:
            text += f" aux1 {m['loss_aux1']:.3f} aux2 {m['loss_aux2']:.3f}"
        return text + f" acc {100 * m['train_acc']:.1f}%"

    def evaluate(self, views=None):
        """Test accuracy of the main head in eval mode (EMA weights if on) and the confusion
        matrix; ``views``: the test-time augmentation (default: --tta's)."""
        averaged = self.ema.averaged() if self.ema is not None else nullcontext()
        with averaged:
            return training.evaluate(self.model, self.test_loader, self.config.device,
                                     num_classes=len(self.classes),
                                     tta=views or self.config.tta)

    def evaluate_heads(self, with_final_views=False) -> training.Evaluation:
        """``evaluate``, and each aux head's test accuracy on the image alone (NaN without aux
        heads): a ``training.Evaluation``, the test after every epoch.

        ``with_final_views`` (the last epoch): when --final-tta's views begin
        with --tta's and add more, the same pass goes on through them, and
        ``final_accuracy`` is the final test's result: the views --tta has
        already run are not run twice. Otherwise ``final_accuracy`` is NaN.
        """
        config = self.config
        final_tta = (config.final_tta if with_final_views and
                     training.continues(config.final_tta, config.tta) else None)
        averaged = self.ema.averaged() if self.ema is not None else nullcontext()
        with averaged:
            return training.evaluate_heads(
                self.model, self.test_loader, config.device, num_classes=len(self.classes),
                tta=config.tta, final_tta=final_tta,
                predict=self.parallel.predict_classes if self.parallel is not None else None)

    def end_epoch(self, test_acc, confusion, test_seconds, aux_accuracies=(math.nan, math.nan)):
        """Record the epoch and print its line; write checkpoint.npz, then best.npz (if the test
        accuracy improved), metrics.csv and the plots: the checkpoint first (see the class).
        ``aux_accuracies``: aux1's and aux2's test accuracy (NaN without aux heads)."""
        started = time.perf_counter()
        means = self.running.means()
        best_before = max((row["test_acc"] for row in self.history), default=-1.0)
        self.epoch, self.step, self.confusion = self.epoch + 1, 0, confusion
        row = {"epoch": self.epoch, **means, "test_acc": test_acc,
               "test_acc_aux1": aux_accuracies[0], "test_acc_aux2": aux_accuracies[1],
               "lr": self.scheduler.get_last_lr()[0],
               "train_seconds": self.train_seconds, "test_seconds": test_seconds,
               "images_per_second": self.running.images / max(self.train_seconds, 1e-9),
               "elapsed_seconds": self.seconds + self.train_seconds + test_seconds}
        self.history.append(row)
        self.log(self._epoch_line(row, best=max(best_before, test_acc)))
        self.train_seconds = 0.0
        self.running = RunningMetrics(self.xp)
        saving = time.perf_counter()
        self.seconds = row["elapsed_seconds"] + (saving - started)
        self.save()
        if test_acc > best_before:
            self.save("best.npz")
        self.write_outputs()
        self.seconds += time.perf_counter() - saving     # carried by the next checkpoint

    def _epoch_line(self, row, best) -> str:
        text = (f"epoch {row['epoch']:>3}/{self.config.epochs}  "
                f"loss {row['loss']:.4f} (main {row['loss_main']:.4f}")
        if self.config.aux:
            text += f", aux1 {row['loss_aux1']:.4f}, aux2 {row['loss_aux2']:.4f}"
        test = training.TTA_LABELS[self.config.tta]
        text += (f")  train {100 * row['train_acc']:5.2f}%  {test} {100 * row['test_acc']:5.2f}%"
                 f" (best {100 * best:5.2f}%)")
        if self.config.aux:        # rows of a checkpoint from before the aux accuracies: NaN
            text += "".join(f"  {head} {100 * row.get(f'test_acc_{head}', math.nan):5.2f}%"
                            for head in ("aux1", "aux2"))
        return (text + f"  lr {row['lr']:.4g}  {row['train_seconds']:.1f} s"
                f" + {row['test_seconds']:.1f} s test ({row['images_per_second']:.0f} img/s)")

    # -------------------------------------------------------------- outputs
    def write_outputs(self) -> None:
        """metrics.csv, then the plots: both drawn from the history, so rewritten whole."""
        write_text(os.path.join(self.config.out, "metrics.csv"), self.metrics_text())
        if self.plots:
            self.write_plots(self.confusion)

    def metrics_text(self) -> str:
        """metrics.csv: one row per completed epoch, the checkpoint's history."""
        text = io.StringIO()
        # The newest row's columns: a run resumed from a checkpoint written before a column
        # existed (the aux heads' test accuracies) has "nan" in it for the earlier epochs.
        columns = list(self.history[-1])
        columns += [k for row in self.history for k in row if k not in columns]
        writer = csv.DictWriter(text, fieldnames=list(dict.fromkeys(columns)), restval="nan",
                                lineterminator="\n")
        writer.writeheader()
        for row in self.history:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        return text.getvalue()

    def write_plots(self, confusion) -> None:
        from .plots import plot_curves, plot_per_class
        plot_curves(self.history, os.path.join(self.config.out, "curves.png"),
                    tta=self.config.tta)
        plot_per_class(confusion, self.classes, os.path.join(self.config.out, "per_class.png"))

    def repair_outputs(self, resumed_from) -> list:
        """After a resume: bring best.npz, metrics.csv and the plots up to date with the state.

        A run killed between its epoch-end writes leaves them behind
        ``checkpoint.npz``; a run resumed into another ``--out`` has none of
        them yet. Returns the names of the files written.
        """
        if not self.history:
            return []
        out, repaired = self.config.out, []
        best_epoch = best_row(self.history)["epoch"]
        best = os.path.join(out, "best.npz")
        if not self._holds_best(best, best_epoch):
            elsewhere = os.path.join(os.path.dirname(os.path.abspath(resumed_from)), "best.npz")
            if best_epoch == self.epoch and self.step == 0:     # the resumed state is the best
                self.save("best.npz")
                repaired.append("best.npz")
            elif not _same_path(elsewhere, best) and self._holds_best(elsewhere, best_epoch):
                with open(elsewhere, "rb") as source:
                    atomic_write(best, lambda f: shutil.copyfileobj(source, f))
                repaired.append("best.npz")
            else:
                self.log(f"warning: no best.npz of epoch {best_epoch} (the best so far) was found "
                         f"to restore; it is written again when the test accuracy improves")
        metrics = os.path.join(out, "metrics.csv")
        if _read_text(metrics) != self.metrics_text():
            write_text(metrics, self.metrics_text())
            repaired.append("metrics.csv")
        if self.plots and ("metrics.csv" in repaired or not self._plots_current()):
            self.write_plots(self.confusion)
            repaired += PLOTS
        return repaired

    def _holds_best(self, path, epoch) -> bool:
        """Whether ``path`` is this run's checkpoint at the end of ``epoch``."""
        try:
            state = load_checkpoint(path)
        except (OSError, CheckpointError):
            return False
        same = lambda rows: json.dumps(rows, sort_keys=True)    # NaN-safe comparison
        return (state.get("kind") == CHECKPOINT_KIND and state.get("epoch") == epoch
                and state.get("step") == 0
                and same(state.get("history")) == same(self.history[:epoch]))

    def _plots_current(self) -> bool:
        """Every plot exists and is newer than metrics.csv (plots are written after it)."""
        metrics = os.path.join(self.config.out, "metrics.csv")
        plots = [os.path.join(self.config.out, name) for name in PLOTS]
        return all(os.path.exists(p) and os.path.getmtime(p) >= os.path.getmtime(metrics)
                   for p in plots)

    def summary(self, interrupted, checkpoint=None) -> dict:
        best = best_row(self.history) if self.history else None
        return {"interrupted": interrupted, "checkpoint": checkpoint, "epochs": self.epoch,
                "final_test_acc": self.history[-1]["test_acc"] if self.history else None,
                "final_aux_test_acc": tuple(self.history[-1].get(f"test_acc_{head}", math.nan)
                                            for head in ("aux1", "aux2"))
                if self.history else None,
                "best_test_acc": best["test_acc"] if best else None,
                "best_epoch": best["epoch"] if best else None,
                "seconds": self.seconds, "confusion": self.confusion,
                "stopped_by": self.stop.signum}


def best_row(history) -> dict:
    """The epoch with the highest test accuracy (the first of equals, as best.npz keeps)."""
    return max(history, key=lambda row: row["test_acc"])


def _read_text(path):
    try:
        with open(path, encoding="utf-8") as f:
            return f.read()
    except (OSError, UnicodeDecodeError):
        return None


def _same_path(a, b) -> bool:
    return os.path.abspath(a) == os.path.abspath(b)


def make_optimizer(config, model):
    """SGD/Adam/AdamW; weight decay on conv and linear weights only."""
    decay = [p for p in model.parameters() if p.ndim > 1]       # conv and linear weights
    no_decay = [p for p in model.parameters() if p.ndim <= 1]   # biases, batch-norm scale/shift
    groups = [{"params": decay}, {"params": no_decay, "weight_decay": 0.0}]
    groups = [group for group in groups if group["params"]]
    if config.optimizer == "sgd":
        return SGD(groups, lr=config.lr, momentum=config.momentum,
                   nesterov=config.nesterov and config.momentum > 0, weight_decay=config.weight_decay)
    rule = Adam if config.optimizer == "adam" else AdamW
    return rule(groups, lr=config.lr, weight_decay=config.weight_decay)


def make_schedule(config, optimizer, steps_per_epoch: int):
    """The learning-rate schedule, stepped once per iteration."""
    total = config.epochs * steps_per_epoch
    if config.schedule == "onecycle":
        if total < 4:
            raise UsageError(f"--schedule onecycle needs at least 4 steps in all, this run has "
                             f"{total}; use more epochs or images, or another schedule")
        return OneCycleLR(optimizer, max_lr=config.lr, total_steps=total)
    if config.schedule == "cosine":
        return CosineAnnealingLR(optimizer, T_max=total)
    if config.schedule == "paper":       # x0.96 every 8 epochs, counted in iterations
        return StepLR(optimizer, step_size=8 * steps_per_epoch, gamma=0.96)
    return StepLR(optimizer, step_size=max(total, 1), gamma=1.0)   # constant
