"""``python -m tinygnet.demo cifar``: train GoogLeNet on CIFAR-10, end to end.

    python -m tinygnet.demo cifar --quick          # a sub-minute smoke run of every step
    python -m tinygnet.demo cifar                  # the default run for this device
    python -m tinygnet.demo cifar --resume runs/cifar-.../checkpoint.npz

What one run does:

1. resolve the configuration: device defaults (``CPU_DEFAULTS`` or
   ``GPU_DEFAULTS`` below), then ``--quick``'s overrides, then your flags;
   save it to ``OUT/config.json``;
2. load CIFAR-10 (``tinygnet.data``), build GoogLeNet, the optimiser, the
   learning-rate schedule and optionally an EMA of the weights;
3. each epoch: train with a progress bar (loss and its main/aux1/aux2 parts,
   images/s), test with the main head only in eval mode, append a row to
   ``metrics.csv``, redraw ``curves.png`` and ``per_class.png``, and write
   ``checkpoint.npz`` (and ``best.npz`` when the test accuracy improves),
   each file atomically;
4. at the end print the final and best test accuracy, the time and the
   per-class accuracy.

Resuming: a checkpoint holds everything the run depends on (weights,
optimiser, schedule position, EMA, the data loader's and tinygnet's random
streams, the metrics so far), so ``--resume`` continues exactly as if the run
had never stopped. Ctrl-C stops at the end of the current step, saves a
checkpoint (mid-epoch if need be) and prints how to resume; a second Ctrl-C
stops at once, keeping the last checkpoint.

No per-step host syncs: on a GPU the running losses and correct counts are
summed on the device and read only every ``log_every`` steps.
"""
from __future__ import annotations

import argparse
import csv
import dataclasses
import io
import json
import math
import os
import platform
import shlex
import shutil
import signal
import sys
import time
from contextlib import contextmanager, nullcontext

import numpy as np
from tqdm.auto import tqdm

from .. import __version__, backend
from ..checkpoint import CheckpointError, atomic_write, load_checkpoint, save_checkpoint
from ..data import CIFAR10, DataLoader, DatasetError, resolve_data_root
from ..models import GoogLeNet
from ..optim import EMA, SGD, Adam, AdamW, CosineAnnealingLR, OneCycleLR, StepLR
from . import training
from .common import (UsageError, non_negative_float, number, non_negative_int, positive_float,
                     positive_int, probability, resolve_device, write_text)
from .training import RunningMetrics

PROG = "python -m tinygnet.demo cifar"

# ==========================================================================
# Defaults by device.
#
# CPU: the most accuracy measured within 20 minutes on this project's 2-core
# machine. The choice is width against epochs. Measured (README, "What the
# CIFAR demo does"): width 0.125 trains at about 280 images/s and reaches
# 75.3% in 6 epochs (19.0 min; 74.0% in 5); width 0.25 is at 64% after 2 of 3
# epochs and 3 epochs take about 25 min. Stem stride 2 (Inception stages at
# 16/8/4 pixels) makes the network 4x cheaper; batch norm lets a 22-layer
# network train in a handful of epochs at all.
#
# GPU: the full-width network of the paper (cifar stem), aiming at >= 93%.
# ==========================================================================
CPU_DEFAULTS = dict(
    width=0.125, stem_stride=2, batchnorm=True, epochs=6, batch_size=128,
    optimizer="sgd", lr=0.2, momentum=0.9, nesterov=True, weight_decay=5e-4,
    schedule="onecycle", label_smoothing=0.1, aux_weight=0.3,
    dropout=0.4, aux_dropout=0.7, ema=0.0, log_every=1,
)
GPU_DEFAULTS = dict(
    width=1.0, stem_stride=1, batchnorm=True, epochs=30, batch_size=128,
    optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
    schedule="onecycle", label_smoothing=0.1, aux_weight=0.3,
    dropout=0.4, aux_dropout=0.7, ema=0.0, log_every=25,
)
# --quick: a few hundred images, one short epoch of a small network.
QUICK_OVERRIDES = dict(epochs=1, width=0.125, stem_stride=2, batch_size=64,
                       train_images=512, test_images=256)

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("onecycle", "cosine", "paper", "constant")

