"""``python -m tinygnet.demo gradflow``: do GoogLeNet's auxiliary heads rescue a vanishing gradient?

    python -m tinygnet.demo gradflow --quick       # under a minute on a CPU
    python -m tinygnet.demo gradflow               # under 15 minutes on a 2-core CPU

The paper (section 5) adds two auxiliary classifiers because "the ability to
propagate gradients back through all the layers in an effective manner was
a concern" in a 22-layer network. Whether it is a concern depends on how the
network starts (see ``GoogLeNet``'s docstring for each scheme's variance
argument). This demo measures it in the 2014 setting (no batch norm, dropout
on, the cifar config, SGD with momentum) for each initialisation in
``--init``: the fixed-std ``gaussian`` of the original training, the
``xavier`` of the BVLC Caffe replication, and ``he`` as today's reference.
For each initialisation and each seed, two runs start from the same initial
weights and see the same batches:

  (a) with the aux heads, loss = main + aux_weight * (aux1 + aux2);
  (b) without them (the same weights minus the two heads), loss = main.

Every step records each layer's gradient norm (``tinygnet.diagnostics``);
every ``--split-every`` steps run (a) backpropagates its three losses one
at a time to see how much of each layer's gradient comes from each head.
After training, each run's main head is scored on ``--test-images`` test
images. With several seeds, the plots show the mean and the range (min to
max) over seeds: one seed cannot tell a difference of a point from noise.

Outputs in ``--out``:

* ``gradflow.png``: per initialisation, each layer's gradient norm divided
  by fc's, in network order, at step 0 and at the end of training, with and
  without the aux heads (top); conv1's divided by fc's over training (bottom);
* ``gradflow_training.png``: the main training loss over the steps, and the
  test accuracy of every run;
* ``gradflow_split.png``: in the runs with aux heads, each head's gradient
  per layer at step 0, and each head's share of the gradient at conv1 over
  training;
* ``gradflow.csv``: every number behind the plots, one per row
  (``init, run, seed, step, quantity, layer, value``; the plotted means and
  ranges over seeds have seed ``mean``, ``min`` or ``max``);
* ``config.json``; and a summary printed at the end.

Defaults (sized to stay under 15 minutes on an idle 2-core CPU; the README
gives the time measured there): a network at an eighth of the paper's width
(``--width 0.125``) with ``--stem-stride 2`` (Inception stages at 16, 8 and 4
pixels), batches of 64, SGD lr 0.01 with momentum 0.9 (the paper's momentum;
without batch norm the gradients at initialisation are large, so the rate
stays small), 300 steps per run, the three initialisations, 2 seeds.
"""
from __future__ import annotations

import argparse
import contextlib
import csv
import dataclasses
import io
import json
import math
import os
import sys
import time

import numpy as np
from tqdm.auto import tqdm

from .. import backend
from ..data import CIFAR10, DataLoader, DatasetError, Normalize, resolve_data_root
from ..diagnostics import GradientMonitor, split_backward
from ..models import INITS, GoogLeNet, googlenet_loss
from ..optim import SGD
from ..tensor import Tensor, no_grad
from .common import (TrainingDiverged, UsageError, claim_out_folder, default_out_folder,
                     describe_loss, exit_status, hold_out_folder, momentum_factor,
                     non_negative_float, non_negative_int, path_text, positive_float, positive_int,
                     probability, resolve_device, sigterm_interrupts, width_factor, write_text)
from .plots import new_figure, save_figure

PROG = "python -m tinygnet.demo gradflow"

DEFAULTS = dict(init=("gaussian", "xavier", "he"), seeds=2, seed=0, steps=300, batch_size=64,
                width=0.125, stem_stride=2, lr=0.01, momentum=0.9, aux_weight=0.3, dropout=0.4,
                aux_dropout=0.7, split_every=25, test_images=1000, train_images=None)
QUICK_OVERRIDES = dict(steps=24, batch_size=32, width=0.0625, seeds=1, split_every=8,
                       test_images=256, train_images=2048)
RUNS = ("aux", "no_aux")
RUN_LABELS = {"aux": "with aux heads", "no_aux": "without aux heads"}
AUX_HEADS = ("aux1", "aux2")                # GoogLeNet's auxiliary heads: top-level layers
HEADS = ("main",) + AUX_HEADS               # the three terms of the loss
FIRST, LAST = "conv1", "fc"                 # the ends of the network, input and output
OUTPUTS = ("gradflow.png", "gradflow_training.png", "gradflow_split.png", "gradflow.csv",
           "config.json")                  # in --out

