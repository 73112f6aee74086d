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
3. each epoch (``run.Trainer``, around the loop of ``training.py``; with
   ``--processes N`` > 1, the CPU default, each batch cut into N parts trained
   side by side in worker processes, ``parallel.py``): train
   with a progress bar (loss and its main/aux1/aux2 parts, images/s), test
   in eval mode (the main head, and each aux head alone), write ``checkpoint.npz``, then
   ``best.npz`` when the test accuracy improves, then ``metrics.csv``,
   ``curves.png`` and ``per_class.png``, each file atomically;
4. at the end test the final weights on ``--final-tta``'s views (when they
   continue ``--tta``'s, as the defaults do, the last epoch's test has run them), write
   ``results.json`` (each accuracy with the views it averaged) and print the
   final and best test accuracy, the time and the per-class accuracy.

Nothing saved is lost, and no run is mixed with another. ``--out`` is
checked and held before any data is loaded: a second run into it, or a
``--resume`` of the run while it runs, is refused (``common.hold_out_folder``);
one that holds an earlier run is refused unless ``--overwrite``, and one that
holds the other demo's run is refused even then. ``checkpoint.npz``
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
import contextlib
import dataclasses
import json
import math
import os
import platform
import shlex
import sys
import time

import numpy as np

from .. import __version__, backend
from ..checkpoint import CheckpointError, load_checkpoint
from ..data import CIFAR10, DatasetError, resolve_data_root
from ..models import INITS
from .common import (TrainingDiverged, UsageError, claim_out_folder, default_out_folder,
                     exit_status, hold_out_folder, invalid, momentum_factor, non_negative_float,
                     non_negative_int, number, path_text, positive_float, positive_int,
                     probability, resolve_device, sigterm_interrupts, width_factor, write_text)
from .run import CHECKPOINT_KIND, OUTPUTS, Trainer
from .training import TTA_DESCRIPTIONS, TTA_VIEWS
from .workers import WorkerDied, more_workers_than_cores, usable_cores

PROG = "python -m tinygnet.demo cifar"

# ==========================================================================
# Defaults by device.
#
# CPU: the most test accuracy in a run of minutes, not hours. The choice is
# width against epochs, and what helps a handful of epochs: stem stride 2
# (Inception stages at 16/8/4 pixels) makes the network 4x cheaper; batch
# norm lets a 22-layer network train in a handful of epochs at all; short
# runs gain from milder augmentation (crops of a 2-pixel padding, no
# dropout before the classifier) and from testing the final weights on 6
# views of each image. The test after each epoch, a progress report, runs
# the image alone: the last epoch's test runs on through the 6 views in the
# same pass. docs/cifar.md has the machine they were chosen on, the measured
# runs and what each setting gave.
#
# GPU: the full-width network of the paper (cifar stem), aiming at >= 93%.
# ==========================================================================
CPU_DEFAULTS = dict(
    width=0.125, stem_stride=2, batchnorm=True, epochs=9, batch_size=128,
    optimizer="sgd", lr=0.2, momentum=0.9, nesterov=True, weight_decay=5e-4,
    schedule="onecycle", label_smoothing=0.1, aux_weight=0.3,
    dropout=0.0, aux_dropout=0.7, crop_padding=2, tta="none", final_tta="shifts", ema=0.0,
    log_every=1, processes=2,
)
GPU_DEFAULTS = dict(
    width=1.0, stem_stride=1, batchnorm=True, epochs=30, batch_size=128,
    optimizer="sgd", lr=0.1, momentum=0.9, nesterov=True, weight_decay=5e-4,
    schedule="onecycle", label_smoothing=0.1, aux_weight=0.3,
    dropout=0.4, aux_dropout=0.7, crop_padding=4, tta="none", final_tta="shifts", ema=0.0,
    log_every=25, processes=1,
)
# --quick: a few hundred images, one short epoch of a small network.
QUICK_OVERRIDES = dict(epochs=1, width=0.125, stem_stride=2, batch_size=64,
                       train_images=512, test_images=256)