EXIT_DATA_ERROR = 1
EXIT_USAGE = 2
EXIT_INTERRUPTED = 130     # the shell's convention for "stopped by Ctrl-C"


@dataclasses.dataclass
class Config:
    """Everything that determines a run (saved as config.json and in each checkpoint)."""
    device: str
    epochs: int
    batch_size: int
    lr: float
    optimizer: str
    momentum: float
    nesterov: bool
    weight_decay: float
    schedule: str
    width: float
    stem_stride: int
    batchnorm: bool
    aux: bool
    aux_weight: float
    dropout: float
    aux_dropout: float
    label_smoothing: float
    ema: float
    seed: int
    data: str
    download: bool
    train_images: int | None
    test_images: int | None
    eval_batch_size: int
    log_every: int
    out: str
    quick: bool


# Settings that may differ when resuming (where things live, not what is computed).
RESUMABLE_OVERRIDES = ("device", "data", "download", "out", "log_every")


# ==========================================================================
# Command line
# ==========================================================================
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train GoogLeNet on CIFAR-10 with tinygnet. Options left out take the "
                    "defaults of the device (CPU: a narrow network that trains in under 20 "
                    "minutes on 2 cores; GPU: the full-width network); the resolved values are printed "
                    "and saved to OUT/config.json.",
        epilog="Outputs in --out: config.json, metrics.csv, curves.png, per_class.png, "
               "checkpoint.npz (every epoch) and best.npz (best test accuracy). "
               "Ctrl-C saves a checkpoint; continue with --resume OUT/checkpoint.npz.")
    # Defaults are None: "not given", so device defaults and --resume can tell.
    run = parser.add_argument_group("run")
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                     help="where to train: cuda if a GPU is usable with CuPy, else cpu (default: auto)")
    run.add_argument("--epochs", type=positive_int, metavar="N",
                     help="passes over the training set" + _defaults("epochs"))
    run.add_argument("--batch-size", type=positive_int, metavar="N",
                     help="images per training step" + _defaults("batch_size"))
    run.add_argument("--seed", type=non_negative_int, metavar="N",
                     help="seed of every random stream (init, shuffling, augmentation, dropout); "
                          "the same seed gives the same run (default: 0)")
    run.add_argument("--quick", action="store_true", default=None,
                     help=f"smoke test in under a minute: {QUICK_OVERRIDES['train_images']} "
                          f"training and {QUICK_OVERRIDES['test_images']} test images, one epoch, "
                          f"width {QUICK_OVERRIDES['width']}; still writes every output")
    run.add_argument("--train-images", type=positive_int, metavar="N",
                     help="train on the first N training images only (default: all 50000)")
    run.add_argument("--test-images", type=positive_int, metavar="N",
                     help="test on the first N test images only (default: all 10000)")
    run.add_argument("--eval-batch-size", type=positive_int, metavar="N",
                     help="images per step when testing (default: 2 x batch size)")
    run.add_argument("--log-every", type=positive_int, metavar="N",
                     help="steps between progress-bar updates of the losses: each update reads "
                          "values back from the GPU (default: 1 on the CPU, 25 on a GPU)")
    run.add_argument("--no-progress", dest="progress", action="store_false",
                     help="no progress bar (the per-epoch lines are still printed)")

    model = parser.add_argument_group("model")
    model.add_argument("--width", type=positive_float, metavar="X",
                       help="multiplies every channel count; 1 is the paper's GoogLeNet"
                       + _defaults("width"))
    model.add_argument("--stem-stride", type=int, choices=(1, 2),
                       help="stride of the first conv: 2 runs the Inception stages at 16/8/4 "
                            "pixels instead of 32/16/8, about 4x cheaper" + _defaults("stem_stride"))
    model.add_argument("--batchnorm", action=argparse.BooleanOptionalAction, default=None,
                       help="batch norm after every conv (not in the 2014 paper; trains much "
                            "faster)" + _defaults("batchnorm"))
    model.add_argument("--no-aux", dest="aux", action="store_false", default=None,
                       help="leave out the two auxiliary classifiers")
    model.add_argument("--aux-weight", type=non_negative_float, metavar="X",
                       help="weight of each auxiliary loss in the total; the paper's is 0.3"
                       + _defaults("aux_weight"))
    model.add_argument("--dropout", type=probability, metavar="P",
                       help="dropout before the classifier; the paper's is 0.4" + _defaults("dropout"))
    model.add_argument("--aux-dropout", type=probability, metavar="P",
                       help="dropout inside the auxiliary heads; the paper's is 0.7"
                       + _defaults("aux_dropout"))

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--optimizer", choices=OPTIMIZERS, help="update rule" + _defaults("optimizer"))
    optim.add_argument("--lr", type=positive_float, metavar="X",
                       help="learning rate: the peak of the one-cycle schedule, else the initial one"
                       + _defaults("lr"))
    optim.add_argument("--momentum", type=non_negative_float, metavar="X",
                       help="SGD momentum" + _defaults("momentum"))
    optim.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None,
                       help="Nesterov momentum for SGD" + _defaults("nesterov"))
    optim.add_argument("--weight-decay", type=non_negative_float, metavar="X",
                       help="L2 penalty on conv and linear weights (biases and batch-norm "
                            "parameters are not decayed); decoupled for adamw"
                            + _defaults("weight_decay"))
    optim.add_argument("--schedule", choices=SCHEDULES,
                       help="learning-rate schedule, stepped every iteration: onecycle (warm-up "
                            "then cosine annealing), cosine, paper (x0.96 every 8 epochs), constant"
                            + _defaults("schedule"))
    optim.add_argument("--label-smoothing", type=probability, metavar="X",
                       help="label smoothing of the cross-entropy targets"
                       + _defaults("label_smoothing"))
    optim.add_argument("--ema", type=_ema_decay, metavar="DECAY",
                       help="decay of an exponential moving average of the weights (the paper's "
                            "Polyak averaging), used for testing; 0 turns it off" + _defaults("ema"))

    files = parser.add_argument_group("files")
    files.add_argument("--data", metavar="DIR",
                       help="folder holding cifar-10-batches-py/ or cifar-10-python.tar.gz "
                            "(default: $TINYGNET_DATA, else ~/.cache/tinygnet)")
    files.add_argument("--no-download", dest="download", action="store_false", default=None,
                       help="never download CIFAR-10; fail if it is not found")
    files.add_argument("--out", metavar="DIR",
                       help="output folder (default: runs/cifar-DATE-TIME; with --resume, the "
                            "checkpoint's folder)")
    files.add_argument("--resume", metavar="PATH",
                       help="continue the run saved in this checkpoint exactly where it stopped")
    return parser