EXIT_FAILURE = 1          # data or file errors, and a diverged run
EXIT_USAGE = 2


# ==========================================================================
# Command line
# ==========================================================================
def inits(text: str) -> tuple:
    """An argparse type: a comma-separated list of initialisations, each once."""
    names = tuple(dict.fromkeys(name.strip() for name in text.split(",")))
    unknown = [name for name in names if name not in INITS]
    if unknown or not names:
        raise argparse.ArgumentTypeError(f"{text!r}: expected one or more of "
                                         f"{', '.join(INITS)}, separated by commas")
    return names


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train GoogLeNet without batch norm from each initialisation, with and "
                    "without the auxiliary heads from the same initial weights, and measure "
                    "the gradient reaching each layer.",
        epilog="Outputs in --out: gradflow.png, gradflow_training.png, gradflow_split.png, "
               "gradflow.csv, config.json.")
    d = DEFAULTS

    def add(name, help, default_text=None, **kwargs):
        key = name.lstrip("-").replace("-", "_")
        default = d[key] if default_text is None else default_text
        parser.add_argument(name, default=None, help=f"{help} (default: {default})", **kwargs)

    parser.add_argument("--quick", action="store_true",
                        help=f"a smoke run of under a minute: {QUICK_OVERRIDES['steps']} steps of "
                             f"{QUICK_OVERRIDES['batch_size']} images, width "
                             f"{QUICK_OVERRIDES['width']}, one seed")
    add("--init", "initialisations to compare, separated by commas: gaussian (std 0.01, the "
        "original 2014 training), xavier (the BVLC Caffe replication), he (today's)",
        default_text=",".join(d["init"]), type=inits, metavar="LIST")
    add("--seeds", "seeds per initialisation (--seed, --seed + 1, ...): the spread over them "
        "is shown", type=positive_int, metavar="N")
    add("--seed", "the first seed: initial weights, batches and dropout", type=non_negative_int,
        metavar="N")
    add("--steps", "training steps of each run", type=positive_int, metavar="N")
    add("--batch-size", "images per step", type=positive_int, metavar="N")
    add("--width", "multiplies every channel count; 1 is the paper's network",
        type=width_factor, metavar="X")
    add("--stem-stride", "stride of conv1; 2 runs the Inception stages at 16/8/4 pixels",
        type=int, choices=(1, 2))
    add("--lr", "SGD learning rate (constant)", type=positive_float, metavar="X")
    add("--momentum", "SGD momentum", type=momentum_factor, metavar="X")
    add("--aux-weight", "weight of each aux loss in run (a); the paper's is 0.3",
        type=non_negative_float, metavar="X")
    add("--dropout", "dropout before the main classifier; the paper's is 0.4",
        type=probability, metavar="P")
    add("--aux-dropout", "dropout inside the aux heads; the paper's is 0.7",
        type=probability, metavar="P")
    add("--split-every", "steps between per-head splits in run (a); a split step backpropagates "
        "the three losses one by one, costing about twice a normal step", type=positive_int,
        metavar="N")
    add("--train-images", "use the first N training images only", default_text="all 50000",
        type=positive_int, metavar="N")
    add("--test-images", "test images for the final accuracy of each run; 0 skips it",
        type=non_negative_int, metavar="N")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="cuda if a GPU is usable with CuPy, else cpu (default: auto)")
    parser.add_argument("--data", type=path_text, metavar="DIR",
                        help="folder holding cifar-10-batches-py/ or cifar-10-python.tar.gz "
                             "(default: $TINYGNET_DATA, else ~/.cache/tinygnet)")
    parser.add_argument("--no-download", dest="download", action="store_false",
                        help="never download CIFAR-10; fail if it is not found")
    parser.add_argument("--out", type=path_text, metavar="DIR",
                        help="output folder (default: runs/gradflow-DATE-TIME)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in an --out that holds an earlier run, replacing its "
                             "outputs (without it, such an --out is refused)")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bars")
    return parser