OPTIMIZERS = ("sgd", "adam", "adamw")
SCHEDULES = ("onecycle", "cosine", "paper", "constant")

EXIT_FAILURE = 1           # data, checkpoint or file errors, and a diverged run
EXIT_USAGE = 2
# Interrupted by a signal: 128 + its number (130 Ctrl-C, 143 SIGTERM), the shell's convention.


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
    # Fields added later, with the value that runs saved before them used:
    init: str = "he"        # how the weights start
    crop_padding: int = 4   # random crops of the image zero-padded by this many pixels
    tta: str = "none"       # the views of each test image averaged (TTA_VIEWS)
    final_tta: str = "none"  # ... when the final weights are tested once more
    processes: int = 1      # parts of each training batch, each in a worker process of its own


# Settings that may differ when resuming (where things live, not what is computed).
RESUMABLE_OVERRIDES = ("device", "data", "download", "out", "log_every")

_ema_decay = number(float, lambda v: 0 <= v < 1, "in [0, 1) (0: off)")
_crop_padding = number(int, lambda v: 0 <= v <= 16, "an integer from 0 to 16 (half an image)")
_processes = number(int, lambda v: 1 <= v <= 64, "an integer from 1 to 64")

# What each setting may be: the command line's types and choices, and the check of a saved
# configuration (``check_saved_config``): one rule for both. None: the field may also be None.
RULES = dict(
    device=str, epochs=positive_int, batch_size=positive_int, lr=positive_float,
    optimizer=OPTIMIZERS, momentum=momentum_factor, nesterov=bool,
    weight_decay=non_negative_float, schedule=SCHEDULES, width=width_factor, stem_stride=(1, 2),
    batchnorm=bool, aux=bool, aux_weight=non_negative_float, dropout=probability,
    aux_dropout=probability, label_smoothing=probability, ema=_ema_decay, seed=non_negative_int,
    data=path_text, download=bool, train_images=positive_int, test_images=positive_int,
    eval_batch_size=positive_int, log_every=positive_int, out=path_text, quick=bool, init=INITS,
    crop_padding=_crop_padding, tta=tuple(TTA_VIEWS), final_tta=tuple(TTA_VIEWS),
    processes=_processes)
OPTIONAL = ("train_images", "test_images")     # None: all the images


def check_saved_config(saved: dict, where: str) -> "Config":
    """The Config of a checkpoint's ``saved`` configuration, each value checked by ``RULES``.

    Raises CheckpointError naming ``where`` and the first value that breaks its rule, as the
    command line refuses it: an edited or damaged configuration never reaches the run.
    """
    try:
        config = Config(**saved)
    except TypeError as error:
        raise CheckpointError(f"{where!r}: its configuration does not fit this version "
                              f"of the demo ({error})") from None
    for field in dataclasses.fields(Config):
        value = getattr(config, field.name)
        if value is None and field.name in OPTIONAL:
            continue
        why = invalid(RULES[field.name], value)
        if why is not None:
            raise CheckpointError(f"{where!r}: its configuration has {field.name} {value!r}, "
                                  f"which must be {why}")
    return config