def _defaults(name) -> str:
    cpu, gpu = CPU_DEFAULTS[name], GPU_DEFAULTS[name]
    if isinstance(cpu, bool):
        cpu, gpu = ("on" if cpu else "off"), ("on" if gpu else "off")
    if cpu == gpu:
        return f" (default: {cpu})"
    return f" (default: {cpu} on the CPU, {gpu} on a GPU)"


_ema_decay = number(float, lambda v: 0 <= v < 1, "in [0, 1) (0: off)")




def resolve_config(args: argparse.Namespace) -> Config:
    """Device defaults, then --quick, then every flag given on the command line."""
    device = resolve_device(args.device)
    values = dict(CPU_DEFAULTS if device == "cpu" else GPU_DEFAULTS)
    values.update(aux=True, seed=0, download=True, train_images=None, test_images=None,
                  quick=bool(args.quick))
    if args.quick:
        values.update(QUICK_OVERRIDES)
    values.update(_given(args))
    values["device"] = device
    values["data"] = resolve_data_root(args.data)
    values.setdefault("eval_batch_size", 2 * values["batch_size"])
    values.setdefault("out", os.path.join("runs", time.strftime("cifar-%Y%m%d-%H%M%S")))
    return Config(**values)


def _given(args) -> dict:
    """The Config fields set on the command line (argparse leaves the others None)."""
    fields = {f.name for f in dataclasses.fields(Config)} - {"device", "data", "quick"}
    return {name: value for name, value in vars(args).items()
            if name in fields and value is not None}


