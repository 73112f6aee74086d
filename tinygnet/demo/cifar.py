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
   images/s; the loop itself is ``training.py``), test with the main head
   only in eval mode, write ``checkpoint.npz``, then ``best.npz`` when the
   test accuracy improves, then ``metrics.csv``, ``curves.png`` and
   ``per_class.png``, each file atomically;
4. at the end print the final and best test accuracy, the time and the
   per-class accuracy.

Nothing saved is lost. ``--out`` is checked before any data is loaded; one
that holds an earlier run is refused unless ``--overwrite``. ``checkpoint.npz``
is written first at the end of an epoch: the other outputs are derived from
it, so a kill at any moment leaves them at most one epoch behind it, and
``--resume`` brings them up to date. A loss that is NaN or infinite stops the
run (exit status 1) before anything of it is saved.

Resuming: a checkpoint holds everything the run depends on (weights,
optimiser, schedule position, EMA, the data loader's and tinygnet's random
streams, the metrics so far), so ``--resume`` continues exactly as if the run
had never stopped. Ctrl-C, or SIGTERM (``timeout``, schedulers, ``docker
stop``), stops at the end of the current step, saves a checkpoint (mid-epoch
if need be) and prints how to resume; a second one stops at once, keeping the
last checkpoint.

No per-step host syncs: on a GPU the running losses and correct counts are
summed on the device and read only every ``log_every`` steps (which is also
how often a diverging loss is noticed).
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
from ..models import INITS, GoogLeNet
from ..optim import EMA, SGD, Adam, AdamW, CosineAnnealingLR, OneCycleLR, StepLR
from . import training
from .common import (Interrupted, TrainingDiverged, UsageError, check_out_folder,
                     claim_out_folder, default_out_folder, describe_loss, exit_status,
                     momentum_factor, non_negative_float, non_negative_int, number, positive_float,
                     positive_int, probability, resolve_device, sigterm_interrupts, write_text)
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

EXIT_FAILURE = 1           # data, checkpoint or file errors, and a diverged run
EXIT_USAGE = 2
# Interrupted by a signal: 128 + its number (130 Ctrl-C, 143 SIGTERM), the shell's convention.