# ==========================================================================
# Command line
# ==========================================================================
def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train GoogLeNet on CIFAR-10 with tinygnet. Options left out take the "
                    "defaults of the device (CPU: GoogLeNet at an eighth of the paper's width; "
                    "GPU: the full-width network); the resolved values are printed "
                    "and saved to OUT/config.json.",
        epilog="Outputs in --out: config.json, metrics.csv, curves.png, per_class.png, "
               "checkpoint.npz (every epoch), best.npz (best test accuracy) and, at the end, "
               "results.json (the final test accuracies and the views they averaged). "
               "Ctrl-C or SIGTERM saves a checkpoint; continue with --resume OUT/checkpoint.npz. "
               "A loss that becomes NaN or infinite stops the run (exit status 1).")
    # Defaults are None: "not given", so device defaults and --resume can tell.
    run = parser.add_argument_group("run")
    run.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                     help="where to train: cuda if a GPU is usable with CuPy, else cpu (default: auto)")
    run.add_argument("--epochs", type=RULES["epochs"], metavar="N",
                     help="passes over the training set" + _defaults("epochs"))
    run.add_argument("--batch-size", type=RULES["batch_size"], metavar="N",
                     help="images per training step" + _defaults("batch_size"))
    run.add_argument("--seed", type=RULES["seed"], metavar="N",
                     help="seed of every random stream (init, shuffling, augmentation, dropout); "
                          "the same seed gives the same run (default: 0)")
    run.add_argument("--quick", action="store_true", default=None,
                     help=f"smoke test in under a minute: {QUICK_OVERRIDES['train_images']} "
                          f"training and {QUICK_OVERRIDES['test_images']} test images, one epoch, "
                          f"width {QUICK_OVERRIDES['width']}; still writes every output")
    run.add_argument("--train-images", type=RULES["train_images"], metavar="N",
                     help="train on the first N training images only (default: all 50000)")
    run.add_argument("--test-images", type=RULES["test_images"], metavar="N",
                     help="test on the first N test images only (default: all 10000)")
    run.add_argument("--eval-batch-size", type=RULES["eval_batch_size"], metavar="N",
                     help="images per step when testing (default: 2 x batch size)")
    run.add_argument("--log-every", type=RULES["log_every"], metavar="N",
                     help="steps between reads of the losses, for the progress bar and to stop "
                          "a diverging run: each read waits for the GPU (default: 1 on the CPU, "
                          "25 on a GPU)")
    run.add_argument("--processes", type=RULES["processes"], metavar="N",
                     help="train each batch in N parts side by side, each in a worker process "
                          "of its own on one core (CPU only). Batch norm normalises each part "
                          "by its own statistics, so N belongs to the recipe, as the batch size "
                          "does; 1: one process and its threads" + _defaults("processes"))
    run.add_argument("--no-progress", dest="progress", action="store_false",
                     help="no progress bar (the per-epoch lines are still printed)")

    model = parser.add_argument_group("model")
    model.add_argument("--width", type=RULES["width"], metavar="X",
                       help="multiplies every channel count; 1 is the paper's GoogLeNet"
                       + _defaults("width"))
    model.add_argument("--stem-stride", type=int, choices=RULES["stem_stride"],
                       help="stride of the first conv: 2 runs the Inception stages at 16/8/4 "
                            "pixels instead of 32/16/8, about 4x cheaper" + _defaults("stem_stride"))
    model.add_argument("--batchnorm", action=argparse.BooleanOptionalAction, default=None,
                       help="batch norm after every conv (not in the 2014 paper; trains much "
                            "faster)" + _defaults("batchnorm"))
    model.add_argument("--init", choices=RULES["init"],
                       help="how the conv and linear layers start: he (N(0, 2/fan_in)), xavier "
                            "(the BVLC Caffe GoogLeNet: U(+-sqrt(3/fan_in)), biases 0.2) or "
                            "gaussian (std 0.01, the AlexNet era); see GoogLeNet's docstring "
                            "(default: he)")
    model.add_argument("--no-aux", dest="aux", action="store_false", default=None,
                       help="leave out the two auxiliary classifiers")
    model.add_argument("--aux-weight", type=RULES["aux_weight"], metavar="X",
                       help="weight of each auxiliary loss in the total; the paper's is 0.3"
                       + _defaults("aux_weight"))
    model.add_argument("--dropout", type=RULES["dropout"], metavar="P",
                       help="dropout before the classifier; the paper's is 0.4" + _defaults("dropout"))
    model.add_argument("--aux-dropout", type=RULES["aux_dropout"], metavar="P",
                       help="dropout inside the auxiliary heads; the paper's is 0.7"
                       + _defaults("aux_dropout"))
    model.add_argument("--crop-padding", type=RULES["crop_padding"], metavar="PIXELS",
                       help="training augmentation: random 32 x 32 crops of each image "
                            "zero-padded by this many pixels (0: no shifts), and random "
                            "mirroring" + _defaults("crop_padding"))
    testing = parser.add_argument_group("testing")
    testing.add_argument("--tta", choices=RULES["tta"],
                       help="test-time augmentation of the test after each epoch: each test "
                            "image is classified by the mean logits of several views of it: "
                            "none (the image), mirror (the image and its left-right mirror, 2 "
                            "forward passes), shifts (those, and both moved one pixel each way, "
                            "6 passes)" + _defaults("tta"))
    testing.add_argument("--final-tta", choices=RULES["final_tta"],
                       help="after the last epoch, test the final weights once more on these "
                            "views (nothing more if they are --tta's)" + _defaults("final_tta"))

    optim = parser.add_argument_group("optimisation")
    optim.add_argument("--optimizer", choices=RULES["optimizer"], help="update rule" + _defaults("optimizer"))
    optim.add_argument("--lr", type=RULES["lr"], metavar="X",
                       help="learning rate: the peak of the one-cycle schedule, else the initial one"
                       + _defaults("lr"))
    optim.add_argument("--momentum", type=RULES["momentum"], metavar="X",
                       help="SGD momentum" + _defaults("momentum"))
    optim.add_argument("--nesterov", action=argparse.BooleanOptionalAction, default=None,
                       help="Nesterov momentum for SGD" + _defaults("nesterov"))
    optim.add_argument("--weight-decay", type=RULES["weight_decay"], metavar="X",
                       help="L2 penalty on conv and linear weights (biases and batch-norm "
                            "parameters are not decayed); decoupled for adamw"
                            + _defaults("weight_decay"))
    optim.add_argument("--schedule", choices=RULES["schedule"],
                       help="learning-rate schedule, stepped every iteration: onecycle (warm-up "
                            "then cosine annealing), cosine, paper (x0.96 every 8 epochs), constant"
                            + _defaults("schedule"))
    optim.add_argument("--label-smoothing", type=RULES["label_smoothing"], metavar="X",
                       help="label smoothing of the cross-entropy targets"
                       + _defaults("label_smoothing"))
    optim.add_argument("--ema", type=RULES["ema"], metavar="DECAY",
                       help="decay of an exponential moving average of the weights (the paper's "
                            "Polyak averaging), used for testing; 0 turns it off" + _defaults("ema"))

    files = parser.add_argument_group("files")
    files.add_argument("--data", type=RULES["data"], metavar="DIR",
                       help="folder holding cifar-10-batches-py/ or cifar-10-python.tar.gz "
                            "(default: $TINYGNET_DATA, else ~/.cache/tinygnet)")
    files.add_argument("--no-download", dest="download", action="store_false", default=None,
                       help="never download CIFAR-10; fail if it is not found")
    files.add_argument("--out", type=RULES["out"], metavar="DIR",
                       help="output folder (default: runs/cifar-DATE-TIME; with --resume, the "
                            "checkpoint's folder)")
    files.add_argument("--resume", type=path_text, metavar="PATH",
                       help="continue the run saved in this checkpoint exactly where it stopped "
                            "(a finished run: its final test again)")
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