def config_for_resume(args, saved: dict, checkpoint_path: str) -> Config:
    """The saved configuration; flags that would change the computation are refused."""
    try:
        config = Config(**saved)
    except TypeError as error:
        raise CheckpointError(f"{checkpoint_path!r}: its configuration does not fit this version "
                              f"of the demo ({error})") from None
    conflicts = [f"--{name.replace('_', '-')} {value} (saved: {getattr(config, name)})"
                 for name, value in _given(args).items()
                 if name not in RESUMABLE_OVERRIDES and value != getattr(config, name)]
    if args.quick and not config.quick:
        conflicts.append("--quick (the saved run is not a quick one)")
    if conflicts:
        raise UsageError(f"--resume continues the saved run with its own configuration; these "
                         f"options differ from it: {', '.join(conflicts)}")
    config.device = resolve_device(args.device)
    if args.data is not None:
        config.data = resolve_data_root(args.data)
    if args.download is not None:
        config.download = args.download
    if args.log_every is not None:
        config.log_every = args.log_every
    config.out = args.out or os.path.dirname(os.path.abspath(checkpoint_path))
    return config


# ==========================================================================
# Data
# ==========================================================================
@dataclasses.dataclass
class ArrayDataset:
    """Images (uint8 N x 3 x 32 x 32), labels (int64 N) and class names."""
    images: np.ndarray
    labels: np.ndarray
    classes: list

    def __len__(self):
        return len(self.labels)

    def head(self, n: int | None) -> "ArrayDataset":
        """The first ``n`` images (the official batches are already shuffled)."""
        return self if n is None else ArrayDataset(self.images[:n], self.labels[:n], self.classes)


def load_cifar10(config: Config):
    """(train, test) ArrayDatasets, cut to --train-images / --test-images."""
    train = CIFAR10(config.data, train=True, download=config.download)
    test = CIFAR10(config.data, train=False, download=config.download)
    return (ArrayDataset(train.images, train.labels, train.classes).head(config.train_images),
            ArrayDataset(test.images, test.labels, test.classes).head(config.test_images))


# ==========================================================================
# A run: training with its bookkeeping (the loop itself is in training.py)
# ==========================================================================
class StopRequested:
    """Turns the first Ctrl-C into a flag the loop checks between steps.

    Stopping between steps keeps the state consistent (never half an
    optimiser update), so the checkpoint saved then resumes exactly. A second
    Ctrl-C raises KeyboardInterrupt at once.
    """

    def __init__(self):
        self.requested = False

    @contextmanager
    def installed(self, log):
        def handler(signum, frame):
            if self.requested:
                raise KeyboardInterrupt
            self.requested = True
            log("\nCtrl-C: stopping after this step and saving a checkpoint "
                "(press Ctrl-C again to stop at once)")

        try:
            previous = signal.signal(signal.SIGINT, handler)
        except ValueError:            # not the main thread: leave Ctrl-C alone
            yield self
            return
        try:
            yield self
        finally:
            signal.signal(signal.SIGINT, previous)