CHECKPOINT_KIND = "tinygnet.demo.cifar"
PLOTS = ("curves.png", "per_class.png")
OUTPUTS = ("config.json", "metrics.csv", "checkpoint.npz", "best.npz") + PLOTS   # in --out


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
    init: str = "he"        # checkpoints saved before --init existed started from He


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
               "Ctrl-C or SIGTERM saves a checkpoint; continue with --resume OUT/checkpoint.npz. "
               "A loss that becomes NaN or infinite stops the run (exit status 1).")
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
                     help="steps between reads of the losses, for the progress bar and to stop "
                          "a diverging run: each read waits for the GPU (default: 1 on the CPU, "
                          "25 on a GPU)")
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
    model.add_argument("--init", choices=INITS,
                       help="how the conv and linear layers start: he (N(0, 2/fan_in)), xavier "
                            "(the BVLC Caffe GoogLeNet: U(+-sqrt(3/fan_in)), biases 0.2) or "
                            "gaussian (std 0.01, the AlexNet era); see GoogLeNet's docstring "
                            "(default: he)")
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
    optim.add_argument("--momentum", type=momentum_factor, metavar="X",
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
    files.add_argument("--overwrite", action="store_true",
                       help="start over in an --out that holds an earlier run, replacing its "
                            "outputs (without it, such an --out is refused)")
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
    values.setdefault("out", default_out_folder("cifar"))
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
    epochs, writing every output into ``config.out``. ``state_dict()`` /
    ``load_state_dict()`` are what the checkpoints hold.

    What a kill at any moment leaves: every file is written atomically, and
    at the end of an epoch ``checkpoint.npz`` is written first. It is the
    record of the run; ``best.npz``, ``metrics.csv`` and the plots are
    derived from it, written after it, so they are never ahead of it: a kill
    between the writes leaves them one epoch behind, and ``repair_outputs``
    (run on ``--resume``) brings them up to date.
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
                               stem_stride=config.stem_stride, init=config.init
                               ).to(config.device)
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
                                                        divide="ignore"):
            while self.epoch < config.epochs:
                if not self.train_epoch():
                    return self.summary(interrupted=True, checkpoint=self.save())
                self.check_weights()      # the last step's update is in no loss checked yet
                started = time.perf_counter()
                test_acc, confusion = self.evaluate()
                self.end_epoch(test_acc, confusion, test_seconds=time.perf_counter() - started)
                if self.stop.requested and self.epoch < config.epochs:
                    return self.summary(interrupted=True,
                                        checkpoint=os.path.join(config.out, "checkpoint.npz"))
        return self.summary(interrupted=False)

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
                                     label_smoothing=config.label_smoothing, ema=self.ema)
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

    def evaluate(self):
        """Test accuracy of the main head in eval mode (EMA weights if on) and the confusion matrix."""
        averaged = self.ema.averaged() if self.ema is not None else nullcontext()
        with averaged:
            return training.evaluate(self.model, self.test_loader, self.config.device,
                                     num_classes=len(self.classes))

    def end_epoch(self, test_acc, confusion, test_seconds) -> None:
        """Record the epoch and print its line; write checkpoint.npz, then best.npz (if the test
        accuracy improved), metrics.csv and the plots: the checkpoint first (see the class)."""
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
        return (text + f")  train {100 * row['train_acc']:5.2f}%  test {100 * row['test_acc']:5.2f}%"
                f" (best {100 * best:5.2f}%)  lr {row['lr']:.4g}  {row['train_seconds']:.1f} s"
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
        writer = csv.DictWriter(text, fieldnames=list(self.history[0]), lineterminator="\n")
        writer.writeheader()
        for row in self.history:
            writer.writerow({k: (f"{v:.6g}" if isinstance(v, float) else v) for k, v in row.items()})
        return text.getvalue()

    def write_plots(self, confusion) -> None:
        from .plots import plot_curves, plot_per_class
        plot_curves(self.history, os.path.join(self.config.out, "curves.png"))
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
    """Run the demo; returns the exit status: 0, 1 (data, checkpoint or file error, or the run
    diverged), 2 (usage), 130 (Ctrl-C) or 143 (SIGTERM)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        with sigterm_interrupts():
            return _run(argv)
    except KeyboardInterrupt as stop:    # a signal before training started, or a second one
        print(f"\n{PROG}: stopped", file=sys.stderr)
        return exit_status(stop)


def _run(argv) -> int:
    args = build_parser().parse_args(argv)
    given_out = args.out is not None or args.resume is not None
    try:
        if args.resume:
            state = load_checkpoint(args.resume)
            if state.get("kind") != CHECKPOINT_KIND or "config" not in state:
                raise CheckpointError(f"{args.resume!r} is not a checkpoint of this demo")
            config = config_for_resume(args, state["config"], args.resume)
            continuing = _same_path(args.resume, os.path.join(config.out, "checkpoint.npz"))
            if continuing and args.overwrite:
                raise UsageError(f"--overwrite would delete the run that --resume continues "
                                 f"({config.out}); leave it out")
        else:
            state, config, continuing = None, resolve_config(args), False
        check_out_folder(config.out, OUTPUTS, given=given_out, replace=args.overwrite,
                         continuing=continuing, advice=_how_to_continue(config.out))
    except UsageError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (FileNotFoundError, CheckpointError) as error:
        print(f"{PROG}: error: cannot resume: {error}", file=sys.stderr)
        return EXIT_FAILURE

    try:
        train, test = load_cifar10(config)
    except DatasetError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return EXIT_FAILURE

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
            return EXIT_FAILURE

    params = sum(p.size for p in trainer.model.parameters())
    print(f"tinygnet CIFAR-10 demo on {_device_name(config.device)}: GoogLeNet width {config.width}, "
          f"stem stride {config.stem_stride}, batch norm {'on' if config.batchnorm else 'off'}, "
          f"{config.init} init, aux heads {'on' if config.aux else 'off'}, {params:,} parameters; "
          f"{len(train)} training and {len(test)} test images; {_plural(config.epochs, 'epoch')} of "
          f"{_plural(len(trainer.train_loader), 'step')}")
    checkpoint = os.path.join(config.out, "checkpoint.npz")
    try:
        config.out = claim_out_folder(config.out, OUTPUTS, given=given_out, replace=args.overwrite)
        checkpoint = os.path.join(config.out, "checkpoint.npz")
        if state is not None:
            repaired = trainer.repair_outputs(args.resume)
            if repaired:
                print(f"brought up to date with the checkpoint (the run had stopped between two "
                      f"writes): {', '.join(repaired)}")
        if not os.path.exists(os.path.join(config.out, "config.json")):
            _write_config(config, argv, params)
        if state is not None and trainer.epoch >= config.epochs:
            print(f"resuming from {args.resume}: the run is already finished "
                  f"({trainer.epoch} of {_plural(config.epochs, 'epoch')}), nothing to train; "
                  f"to train longer, start a new run with a larger --epochs")
            _print_summary(trainer.summary(interrupted=False), trainer.classes, config)
            return 0
        if state is not None:
            print(f"resuming from {args.resume}: epoch {trainer.epoch + 1} of {config.epochs}, "
                  f"step {trainer.step} of {len(trainer.train_loader)}")
        print(f"writing to {config.out}")
        result = trainer.fit()
    except TrainingDiverged as error:
        print(f"{PROG}: error: the run diverged: {error}. Stopped without saving it "
              f"({_what_is_kept(checkpoint)}); try a smaller --lr (this run: {config.lr:g})",
              file=sys.stderr)
        return EXIT_FAILURE
    except OSError as error:              # disk full, a folder made read-only during the run...
        print(f"{PROG}: error: cannot write {error.filename or config.out}: {error.strerror}; "
              f"{_what_is_kept(checkpoint)}", file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt as stop:     # a second signal: stop at once
        if os.path.exists(checkpoint):
            print(f"\nstopped at once; the last checkpoint is kept. Resume with:\n"
                  f"  {PROG} --resume {shlex.quote(checkpoint)}", file=sys.stderr)
        else:
            print("\nstopped at once, before the first checkpoint", file=sys.stderr)
        return exit_status(stop)
    if result["interrupted"]:
        print(f"stopped; checkpoint saved. Resume with:\n"
              f"  {PROG} --resume {shlex.quote(result['checkpoint'])}")
        return 128 + result["stopped_by"]
    _print_summary(result, trainer.classes, config)
    return 0


def _how_to_continue(out) -> str:
    checkpoint = os.path.join(out, "checkpoint.npz")
    if os.path.isfile(checkpoint):
        return f"continue it with --resume {shlex.quote(checkpoint)}, "
    return ""


def _what_is_kept(checkpoint) -> str:
    """Which checkpoint a failed run leaves, for its last message."""
    try:
        state = load_checkpoint(checkpoint)
    except (OSError, CheckpointError):
        return "no checkpoint was written"
    epoch, step = state.get("epoch"), state.get("step")
    at = f"epoch {epoch}" + (f", step {step}" if step else "")
    best = os.path.join(os.path.dirname(checkpoint), "best.npz")
    also = " and best.npz" if os.path.exists(best) else ""
    return f"{checkpoint}{also} are kept as they were ({at})" if also else \
        f"{checkpoint} is kept as it was ({at})"


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