@dataclasses.dataclass
class Config:
    init: tuple
    seeds: int
    seed: int
    steps: int
    batch_size: int
    width: float
    stem_stride: int
    lr: float
    momentum: float
    aux_weight: float
    dropout: float
    aux_dropout: float
    split_every: int
    train_images: int | None
    test_images: int
    device: str
    data: str
    download: bool
    out: str
    quick: bool

    @property
    def window(self) -> int:
        """Steps averaged for "the end of training" and for smoothing (single steps are noisy)."""
        return max(1, self.steps // 10)

    @property
    def seed_list(self) -> list:
        return list(range(self.seed, self.seed + self.seeds))


def resolve_config(args) -> Config:
    """DEFAULTS, then --quick's overrides, then the flags given."""
    values = dict(DEFAULTS)
    if args.quick:
        values.update(QUICK_OVERRIDES)
    values.update({k: v for k, v in vars(args).items() if k in DEFAULTS and v is not None})
    return Config(**values, device=resolve_device(args.device), data=resolve_data_root(args.data),
                  download=args.download, quick=args.quick,
                  out=args.out or default_out_folder("gradflow"))


# ==========================================================================
# The experiment
# ==========================================================================
@dataclasses.dataclass
class RunResult:
    """What one run measured. Rows of ``grad_norms`` are steps, columns ``layers``."""
    init: str
    run: str                    # "aux" or "no_aux"
    seed: int
    layers: list                # network order; the aux heads last, in run (a) only
    losses: np.ndarray          # steps x 4: total, main, aux1, aux2 (NaN when absent)
    grad_norms: np.ndarray      # steps x layers: ||g|| of each layer's parameters
    splits: list                # [(step, {layer: LayerSplit})], run (a) only
    test_acc: float | None
    seconds: float

    @property
    def label(self) -> str:
        return f"{self.init}, {RUN_LABELS[self.run]}, seed {self.seed}"

    def norms(self, layer) -> np.ndarray:
        """The gradient norm of ``layer`` at every step."""
        return self.grad_norms[:, self.layers.index(layer)]

    @property
    def trunk(self) -> list:
        return [layer for layer in self.layers if layer not in AUX_HEADS]


def build_models(config: Config, init: str, seed: int):
    """Two networks with the same initial weights: (a) with aux heads, (b) without."""
    backend.manual_seed(seed)
    options = dict(num_classes=10, config="cifar", width=config.width, batchnorm=False,
                   stem_stride=config.stem_stride, dropout=config.dropout,
                   aux_dropout=config.aux_dropout, init=init)
    with_aux = GoogLeNet(aux=True, **options)
    without_aux = GoogLeNet(aux=False, **options)
    heads = tuple(f"{name}." for name in AUX_HEADS)
    state = {k: v for k, v in with_aux.state_dict().items() if not k.startswith(heads)}
    without_aux.load_state_dict(state)          # strict: every trunk weight copied
    return with_aux.to(config.device), without_aux.to(config.device)


def train_run(model, init: str, run: str, seed: int, config: Config, images, labels,
              progress=True) -> RunResult:
    """``config.steps`` steps of SGD, recording losses and per-layer gradient norms each step."""
    xp = backend.cupy_or_none() if config.device != "cpu" else np
    aux = run == "aux"
    # The same dropout stream to start with. Run (a)'s aux heads draw their masks from it
    # too, so with dropout on the two runs' masks differ from the first step.
    backend.manual_seed(seed + 1)
    optimizer = SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    monitor = GradientMonitor(model)
    trunk = [layer for layer in dict.fromkeys(monitor.layers) if layer not in AUX_HEADS]
    label = f"{init}, {RUN_LABELS[run]}, seed {seed}"
    model.train()
    losses, splits = [], []
    started = time.perf_counter()
    bar = tqdm(total=config.steps, desc=label, unit="step", leave=False, disable=not progress,
               dynamic_ncols=True)
    with bar:
        for step, (batch, y) in zip(range(config.steps), batches(images, labels, config, seed)):
            x = Tensor(backend.to_device(batch, config.device))          # N x 3 x 32 x 32
            y = backend.to_device(y, config.device)                       # N
            parts = googlenet_loss(model(x), y, aux_weight=config.aux_weight)
            optimizer.zero_grad()
            if aux and step % config.split_every == 0:
                terms = {"main": (parts.main, 1.0), "aux1": (parts.aux1, config.aux_weight),
                         "aux2": (parts.aux2, config.aux_weight)}
                splits.append((step, split_backward(model, terms, trunk)))
            else:
                parts.total.backward()
            monitor.record(step)
            optimizer.step()
            nan = xp.asarray(math.nan, dtype=parts.main.dtype)
            losses.append(xp.stack([nan if p is None else p.data for p in parts]))
            if not math.isfinite(float(parts.total.item())):     # a host sync, as record()'s
                values = [None if p is None else float(p.item()) for p in parts]
                raise TrainingDiverged(f"run {label!r} diverged: the loss is "
                                       f"{describe_loss(values)} at step {step + 1} of {config.steps}")
            if step % 10 == 0 or step == config.steps - 1:
                bar.set_postfix_str(f"loss {float(parts.total.item()):.3f}", refresh=False)
            bar.update()
    seconds = time.perf_counter() - started
    losses = backend.to_numpy(xp.stack(losses)).astype(np.float64)
    layers = list(monitor.history[0].by_layer())
    tables = [record.by_layer() for record in monitor.history]
    grad_norms = np.array([[t[layer]["grad_norm"] for layer in layers] for t in tables])
    return RunResult(init, run, seed, layers, losses, grad_norms, splits, None, seconds)


def batches(images, labels, config: Config, seed: int):
    """Shuffled batches forever, epoch after epoch, in an order set by ``seed``."""
    loader = DataLoader((images, labels), config.batch_size, shuffle=True, augment=False,
                        seed=seed, drop_last=True)
    while True:
        yield from loader


def evaluate_accuracy(model, config: Config, images, labels) -> float:
    """Accuracy of the main head, eval mode, on ``images`` (uint8, unaugmented)."""
    model.eval()
    normalise = Normalize()          # the DataLoader's normalisation
    correct = 0
    with no_grad():
        for start in range(0, len(labels), 256):
            x = Tensor(backend.to_device(normalise(images[start:start + 256]), config.device))
            predicted = backend.to_numpy(model(x).data.argmax(axis=1))
            correct += int((predicted == labels[start:start + 256]).sum())
    model.train()
    return correct / max(len(labels), 1)


def run_experiment(config: Config, train, test=None, progress=True, log=print) -> dict:
    """Every run of the grid; returns {(init, run, seed): RunResult}.

    Raises ``TrainingDiverged`` as soon as a run's loss is not finite.
    """
    images, labels = train
    results = {}
    for seed in config.seed_list:
        for init in config.init:
            models = build_models(config, init, seed)
            for run, model in zip(RUNS, models):
                result = train_run(model, init, run, seed, config, images, labels,
                                   progress=progress)
                if test is not None and config.test_images > 0:
                    result.test_acc = evaluate_accuracy(model, config, *test)
                accuracy = "" if result.test_acc is None else f", test accuracy {result.test_acc:.1%}"
                log(f"{result.label}: {config.steps} steps in {result.seconds:.1f} s, main loss "
                    f"{result.losses[-1, 1]:.3f}{accuracy}")
                results[init, run, seed] = result
    return results


# ==========================================================================
# Measurements derived from the runs
# ==========================================================================
def late_steps(config: Config) -> range:
    """"The end of training": the last ``window`` steps."""
    return range(max(0, config.steps - config.window), config.steps)


def smooth(values, window):
    """Moving average over ``window`` steps (shorter at the start)."""
    cumulative = np.concatenate([[0.0], np.cumsum(values)])
    steps = np.arange(1, len(values) + 1)
    start = np.maximum(0, steps - window)
    return (cumulative[steps] - cumulative[start]) / (steps - start)


def profile(result: RunResult, steps) -> np.ndarray:
    """Each trunk layer's gradient norm over fc's: the means over ``steps`` divided."""
    means = result.grad_norms[list(steps)].mean(axis=0)
    return np.array([means[result.layers.index(layer)] for layer in result.trunk]) / \
        means[result.layers.index(LAST)]


def first_over_last(result: RunResult, config: Config) -> np.ndarray:
    """conv1's gradient norm over fc's at every step, smoothed over ``window`` steps."""
    return smooth(result.norms(FIRST) / result.norms(LAST), config.window)


def aux_share(split: dict, layer=FIRST) -> float:
    """The part of ``layer``'s gradient that the aux heads supply (their shares added)."""
    return sum(split[layer].shares[head] for head in AUX_HEADS)


def spread(values) -> dict:
    """Mean, min and max over seeds (arrays: elementwise)."""
    stacked = np.array(values, dtype=np.float64)
    return {"mean": stacked.mean(axis=0), "min": stacked.min(axis=0), "max": stacked.max(axis=0)}


def over_seeds(results, config: Config, init, run, measure) -> dict:
    """``spread`` of ``measure(result)`` over the seeds of one (init, run) cell."""
    return spread([measure(results[init, run, seed]) for seed in config.seed_list])


def cell_summary(results, config: Config, init, run) -> dict:
    """The numbers the summary and the README quote for one (init, run) cell, over seeds."""
    late = late_steps(config)
    first = range(0, config.window)

    def at(steps, layer):
        return lambda r: r.grad_norms[list(steps), r.layers.index(layer)].mean()

    numbers = {
        "first_over_last_step0": over_seeds(results, config, init, run,
                                            lambda r: r.norms(FIRST)[0] / r.norms(LAST)[0]),
        "first_over_last_late": over_seeds(results, config, init, run,
                                           lambda r: at(late, FIRST)(r) / at(late, LAST)(r)),
        "first_step0": over_seeds(results, config, init, run, lambda r: r.norms(FIRST)[0]),
        "last_step0": over_seeds(results, config, init, run, lambda r: r.norms(LAST)[0]),
        "loss_first": over_seeds(results, config, init, run,
                                 lambda r: r.losses[list(first), 1].mean()),
        "loss_late": over_seeds(results, config, init, run,
                                lambda r: r.losses[list(late), 1].mean()),
    }
    if all(results[init, run, s].test_acc is not None for s in config.seed_list):
        numbers["test_acc"] = over_seeds(results, config, init, run, lambda r: r.test_acc)
    if run == "aux":
        numbers["aux_share_step0"] = over_seeds(results, config, init, run,
                                                lambda r: aux_share(r.splits[0][1]))
        numbers["aux_share_late"] = over_seeds(
            results, config, init, run,
            lambda r: np.mean([aux_share(split) for _, split in late_splits(r.splits, config)]))
    return numbers


def late_splits(splits, config: Config) -> list:
    """The splits of the second half of training (past the first steps' transient), at least one."""
    late = [(step, split) for step, split in splits if step >= config.steps // 2]
    return late or splits[-1:]


# ==========================================================================
# Outputs
# ==========================================================================
def csv_rows(results, config: Config):
    """Every measured and plotted number as (init, run, seed, step, quantity, layer, value)."""
    for (init, run, seed), r in results.items():
        for step, parts in enumerate(r.losses):
            for quantity, value in zip(("loss_total", "loss_main", "loss_aux1", "loss_aux2"), parts):
                if not math.isnan(value):
                    yield init, run, seed, step, quantity, "", value
        for step in range(len(r.grad_norms)):
            for k, layer in enumerate(r.layers):
                yield init, run, seed, step, "grad_norm", layer, r.grad_norms[step, k]
        for step, split in r.splits:
            for layer, s in split.items():
                yield init, run, seed, step, "split_total_norm", layer, s.total_norm
                for head in s.norms:
                    yield init, run, seed, step, f"split_norm_{head}", layer, s.norms[head]
                    yield init, run, seed, step, f"split_share_{head}", layer, s.shares[head]
                for pair, value in s.cosines.items():
                    yield init, run, seed, step, f"split_cos_{pair.replace('/', '_')}", layer, value
        if r.test_acc is not None:
            yield init, run, seed, config.steps - 1, "test_acc", "", r.test_acc
        yield init, run, seed, config.steps - 1, "train_seconds", "", r.seconds
    yield from plotted_rows(results, config)


def plotted_rows(results, config: Config):
    """The plotted means and ranges over seeds (seed "mean", "min", "max")."""
    late = late_steps(config)
    for init in config.init:
        for run in RUNS:
            some = results[init, run, config.seed]
            series = {
                "profile_step0": (over_seeds(results, config, init, run,
                                             lambda r: profile(r, [0])), some.trunk, None),
                f"profile_steps_{late[0]}_{late[-1]}": (
                    over_seeds(results, config, init, run, lambda r: profile(r, late)),
                    some.trunk, None),
                f"{FIRST}_over_{LAST}_smoothed": (
                    over_seeds(results, config, init, run, lambda r: first_over_last(r, config)),
                    None, range(config.steps)),
                "loss_main_smoothed": (
                    over_seeds(results, config, init, run,
                               lambda r: smooth(r.losses[:, 1], config.window)),
                    None, range(config.steps)),
            }
            if run == "aux":
                steps = [step for step, _ in some.splits]
                for head in HEADS:
                    series[f"split_share_{head}_{FIRST}"] = (over_seeds(
                        results, config, init, run,
                        lambda r: [split[FIRST].shares[head] for _, split in r.splits]), None, steps)
                    series[f"split_norm_{head}_step0"] = (over_seeds(
                        results, config, init, run,
                        lambda r: [r.splits[0][1][layer].norms[head] for layer in r.trunk]),
                        some.trunk, None)
            if some.test_acc is not None:
                series["test_acc"] = (over_seeds(results, config, init, run,
                                                 lambda r: [r.test_acc]), None, [config.steps - 1])
            for quantity, (stats, layers, steps) in series.items():
                for statistic, values in stats.items():
                    for k, value in enumerate(values):
                        layer = layers[k] if layers is not None else ""
                        step = steps[k] if steps is not None else (0 if "step0" in quantity
                                                                   else late[-1])
                        yield init, run, statistic, step, quantity, layer, value


def write_csv(results, config: Config, path) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["init", "run", "seed", "step", "quantity", "layer", "value"])
    for init, run, seed, step, quantity, layer, value in csv_rows(results, config):
        writer.writerow([init, run, seed, step, quantity, layer, f"{float(value):.6g}"])
    write_text(path, text.getvalue())


RUN_STYLE = {"aux": dict(color="C0", marker="o"), "no_aux": dict(color="C3", marker="s")}
INIT_COLORS = {"gaussian": "C2", "xavier": "C1", "he": "C0"}


def _band(axes, x, stats, color, **kwargs):
    """The seeds' mean as a line, their range as a shaded band (when there is one)."""
    line = axes.plot(x, stats["mean"], color=color, **kwargs)
    if np.any(stats["max"] > stats["min"]):
        axes.fill_between(x, stats["min"], stats["max"], color=color, alpha=0.15, linewidth=0)
    return line


def _per_layer_panel(axes, layers, title, ylabel):
    """Finish a panel of one value per layer: network order on x, log scale on y."""
    axes.set_yscale("log")
    axes.set_xticks(np.arange(len(layers)), layers, rotation=60, ha="right")
    axes.set(title=title, ylabel=ylabel)
    axes.grid(alpha=0.3, which="both")
    axes.legend(fontsize=7)


def _seeds_note(config: Config) -> str:
    if config.seeds == 1:
        return f"seed {config.seed}"
    return f"mean of {config.seeds} seeds, band: min to max"


def plot_gradflow(results, config: Config, path) -> None:
    """Per init: gradient per layer over fc's (step 0, end), and conv1's over fc's over training."""
    late = late_steps(config)
    n = len(config.init)
    figure = new_figure(6 * n, 9)
    axes = figure.subplots(2, n, squeeze=False, sharey="row")
    for column, init in enumerate(config.init):
        profiles, history = axes[0, column], axes[1, column]
        trunk = results[init, "aux", config.seed].trunk
        x = np.arange(len(trunk))
        for run in RUNS:
            style = RUN_STYLE[run]
            for steps, dashes, when in [([0], "-", "step 0"),
                                        (late, "--", f"steps {late[0]}-{late[-1]}")]:
                stats = over_seeds(results, config, init, run, lambda r: profile(r, steps))
                _band(profiles, x, stats, style["color"], linestyle=dashes, marker=style["marker"],
                      markersize=3, label=f"{RUN_LABELS[run]}, {when}")
            stats = over_seeds(results, config, init, run, lambda r: first_over_last(r, config))
            _band(history, np.arange(config.steps), stats, style["color"], label=RUN_LABELS[run])
        _per_layer_panel(profiles, trunk, f"init {init}: gradient norm per layer / fc's",
                         "||g|| of the layer / ||g|| of fc" if column == 0 else None)
        history.set_yscale("log")
        history.set(xlabel="step", title=f"init {init}: {FIRST} / {LAST} over training "
                    f"(mean of {config.window} steps)",
                    ylabel=f"||g|| of {FIRST} / ||g|| of {LAST}" if column == 0 else None)
        history.grid(alpha=0.3, which="both")
        history.legend(fontsize=8)
    figure.suptitle(f"GoogLeNet without batch norm, width {config.width}: does the gradient "
                    f"reach the first layers? ({_seeds_note(config)})")
    save_figure(figure, path)


def plot_training(results, config: Config, path) -> None:
    """The main loss over training per (init, run), and each run's test accuracy."""
    figure = new_figure(14, 5)
    loss, accuracy = figure.subplots(1, 2, width_ratios=[1.5, 1])
    steps = np.arange(config.steps)
    for init in config.init:
        for run in RUNS:
            stats = over_seeds(results, config, init, run,
                               lambda r: smooth(r.losses[:, 1], config.window))
            _band(loss, steps, stats, INIT_COLORS[init], linestyle="-" if run == "aux" else "--",
                  label=f"{init}, {RUN_LABELS[run]}")
    loss.axhline(math.log(10), color="gray", linewidth=1, linestyle=":")
    loss.text(0, math.log(10), " ln 10: a uniform guess", va="bottom", fontsize=8, color="gray")
    loss.set(xlabel="step", ylabel="main cross-entropy",
             title=f"main training loss (mean of {config.window} steps; {_seeds_note(config)})")
    loss.legend(fontsize=8)
    loss.grid(alpha=0.3)

    tested = [init for init in config.init
              if all(results[init, run, s].test_acc is not None for run in RUNS
                     for s in config.seed_list)]
    for i, init in enumerate(tested):
        for j, run in enumerate(RUNS):
            values = [100 * results[init, run, s].test_acc for s in config.seed_list]
            position = i + (j - 0.5) * 0.36
            accuracy.bar(position, np.mean(values), width=0.34, color=INIT_COLORS[init],
                         alpha=1.0 if run == "aux" else 0.45,
                         label=RUN_LABELS[run] if i == 0 else None)
            accuracy.plot([position] * len(values), values, "k.", markersize=5)
    accuracy.axhline(10, color="gray", linewidth=1, linestyle=":")
    accuracy.set_xticks(range(len(tested)), tested)
    accuracy.set(ylabel="test accuracy (%)", title=f"test accuracy, main head, "
                 f"{config.test_images} images\n(bars: mean; dots: seeds; dotted: chance)")
    accuracy.legend(fontsize=8)
    accuracy.grid(alpha=0.3, axis="y")
    save_figure(figure, path)


def plot_split(results, config: Config, path) -> None:
    """Runs with aux heads: each head's gradient per layer at step 0, and its share at conv1."""
    n = len(config.init)
    figure = new_figure(6 * n, 9)
    axes = figure.subplots(2, n, squeeze=False)
    for column, init in enumerate(config.init):
        per_layer, shares = axes[0, column], axes[1, column]
        some = results[init, "aux", config.seed]
        trunk = some.trunk
        x = np.arange(len(trunk))
        steps = [step for step, _ in some.splits]
        for k, head in enumerate(HEADS):
            weight = "" if head == "main" else f" x {config.aux_weight}"
            stats = over_seeds(results, config, init, "aux",
                               lambda r: [r.splits[0][1][layer].norms[head] for layer in trunk])
            reached = {key: np.where(stats["mean"] > 0, value, np.nan)
                       for key, value in stats.items()}
            _band(per_layer, x, reached, f"C{k}", marker="o", markersize=3,
                  label=f"{head}{weight}")
            stats = over_seeds(results, config, init, "aux",
                               lambda r: [100 * split[FIRST].shares[head] for _, split in r.splits])
            _band(shares, steps, stats, f"C{k}", marker="o", markersize=3, label=head)
        _per_layer_panel(per_layer, trunk, f"init {init}: gradient from each loss at step 0",
                         "norm of the loss's gradient" if column == 0 else None)
        shares.axhline(0, color="gray", linewidth=1)
        shares.set(xlabel="step", title=f"init {init}: each loss's share of {FIRST}'s gradient",
                   ylabel="share (%)" if column == 0 else None)
        shares.grid(alpha=0.3)
        shares.legend(fontsize=8)
    figure.suptitle(f"where the gradient of the early layers comes from, runs with aux heads "
                    f"(aux losses weighted by {config.aux_weight}; {_seeds_note(config)})")
    save_figure(figure, path)


def _range(stats, form) -> str:
    """"mean" or "mean [min, max]" for several seeds."""
    mean = format(float(stats["mean"]), form)
    if stats["min"] == stats["max"]:
        return mean
    return f"{mean} [{format(float(stats['min']), form)}, {format(float(stats['max']), form)}]"


def summary_lines(results, config: Config) -> list:
    """The printed summary: per init, a table of the two runs (gradient, losses, accuracy, split)."""
    late = late_steps(config)
    split_steps = [step for step, _ in late_splits(results[config.init[0], "aux", config.seed].splits,
                                                   config)]
    lines = [f"{_plural(config.seeds, 'seed')} ({', '.join(map(str, config.seed_list))}): each "
             f"cell is the mean over seeds" + (", [min, max] after it" if config.seeds > 1 else ""),
             f"(ln 10 = {math.log(10):.3f} is the loss of a uniform guess; 10% accuracy is chance)",
             f"(aux share: the part of {FIRST}'s gradient that aux1 and aux2 supply together)"]
    for init in config.init:
        cells = {run: cell_summary(results, config, init, run) for run in RUNS}
        lines.append("")
        lines.append(f"init {init:<43}" + "".join(f"{RUN_LABELS[run]:<31}" for run in RUNS).rstrip())

        def row(text, key, form, scale=1, unit=""):
            values = [_range({k: scale * v for k, v in cells[run][key].items()}, form) + unit
                      if key in cells[run] else "-" for run in RUNS]
            lines.append(f"  {text:<46}" + "".join(f"{value:<31}" for value in values).rstrip())

        row(f"gradient norm {FIRST} / {LAST}, step 0", "first_over_last_step0", ".2e")
        row(f"gradient norm {FIRST} / {LAST}, steps {late[0]}-{late[-1]}", "first_over_last_late",
            ".2e")
        row(f"main loss, steps 0-{config.window - 1}", "loss_first", ".3f")
        row(f"main loss, steps {late[0]}-{late[-1]}", "loss_late", ".3f")
        if "test_acc" in cells["aux"]:
            row(f"test accuracy, {config.test_images} images", "test_acc", ".1f", 100, "%")
        row(f"aux share of {FIRST}'s gradient, step 0", "aux_share_step0", ".0f", 100, "%")
        row(f"aux share of {FIRST}'s gradient, steps {split_steps[0]}-{split_steps[-1]}",
            "aux_share_late", ".0f", 100, "%")
    return lines


def _plural(n, word):
    return f"{n} {word}" + ("" if n == 1 else "s")


# ==========================================================================
# main
# ==========================================================================
def main(argv=None) -> int:
    """Run the experiment; returns the exit status: 0, 1 (data or file error, or a run diverged),
    2 (usage), 130 (Ctrl-C) or 143 (SIGTERM)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        with sigterm_interrupts(), contextlib.ExitStack() as held:   # held: the --out folder
            return _run(args, argv, held)
    except KeyboardInterrupt as stop:
        print(f"\n{PROG}: stopped", file=sys.stderr)
        return exit_status(stop)


def _run(args, argv, held: contextlib.ExitStack) -> int:
    try:
        config = resolve_config(args)
        # Held until the run exits: a second run into it is refused.
        config.out = held.enter_context(hold_out_folder(
            config.out, "gradflow", OUTPUTS, given=args.out is not None,
            replace=args.overwrite)).path
    except UsageError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    try:
        train = CIFAR10(config.data, train=True, download=config.download)
        test = (CIFAR10(config.data, train=False, download=config.download)
                if config.test_images else None)
    except DatasetError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return EXIT_FAILURE
    n = config.train_images
    train_arrays = (train.images[:n], train.labels[:n])
    test_arrays = None if test is None else (test.images[:config.test_images],
                                             test.labels[:config.test_images])
    if len(train_arrays[1]) < config.batch_size:
        print(f"{PROG}: error: {len(train_arrays[1])} training images, fewer than one batch of "
              f"{config.batch_size}", file=sys.stderr)
        return EXIT_USAGE

    print(f"tinygnet gradflow on {config.device}: GoogLeNet (no batch norm) width {config.width}, "
          f"stem stride {config.stem_stride}; init {', '.join(config.init)}; "
          f"{_plural(config.seeds, 'seed')}; {config.steps} steps of {config.batch_size} images, "
          f"SGD lr {config.lr} momentum {config.momentum}; for each init and seed, run (a) with "
          f"aux heads (weight {config.aux_weight}) and run (b) without, same initial weights")
    started = time.perf_counter()
    try:
        config.out = claim_out_folder(config.out, OUTPUTS, replace=args.overwrite)
        record = {"demo": "gradflow", "config": dataclasses.asdict(config),
                  "command": " ".join([PROG] + argv),
                  "machine": f"{os.cpu_count()} CPU cores" if config.device == "cpu" else config.device,
                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        write_text(os.path.join(config.out, "config.json"), json.dumps(record, indent=2) + "\n")
        # Each step checks its loss (train_run); NumPy's warnings would only repeat it.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            results = run_experiment(config, train_arrays, test_arrays, progress=args.progress)
        write_csv(results, config, os.path.join(config.out, "gradflow.csv"))
        plot_gradflow(results, config, os.path.join(config.out, "gradflow.png"))
        plot_training(results, config, os.path.join(config.out, "gradflow_training.png"))
        plot_split(results, config, os.path.join(config.out, "gradflow_split.png"))
    except TrainingDiverged as error:
        print(f"{PROG}: error: {error}; stopped. Try a smaller --lr (this run: {config.lr:g})",
              file=sys.stderr)
        return EXIT_FAILURE
    except OSError as error:       # disk full, a folder made read-only during the run...
        print(f"{PROG}: error: cannot write {error.filename or config.out}: {error.strerror}",
              file=sys.stderr)
        return EXIT_FAILURE
    print()
    for line in summary_lines(results, config):
        print(line)
    print(f"\n{len(results)} runs in {time.perf_counter() - started:.0f} s; outputs in "
          f"{config.out}: {', '.join(OUTPUTS)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