class Trainer:
    """One training run: model, optimiser, schedule, data and bookkeeping.

    ``Trainer(config, train, test).fit()`` trains for ``config.epochs``
    epochs, writing every output into ``config.out``. ``state_dict()`` /
    ``load_state_dict()`` are what the checkpoints hold.
    """

    def __init__(self, config: Config, train: ArrayDataset, test: ArrayDataset,
                 progress=True, plots=True, log=print):
        self.config, self.progress, self.plots, self.log = config, progress, plots, log
        self.classes = list(train.classes)
        self.xp = backend.cupy_or_none() if config.device != "cpu" else np
        # Order matters for reproducibility: the seed, then the train loader
        # (which draws its own seed from the host stream), then the weights.
        backend.manual_seed(config.seed)
        self.train_loader = DataLoader(train, config.batch_size, shuffle=True, augment=True)
        self.test_loader = DataLoader(test, config.eval_batch_size, shuffle=False, augment=False,
                                      seed=0)
        self.model = GoogLeNet(num_classes=len(self.classes), config="cifar", aux=config.aux,
                               width=config.width, batchnorm=config.batchnorm,
                               dropout=config.dropout, aux_dropout=config.aux_dropout,
                               stem_stride=config.stem_stride).to(config.device)
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
        self.stop = StopRequested()

    # ------------------------------------------------------------ checkpoints
    def state_dict(self) -> dict:
        return {
            "kind": "tinygnet.demo.cifar",
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
        path = os.path.join(self.config.out, name)
        save_checkpoint(path, self.state_dict())
        return path

    # ---------------------------------------------------------------- loop
    def fit(self) -> dict:
        """Train until ``config.epochs``; returns a summary (``interrupted`` if Ctrl-C stopped it)."""
        config = self.config
        os.makedirs(config.out, exist_ok=True)
        with self.stop.installed(self.log):
            while self.epoch < config.epochs:
                if not self.train_epoch():
                    return self.summary(interrupted=True, checkpoint=self.save())
                started = time.perf_counter()
                test_acc, confusion = self.evaluate()
                self.end_epoch(test_acc, confusion, test_seconds=time.perf_counter() - started)
                if self.stop.requested and self.epoch < config.epochs:
                    return self.summary(interrupted=True,
                                        checkpoint=os.path.join(config.out, "checkpoint.npz"))
        return self.summary(interrupted=False)

    def train_epoch(self) -> bool:
        """Train through the rest of the current epoch; False if stopped part-way."""
        config = self.config
        if self.step == 0:
            self.running = RunningMetrics(self.xp)
        started = time.perf_counter()
        steps = training.train_epoch(self.model, self.train_loader, self.optimizer, self.scheduler,
                                     self.running, config.device, aux_weight=config.aux_weight,
                                     label_smoothing=config.label_smoothing, ema=self.ema)
        bar = tqdm(total=len(self.train_loader.labels), initial=self.running.images, unit="img",
                   desc=f"epoch {self.epoch + 1}/{config.epochs}", leave=False,
                   disable=not self.progress, dynamic_ncols=True)
        with bar:
            images_before = self.running.images
            for _ in steps:
                self.step += 1
                last = self.step == len(self.train_loader)
                if self.step % config.log_every == 0 or last:     # reads values: a host sync
                    bar.set_postfix_str(self._postfix(self.running.means()), refresh=False)
                bar.update(self.running.images - images_before)
                images_before = self.running.images
                if self.stop.requested and not last:
                    self.train_seconds += time.perf_counter() - started
                    return False
        self.train_seconds += time.perf_counter() - started
        return True

    @staticmethod
    def _postfix(m) -> str:
        text = f"loss {m['loss']:.3f} main {m['loss_main']:.3f}"
        if not math.isnan(m["loss_aux1"]):
            text += f" aux1 {m['loss_aux1']:.3f} aux2 {m['loss_aux2']:.3f}"
        return text + f" acc {100 * m['train_acc']:.1f}%"

    def evaluate(self):
        """Test accuracy of the main head in eval mode (EMA weights if on) and the confusion matrix."""
        averaged = self.ema.averaged() if self.ema is not None else nullcontext()
        with averaged:
            return training.evaluate(self.model, self.test_loader, self.config.device,
                                     num_classes=len(self.classes))

    def end_epoch(self, test_acc, confusion, test_seconds) -> None:
        """Record the epoch, print its line, write metrics, plots and checkpoints."""
        started = time.perf_counter()
        means = self.running.means()
        best_before = max((row["test_acc"] for row in self.history), default=-1.0)
        self.epoch, self.step, self.confusion = self.epoch + 1, 0, confusion
        row = {"epoch": self.epoch, **means, "test_acc": test_acc,
               "lr": self.scheduler.get_last_lr()[0],
               "train_seconds": self.train_seconds, "test_seconds": test_seconds,
               "images_per_second": self.running.images / max(self.train_seconds, 1e-9),
               "elapsed_seconds": self.seconds + self.train_seconds + test_seconds}
        self.history.append(row)
        self.log(self._epoch_line(row, best=max(best_before, test_acc)))
        self.write_metrics()
        if self.plots:
            self.write_plots(confusion)
        # Writing the outputs counts too; set before saving so the checkpoint carries it.
        self.seconds = row["elapsed_seconds"] + (time.perf_counter() - started)
        self.train_seconds = 0.0
        self.running = RunningMetrics(self.xp)
        path = self.save()
        if test_acc > best_before:
            best = os.path.join(self.config.out, "best.npz")
            with open(path, "rb") as source:
                atomic_write(best, lambda f: shutil.copyfileobj(source, f))

    def _epoch_line(self, row, best) -> str:
        text = (f"epoch {row['epoch']:>3}/{self.config.epochs}  "
                f"loss {row['loss']:.4f} (main {row['loss_main']:.4f}")
        if not math.isnan(row["loss_aux1"]):
            text += f", aux1 {row['loss_aux1']:.4f}, aux2 {row['loss_aux2']:.4f}"
        return (text + f")  train {100 * row['train_acc']:5.2f}%  test {100 * row['test_acc']:5.2f}%"
                f" (best {100 * best:5.2f}%)  lr {row['lr']:.4g}  {row['train_seconds']:.1f} s"
                f" + {row['test_seconds']:.1f} s test ({row['images_per_second']:.0f} img/s)")

    # -------------------------------------------------------------- outputs
    def write_metrics(self) -> None:
        """metrics.csv: one row per epoch, rewritten whole (so it always matches the checkpoint)."""
        text = io.StringIO()
        writer = csv.DictWriter(text, fieldnames=list(self.history[0]), lineterminator="\n")
        writer.writeheader()
        for row in self.history:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        write_text(os.path.join(self.config.out, "metrics.csv"), text.getvalue())

    def write_plots(self, confusion) -> None:
        from .plots import plot_curves, plot_per_class
        plot_curves(self.history, os.path.join(self.config.out, "curves.png"))
        plot_per_class(confusion, self.classes, os.path.join(self.config.out, "per_class.png"))

    def summary(self, interrupted, checkpoint=None) -> dict:
        best = max(self.history, key=lambda row: row["test_acc"]) if self.history else None
        return {"interrupted": interrupted, "checkpoint": checkpoint, "epochs": self.epoch,
                "final_test_acc": self.history[-1]["test_acc"] if self.history else None,
                "best_test_acc": best["test_acc"] if best else None,
                "best_epoch": best["epoch"] if best else None,
                "seconds": self.seconds, "confusion": self.confusion}


def make_optimizer(config: Config, model):
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


def make_schedule(config: Config, optimizer, steps_per_epoch: int):
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


# ==========================================================================
# main
# ==========================================================================
def main(argv=None) -> int:
    """Run the demo; returns the exit status (0, 1 data/checkpoint error, 2 usage, 130 Ctrl-C)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        return _run(argv)
    except KeyboardInterrupt:     # Ctrl-C before training started, or a second one
        print(f"\n{PROG}: stopped", file=sys.stderr)
        return EXIT_INTERRUPTED


def _run(argv) -> int:
    args = build_parser().parse_args(argv)
    try:
        if args.resume:
            state = load_checkpoint(args.resume)
            if state.get("kind") != "tinygnet.demo.cifar" or "config" not in state:
                raise CheckpointError(f"{args.resume!r} is not a checkpoint of this demo")
            config = config_for_resume(args, state["config"], args.resume)
        else:
            state, config = None, resolve_config(args)
    except UsageError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (FileNotFoundError, CheckpointError) as error:
        print(f"{PROG}: error: cannot resume: {error}", file=sys.stderr)
        return EXIT_DATA_ERROR

    try:
        train, test = load_cifar10(config)
    except DatasetError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return EXIT_DATA_ERROR

    try:
        trainer = Trainer(config, train, test, progress=args.progress)
    except UsageError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    if state is not None:
        try:
            trainer.load_state_dict(state)
        except (KeyError, ValueError, TypeError) as error:
            print(f"{PROG}: error: cannot resume from {args.resume!r}: the checkpoint does not "
                  f"match this run ({type(error).__name__}: {error})", file=sys.stderr)
            return EXIT_DATA_ERROR

    params = sum(p.size for p in trainer.model.parameters())
    print(f"tinygnet CIFAR-10 demo on {_device_name(config.device)}: GoogLeNet width {config.width}, "
          f"stem stride {config.stem_stride}, batch norm {'on' if config.batchnorm else 'off'}, "
          f"aux heads {'on' if config.aux else 'off'}, {params:,} parameters; {len(train)} training "
          f"and {len(test)} test images; {_plural(config.epochs, 'epoch')} of "
          f"{_plural(len(trainer.train_loader), 'step')}")
    if state is not None:
        print(f"resuming from {args.resume}: epoch {trainer.epoch + 1}, step {trainer.step}")
    else:
        _write_config(config, argv, params)
    print(f"writing to {config.out}")

    checkpoint = os.path.join(config.out, "checkpoint.npz")
    try:
        result = trainer.fit()
    except KeyboardInterrupt:
        if os.path.exists(checkpoint):
            print(f"\nstopped at once; the last checkpoint is kept. Resume with:\n"
                  f"  {PROG} --resume {shlex.quote(checkpoint)}", file=sys.stderr)
        else:
            print("\nstopped at once, before the first checkpoint", file=sys.stderr)
        return EXIT_INTERRUPTED
    if result["interrupted"]:
        print(f"stopped; checkpoint saved. Resume with:\n"
              f"  {PROG} --resume {shlex.quote(result['checkpoint'])}")
        return EXIT_INTERRUPTED
    _print_summary(result, trainer.classes, config)
    return 0


def _write_config(config: Config, argv, params) -> None:
    """config.json: the resolved configuration and where it ran."""
    record = {"config": dataclasses.asdict(config),
              "command": " ".join([PROG] + [shlex.quote(a) for a in argv]),
              "parameters": params, "device": _device_name(config.device),
              "tinygnet": __version__, "numpy": np.__version__,
              "python": platform.python_version(), "machine": platform.platform(),
              "started": time.strftime("%Y-%m-%d %H:%M:%S")}
    write_text(os.path.join(config.out, "config.json"), json.dumps(record, indent=2) + "\n")


def _plural(count, noun) -> str:
    return f"{count} {noun}" + ("" if count == 1 else "s")


def _device_name(device: str) -> str:
    if device == "cpu":
        return f"CPU ({os.cpu_count()} cores)"
    cupy = backend.cupy_or_none()
    index = int(device.split(":")[1])
    name = cupy.cuda.runtime.getDeviceProperties(index)["name"]
    return f"{device} ({name.decode() if isinstance(name, bytes) else name})"


def _print_summary(result, classes, config) -> None:
    minutes, seconds = divmod(result["seconds"], 60)
    print(f"\nfinal test accuracy {100 * result['final_test_acc']:.2f}%, best "
          f"{100 * result['best_test_acc']:.2f}% (epoch {result['best_epoch']}), "
          f"{int(minutes)} min {seconds:.0f} s")
    confusion = result["confusion"]
    if confusion is not None:
        print("\nper-class test accuracy (final epoch):")
        totals = confusion.sum(axis=1)
        for name, right, total in zip(classes, np.diag(confusion), totals):
            accuracy = right / total if total else math.nan
            print(f"  {name:<12} {100 * accuracy:6.2f}%  ({right}/{total})")
    print(f"\noutputs in {config.out}: config.json, metrics.csv, curves.png, per_class.png, "
          f"checkpoint.npz, best.npz")


if __name__ == "__main__":
    sys.exit(main())