def _as_flag(name, value) -> str:
    """A setting as the command line spells it: "--lr 0.1", "--nesterov", "--no-aux"."""
    flag = name.replace("_", "-")
    if isinstance(value, bool):
        return f"--{flag}" if value else f"--no-{flag}"
    return f"--{flag} {value}"


def _saved_value(name, value) -> str:
    """A saved setting for a message: "0.05", "aux on", "batchnorm off"."""
    return f"{name} {'on' if value else 'off'}" if isinstance(value, bool) else str(value)


def config_for_resume(args, saved: dict, checkpoint_path: str) -> Config:
    """The saved configuration; flags that would change the computation are refused."""
    config = check_saved_config(saved, checkpoint_path)
    conflicts = [f"{_as_flag(name, value)} (saved: {_saved_value(name, getattr(config, name))})"
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
# main
# ==========================================================================
def main(argv=None) -> int:
    """Run the demo; returns the exit status: 0, 1 (data, checkpoint or file error, or the run
    diverged), 2 (usage), 130 (Ctrl-C) or 143 (SIGTERM)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    try:
        with sigterm_interrupts(), contextlib.ExitStack() as held:   # held: the --out folder
            return _run(argv, held)
    except KeyboardInterrupt as stop:    # a signal before training started, or a second one
        print(f"\n{PROG}: stopped", file=sys.stderr)
        return exit_status(stop)


def _run(argv, held: contextlib.ExitStack) -> int:
    args = build_parser().parse_args(argv)
    given_out = args.out is not None or args.resume is not None
    try:
        if args.resume:
            state = load_checkpoint(args.resume)
            if state.get("kind") != CHECKPOINT_KIND or "config" not in state:
                raise CheckpointError(f"{args.resume!r} is not a checkpoint of this demo")
            config = config_for_resume(args, state["config"], args.resume)
            continuing = (os.path.abspath(args.resume)
                          == os.path.abspath(os.path.join(config.out, "checkpoint.npz")))
            if continuing and args.overwrite:
                raise UsageError(f"--overwrite would delete the run that --resume continues "
                                 f"({config.out}); leave it out")
        else:
            state, config, continuing = None, resolve_config(args), False
        # Held until the run exits: a second run into it (or --resume of it) is refused.
        config.out = held.enter_context(hold_out_folder(
            config.out, "cifar", OUTPUTS, given=given_out, replace=args.overwrite,
            continuing=continuing, advice=_how_to_continue(config.out),
            resuming=args.resume if continuing else None)).path
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
          f"{_plural(len(trainer.train_loader), 'step')}"
          + (f" (each batch in {config.processes} parts side by side, a process each)"
             if config.processes > 1 else "") + "; testing the main head on "
          f"{TTA_DESCRIPTIONS[config.tta]}"
          + (f", the final weights also on {TTA_DESCRIPTIONS[config.final_tta]}"
             if config.final_tta != config.tta else ""))
    note = more_workers_than_cores(config.processes, "--processes")
    if note:                           # --processes 1 asks for no worker: never a note
        print(note)
    checkpoint = os.path.join(config.out, "checkpoint.npz")
    try:
        config.out = claim_out_folder(config.out, OUTPUTS, replace=args.overwrite)
        checkpoint = os.path.join(config.out, "checkpoint.npz")
        if state is not None:
            repaired = trainer.repair_outputs(args.resume)
            if repaired and continuing:
                print(f"brought up to date with the checkpoint (the run had stopped between two "
                      f"writes): {', '.join(repaired)}")
            elif repaired:
                print(f"written from the checkpoint into {config.out}: {', '.join(repaired)}")
        if not os.path.exists(os.path.join(config.out, "config.json")):
            _write_config(config, argv, params)
        if state is not None and trainer.epoch >= config.epochs:
            print(f"resuming from {args.resume}: the run is already finished "
                  f"({trainer.epoch} of {_plural(config.epochs, 'epoch')}), nothing to train; "
                  f"to train longer, start a new run with a larger --epochs")
            return _finish(trainer, trainer.summary(interrupted=False), checkpoint)
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
    except WorkerDied as error:           # a worker of --processes killed, out of memory...
        print(f"{PROG}: error: {error}; {_what_is_kept(checkpoint)}", file=sys.stderr)
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
    return _finish(trainer, result, checkpoint)


def _finish(trainer, result, checkpoint) -> int:
    """After the last epoch: the final test, results.json, the summary; the exit status."""
    try:
        final = _final_test(trainer)
    except KeyboardInterrupt as stop:
        print(f"\nstopped during the final test. Training finished and is saved in "
              f"{checkpoint}; run the final test again with:\n"
              f"  {PROG} --resume {shlex.quote(checkpoint)}", file=sys.stderr)
        return exit_status(stop)
    write_text(os.path.join(trainer.config.out, "results.json"),
               json.dumps(_results(trainer, result, final), indent=2) + "\n")
    _print_summary(result, trainer.classes, trainer.config, final)
    return 0


def _results(trainer, result, final) -> dict:
    """results.json: the run's accuracies, each with the views of every test image it averaged
    (TTA_VIEWS: (rows moved, columns moved, mirrored)). ``final_test`` is the headline number:
    the final weights on --final-tta's views."""
    config = trainer.config

    def views(tta):
        return {"tta": tta, "views": [list(view) for view in TTA_VIEWS[tta]]}

    accuracy, seconds = final if final is not None else (result["final_test_acc"], None)
    return {"epochs": result["epochs"], "test_images": len(trainer.test_loader.labels),
            "final_test": {**views(config.final_tta), "accuracy": accuracy, "seconds": seconds},
            "each_epoch": {**views(config.tta), "final": result["final_test_acc"],
                           "best": result["best_test_acc"], "best_epoch": result["best_epoch"]}}


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
    record = {"demo": "cifar", "config": dataclasses.asdict(config),
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
        return f"CPU ({_plural(usable_cores(), 'core')})"
    cupy = backend.cupy_or_none()
    index = int(device.split(":")[1])
    name = cupy.cuda.runtime.getDeviceProperties(index)["name"]
    return f"{device} ({name.decode() if isinstance(name, bytes) else name})"


def _final_test(trainer) -> tuple | None:
    """(accuracy, seconds) of the final weights on --final-tta's views; None when those
    are --tta's. The last epoch's test has usually run them already (``Trainer.final_test``:
    it went on from --tta's views through the extra ones); a resumed finished run tests again."""
    if trainer.config.final_tta == trainer.config.tta:
        return None
    if trainer.final_test is not None:
        return trainer.final_test
    print(f"testing the final weights on {TTA_DESCRIPTIONS[trainer.config.final_tta]}...", flush=True)
    started = time.perf_counter()
    accuracy = trainer.evaluate(views=trainer.config.final_tta)[0]
    return accuracy, time.perf_counter() - started


def _print_summary(result, classes, config, final_views_acc=None) -> None:
    minutes, seconds = divmod(result["seconds"], 60)
    print(f"\nfinal test accuracy {100 * result['final_test_acc']:.2f}%, best "
          f"{100 * result['best_test_acc']:.2f}% (epoch {result['best_epoch']}), on "
          f"{TTA_DESCRIPTIONS[config.tta]}; {int(minutes)} min {seconds:.0f} s")
    if config.aux and result.get("final_aux_test_acc"):
        aux1, aux2 = (100 * acc for acc in result["final_aux_test_acc"])
        print(f"the aux heads alone, final epoch, on the image alone: aux1 (inception4a) "
              f"{aux1:.2f}%, aux2 (inception4d) {aux2:.2f}%")
    if final_views_acc is not None:
        accuracy, seconds = final_views_acc
        print(f"final weights on {TTA_DESCRIPTIONS[config.final_tta]}: test accuracy "
              f"{100 * accuracy:.2f}% ({seconds:.0f} s)")
    confusion = result["confusion"]
    if confusion is not None:
        print("\nper-class test accuracy (final epoch):")
        totals = confusion.sum(axis=1)
        for name, right, total in zip(classes, np.diag(confusion), totals):
            accuracy = right / total if total else math.nan
            print(f"  {name:<12} {100 * accuracy:6.2f}%  ({right}/{total})")
    print(f"\noutputs in {config.out}: config.json, metrics.csv, curves.png, per_class.png, "
          f"checkpoint.npz, best.npz, results.json")


if __name__ == "__main__":
    sys.exit(main())
