"""``python -m tinygnet.demo gradflow``: do GoogLeNet's auxiliary heads help the gradient?

    python -m tinygnet.demo gradflow --quick       # about a minute on a CPU
    python -m tinygnet.demo gradflow               # about 10 minutes on a 2-core CPU

The paper (section 5) adds two auxiliary classifiers because "the ability to
propagate gradients back through all the layers in an effective manner was
a concern" in a 22-layer network. This demo measures it, in the 2014 setting:
no batch norm, the cifar config, plain SGD with momentum. Two runs start from
the same initial weights and see the same batches:

  (a) with the aux heads, loss = main + aux_weight * (aux1 + aux2);
  (b) without them (the same weights minus the two heads), loss = main.

Every step records each layer's gradient norm (``tinygnet.diagnostics``);
every ``--split-every`` steps run (a) backpropagates its three losses one
at a time to see how much of each layer's gradient comes from each head.

Outputs in ``--out``:

* ``gradflow.png``: gradient norm per layer, network order, log scale, for
  both runs at a few points in training (each point: the mean over the
  ``window`` steps up to it; step 0 alone for the first), the ratio
  with/without, and the training-loss curves;
* ``gradflow_split.png``: the per-head split in run (a): each head's
  contribution per layer, and the shares and cosine similarities at the
  early layers over training;
* ``gradflow.csv``: every number behind the plots, one per row
  (``run, step, quantity, layer, value``): per-step losses and per-layer
  gradient norms and gradient/weight ratios of both runs, the window means
  plotted, and the split;
* ``config.json``; and a summary printed at the end.

Defaults (sized for about 10 minutes on an idle 2-core CPU, where a step of
either run takes about 0.6 s; on a busy machine it takes longer): a
quarter-width network (``--width 0.25``) with ``--stem-stride 2`` (Inception
stages at 16, 8 and 4 pixels), batches of 64, SGD lr 0.01 with momentum 0.9
(the paper's momentum; without batch norm the gradients at initialisation are large, so
the rate stays small), 400 steps per run.
"""
from __future__ import annotations

import argparse
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
from ..diagnostics import GradientMonitor, aux_layers, split_backward
from ..models import GoogLeNet, googlenet_loss
from ..optim import SGD
from ..tensor import Tensor, no_grad
from .common import (TrainingDiverged, UsageError, check_out_folder, claim_out_folder,
                     default_out_folder, describe_loss, exit_status, momentum_factor,
                     non_negative_float, non_negative_int, positive_float, positive_int,
                     probability, resolve_device, sigterm_interrupts, write_text)
from .plots import new_figure, save_figure

PROG = "python -m tinygnet.demo gradflow"

DEFAULTS = dict(steps=400, batch_size=64, width=0.25, stem_stride=2, lr=0.01, momentum=0.9,
                aux_weight=0.3, dropout=0.4, aux_dropout=0.7, seed=0, points=4, split_every=20,
                test_images=1000, train_images=None)
QUICK_OVERRIDES = dict(steps=40, batch_size=32, width=0.125, split_every=4, test_images=256,
                       train_images=2048)
EARLY_LAYERS = ("conv1", "inception3a")     # the summary's "early layers"
RUNS = ("aux", "no_aux")
RUN_LABELS = {"aux": "with aux heads", "no_aux": "without aux heads"}
OUTPUTS = ("gradflow.png", "gradflow_split.png", "gradflow.csv", "config.json")   # in --out

EXIT_FAILURE = 1          # data or file errors, and a diverged run
EXIT_USAGE = 2


# ==========================================================================
# Command line
# ==========================================================================


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train GoogLeNet without batch norm twice from the same initial weights, "
                    "with and without the auxiliary heads, and measure the gradient reaching "
                    "each layer.",
        epilog="Outputs in --out: gradflow.png, gradflow_split.png, gradflow.csv, config.json.")
    d = DEFAULTS

    def add(name, help, default_text=None, **kwargs):
        key = name.lstrip("-").replace("-", "_")
        default = d[key] if default_text is None else default_text
        parser.add_argument(name, default=None, help=f"{help} (default: {default})", **kwargs)

    parser.add_argument("--quick", action="store_true",
                        help=f"a smoke run of about a minute: {QUICK_OVERRIDES['steps']} steps of "
                             f"{QUICK_OVERRIDES['batch_size']} images, width {QUICK_OVERRIDES['width']}")
    add("--steps", "training steps of each run", type=positive_int, metavar="N")
    add("--batch-size", "images per step", type=positive_int, metavar="N")
    add("--width", "multiplies every channel count; 1 is the paper's network",
        type=positive_float, metavar="X")
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
    add("--seed", "seed of the initial weights, the batches and dropout", type=non_negative_int,
        metavar="N")
    add("--points", "points in training at which gradflow.png shows the layer norms",
        type=positive_int, metavar="N")
    add("--split-every", "steps between per-head splits in run (a); a split step backpropagates "
        "the three losses one by one, costing about twice a normal step", type=positive_int,
        metavar="N")
    add("--train-images", "use the first N training images only", default_text="all 50000",
        type=positive_int, metavar="N")
    add("--test-images", "test images for the final accuracy of each run; 0 skips it",
        type=non_negative_int, metavar="N")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="cuda if a GPU is usable with CuPy, else cpu (default: auto)")
    parser.add_argument("--data", metavar="DIR",
                        help="folder holding cifar-10-batches-py/ or cifar-10-python.tar.gz "
                             "(default: $TINYGNET_DATA, else ~/.cache/tinygnet)")
    parser.add_argument("--no-download", dest="download", action="store_false",
                        help="never download CIFAR-10; fail if it is not found")
    parser.add_argument("--out", metavar="DIR",
                        help="output folder (default: runs/gradflow-DATE-TIME)")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in an --out that holds an earlier run, replacing its "
                             "outputs (without it, such an --out is refused)")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bars")
    return parser


@dataclasses.dataclass
class Config:
    steps: int
    batch_size: int
    width: float
    stem_stride: int
    lr: float
    momentum: float
    aux_weight: float
    dropout: float
    aux_dropout: float
    seed: int
    points: int
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
        """Steps averaged for each point of gradflow.png (single steps are noisy)."""
        return max(1, self.steps // 10)




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
    """What one run measured. Rows of ``grad_norms``/``ratios`` are steps, columns ``layers``."""
    name: str
    layers: list
    aux_layers: list
    losses: np.ndarray          # steps x 4: total, main, aux1, aux2 (NaN when absent)
    grad_norms: np.ndarray      # steps x layers: ||g|| of each layer
    ratios: np.ndarray          # steps x layers: ||g|| / ||w||
    splits: list                # [(step, {layer: LayerSplit})], run (a) only
    test_acc: float | None
    seconds: float


def build_models(config: Config):
    """Two networks with the same initial weights: (a) with aux heads, (b) without."""
    backend.manual_seed(config.seed)
    options = dict(num_classes=10, config="cifar", width=config.width, batchnorm=False,
                   stem_stride=config.stem_stride, dropout=config.dropout,
                   aux_dropout=config.aux_dropout)
    with_aux = GoogLeNet(aux=True, **options)
    without_aux = GoogLeNet(aux=False, **options)
    heads = tuple(f"{name}." for name in aux_layers(with_aux))
    state = {k: v for k, v in with_aux.state_dict().items() if not k.startswith(heads)}
    without_aux.load_state_dict(state)          # strict: every trunk weight copied
    return with_aux.to(config.device), without_aux.to(config.device)


def train_run(name, model, config: Config, images, labels, progress=True) -> RunResult:
    """``config.steps`` steps of SGD, recording losses and per-layer gradient norms each step."""
    xp = backend.cupy_or_none() if config.device != "cpu" else np
    aux = name == "aux"
    # The same dropout stream to start with. Run (a)'s aux heads draw their masks from it
    # too, so with dropout on the two runs' masks differ from the first step.
    backend.manual_seed(config.seed + 1)
    loader = DataLoader((images, labels), config.batch_size, shuffle=True, augment=False,
                        seed=config.seed, drop_last=True)
    optimizer = SGD(model.parameters(), lr=config.lr, momentum=config.momentum)
    monitor = GradientMonitor(model)
    trunk = [layer for layer in dict.fromkeys(monitor.layers) if layer not in aux_layers(model)]
    model.train()
    losses, splits = [], []
    started = time.perf_counter()
    bar = tqdm(total=config.steps, desc=RUN_LABELS[name], unit="step", leave=False,
               disable=not progress, dynamic_ncols=True)
    with bar:
        for step, (batch, y) in zip(range(config.steps), _batches(loader)):
            x = Tensor(backend.to_device(batch, config.device))          # N x 3 x 32 x 32
            y = backend.to_device(y, config.device)                       # N
            parts = googlenet_loss(model(x), y, aux_weight=config.aux_weight)
            optimizer.zero_grad()
            if aux and step % config.split_every == 0:
                splits.append((step, split_backward(model, parts, config.aux_weight, trunk)))
            else:
                parts.total.backward()
            monitor.record(step)
            optimizer.step()
            nan = xp.asarray(math.nan, dtype=parts.main.dtype)
            losses.append(xp.stack([nan if p is None else p.data for p in parts]))  # no host sync
            if not math.isfinite(float(parts.total.item())):     # a host sync, as record()'s
                values = [None if p is None else float(p.item()) for p in parts]
                raise TrainingDiverged(f"run {RUN_LABELS[name]!r} diverged: the loss is "
                                       f"{describe_loss(values)} at step {step + 1} of {config.steps}")
            if step % 10 == 0 or step == config.steps - 1:
                bar.set_postfix_str(f"loss {float(parts.total.item()):.3f}", refresh=False)
            bar.update()
    seconds = time.perf_counter() - started
    losses = backend.to_numpy(xp.stack(losses)).astype(np.float64)
    layers = list(monitor.history[0].by_layer())
    tables = [record.by_layer() for record in monitor.history]
    grad_norms = np.array([[t[layer]["grad_norm"] for layer in layers] for t in tables])
    ratios = np.array([[t[layer]["ratio"] for layer in layers] for t in tables])
    return RunResult(name, layers, [layer for layer in layers if layer not in trunk], losses,
                     grad_norms, ratios, splits, None, seconds)


def _batches(loader):
    """Batches forever, epoch after epoch."""
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
    """Both runs; returns {"aux": RunResult, "no_aux": RunResult}."""
    images, labels = train
    with_aux, without_aux = build_models(config)
    results = {}
    for name, model in zip(RUNS, (with_aux, without_aux)):
        result = train_run(name, model, config, images, labels, progress=progress)
        if test is not None and config.test_images > 0:
            result.test_acc = evaluate_accuracy(model, config, *test)
        log(f"run {RUN_LABELS[name]}: {config.steps} steps in {result.seconds:.1f} s, final loss "
            f"(main) {result.losses[-1, 1]:.3f}")
        results[name] = result
    return results


# ==========================================================================
# Measurements derived from the runs
# ==========================================================================
def plot_points(config: Config) -> list:
    """Steps at which gradflow.png shows the layer norms: 0, then evenly spaced up to the last."""
    last = config.steps - 1
    if config.points == 1 or last == 0:
        return [last]
    inner = np.linspace(0, last, config.points).round().astype(int).tolist()
    return sorted(set(inner))


def window_mean(values: np.ndarray, step: int, window: int) -> np.ndarray:
    """Mean of rows ``step - window + 1 .. step`` (just row 0 for step 0)."""
    return values[max(0, step - window + 1):step + 1].mean(axis=0)


def early_comparison(results, config: Config, layers=EARLY_LAYERS) -> dict:
    """layer -> (norm with aux, norm without, ratio), averaged over the last window, and at step 0."""
    a, b = results["aux"], results["no_aux"]
    window = config.window
    table = {}
    for layer in layers:
        i, j = a.layers.index(layer), b.layers.index(layer)
        late_a = window_mean(a.grad_norms[:, i], config.steps - 1, window)
        late_b = window_mean(b.grad_norms[:, j], config.steps - 1, window)
        first_a, first_b = a.grad_norms[0, i], b.grad_norms[0, j]
        table[layer] = {"with": float(late_a), "without": float(late_b), "ratio": float(late_a / late_b),
                        "with_step0": float(first_a), "without_step0": float(first_b),
                        "ratio_step0": float(first_a / first_b)}
    return table


def late_splits(splits, config: Config) -> list:
    """The splits of the second half of training (past the first steps' transient), at least one."""
    late = [(step, split) for step, split in splits if step >= config.steps // 2]
    return late or splits[-1:]


def mean_split(splits, layer) -> dict:
    """Means over ``splits`` of the norms, shares and cosines at ``layer``."""
    rows = [split[layer] for _, split in splits]
    return {"norms": {h: float(np.mean([r.norms[h] for r in rows])) for h in rows[0].norms},
            "shares": {h: float(np.mean([r.shares[h] for r in rows])) for h in rows[0].shares},
            "cosines": {p: float(np.mean([r.cosines[p] for r in rows])) for p in rows[0].cosines},
            "total_norm": float(np.mean([r.total_norm for r in rows]))}


# ==========================================================================
# Outputs
# ==========================================================================
def csv_rows(results, config: Config):
    """Every measured and plotted number as (run, step, quantity, layer, value)."""
    for name, r in results.items():
        for step, parts in enumerate(r.losses):
            for quantity, value in zip(("loss_total", "loss_main", "loss_aux1", "loss_aux2"), parts):
                if not math.isnan(value):
                    yield name, step, quantity, "", value
        for step in range(len(r.grad_norms)):
            for k, layer in enumerate(r.layers):
                yield name, step, "grad_norm", layer, r.grad_norms[step, k]
                yield name, step, "grad_weight_ratio", layer, r.ratios[step, k]
        for point in plot_points(config):
            means = window_mean(r.grad_norms, point, config.window if point else 1)
            for layer, value in zip(r.layers, means):
                yield name, point, "grad_norm_plotted", layer, value
        for step, split in r.splits:
            for layer, s in split.items():
                yield name, step, "split_total_norm", layer, s.total_norm
                for head in s.norms:
                    yield name, step, f"split_norm_{head}", layer, s.norms[head]
                    yield name, step, f"split_share_{head}", layer, s.shares[head]
                for pair, value in s.cosines.items():
                    yield name, step, f"split_cos_{pair.replace('/', '_')}", layer, value


def write_csv(results, config: Config, path) -> None:
    text = io.StringIO()
    writer = csv.writer(text, lineterminator="\n")
    writer.writerow(["run", "step", "quantity", "layer", "value"])
    for run, step, quantity, layer, value in csv_rows(results, config):
        writer.writerow([run, step, quantity, layer, f"{float(value):.6g}"])
    write_text(path, text.getvalue())


def _smooth(values, window):
    """Moving average over ``window`` steps (shorter at the start)."""
    cumulative = np.concatenate([[0.0], np.cumsum(values)])
    steps = np.arange(1, len(values) + 1)
    start = np.maximum(0, steps - window)
    return (cumulative[steps] - cumulative[start]) / (steps - start)


def plot_gradflow(results, config: Config, path) -> None:
    """Layer gradient norms of both runs at a few points, their ratio, and the loss curves."""
    a, b = results["aux"], results["no_aux"]
    trunk = [layer for layer in a.layers if layer not in a.aux_layers]
    x = np.arange(len(trunk))
    x_aux = len(trunk) + 0.5 + np.arange(len(a.aux_layers))
    figure = new_figure(17, 5.2)
    norms, ratio, loss = figure.subplots(1, 3, width_ratios=[1.35, 1.1, 1])
    colors = [f"C{i}" for i in range(10)]
    for i, point in enumerate(plot_points(config)):
        window = config.window if point else 1
        mean_a = window_mean(a.grad_norms, point, window)
        mean_b = window_mean(b.grad_norms, point, window)
        trunk_a = [mean_a[a.layers.index(layer)] for layer in trunk]
        trunk_b = [mean_b[b.layers.index(layer)] for layer in trunk]
        label = "step 0" if point == 0 else f"steps {max(0, point - window + 1)}-{point}"
        c = colors[i % 10]
        norms.plot(x, trunk_a, "-o", color=c, markersize=3, label=f"{label}, with aux")
        norms.plot(x, trunk_b, "--s", color=c, markersize=3, alpha=0.8, label=f"{label}, without")
        norms.plot(x_aux, [mean_a[a.layers.index(layer)] for layer in a.aux_layers], "o", color=c)
        ratio.plot(x, np.array(trunk_a) / np.array(trunk_b), "-o", color=c, markersize=3, label=label)
    norms.set_yscale("log")
    norms.axvline(len(trunk) - 0.25, color="gray", linestyle=":", linewidth=1)
    norms.set_xticks(list(x) + list(x_aux), trunk + a.aux_layers, rotation=60, ha="right")
    norms.set(ylabel="gradient norm of the layer's parameters",
              title="gradient reaching each layer (input on the left)")
    norms.legend(fontsize=7, ncol=2)
    norms.grid(alpha=0.3, which="both")

    ratio.axhline(1.0, color="gray", linewidth=1)
    ratio.set_xticks(x, trunk, rotation=60, ha="right")
    ratio.set(ylabel="norm with aux / norm without",
              title=f"effect of the aux heads (weight {config.aux_weight})")
    ratio.legend(fontsize=7)
    ratio.grid(alpha=0.3)

    steps = np.arange(len(a.losses))
    window = config.window
    loss.plot(steps, _smooth(a.losses[:, 1], window), label="main loss, with aux")
    loss.plot(steps, _smooth(b.losses[:, 1], window), label="main loss, without aux")
    loss.plot(steps, _smooth(a.losses[:, 0], window), ":", color="C0", label="total loss, with aux")
    loss.set(xlabel="step", ylabel="cross-entropy", title=f"training loss (mean of {window} steps)")
    loss.legend(fontsize=8)
    loss.grid(alpha=0.3)
    save_figure(figure, path)


def plot_split(results, config: Config, path) -> None:
    """Run (a): each head's share of the gradient, per layer and over training."""
    a = results["aux"]
    layers = list(a.splits[0][1])
    x = np.arange(len(layers))
    figure = new_figure(17, 5.2)
    per_layer, shares, cosines = figure.subplots(1, 3, width_ratios=[1.35, 1, 1])
    late = late_splits(a.splits, config)
    first = {layer: mean_split(a.splits[:1], layer) for layer in layers}
    means = {layer: mean_split(late, layer) for layer in layers}
    heads = list(means[layers[0]]["norms"])
    for k, head in enumerate(heads):
        weight = "" if head == "main" else f" x {config.aux_weight}"
        for table, style, when in [(means, "-o", f"steps {late[0][0]}-{late[-1][0]}"),
                                   (first, ":", "step 0")]:
            values = np.array([table[layer]["norms"][head] for layer in layers])
            per_layer.plot(x, np.where(values > 0, values, np.nan), style, color=f"C{k}",
                           markersize=4, label=f"{head}{weight}, {when}")
    per_layer.set_yscale("log")
    per_layer.set_xticks(x, layers, rotation=60, ha="right")
    per_layer.set(ylabel="norm of the head's gradient",
                  title=f"gradient from each loss (solid: mean of {len(late)} split steps)")
    per_layer.legend(fontsize=8)
    per_layer.grid(alpha=0.3, which="both")

    steps = [step for step, _ in a.splits]
    early = [layer for layer in EARLY_LAYERS if layer in layers]
    for layer, style in zip(early, ("-", "--")):
        for k, head in enumerate(heads):
            shares.plot(steps, [100 * split[layer].shares[head] for _, split in a.splits], style,
                        color=f"C{k}", label=f"{head} at {layer}")
        for k, pair in enumerate(a.splits[0][1][layer].cosines):
            cosines.plot(steps, [split[layer].cosines[pair] for _, split in a.splits], style,
                         color=f"C{k + 3}", label=f"{pair} at {layer}")
    shares.set(xlabel="step", ylabel="share of the total gradient (%)",
               title="each head's share at the early layers")
    shares.legend(fontsize=7)
    shares.grid(alpha=0.3)
    cosines.axhline(0.0, color="gray", linewidth=1)
    cosines.set(xlabel="step", ylabel="cosine similarity", ylim=(-1.05, 1.05),
                title="do the heads push the same way?")
    cosines.legend(fontsize=7)
    cosines.grid(alpha=0.3)
    save_figure(figure, path)


def summary_lines(results, config: Config) -> list:
    """The printed summary: early-layer norms with/without, losses, the split."""
    a, b = results["aux"], results["no_aux"]
    window, last = config.window, config.steps - 1
    lines = [f"gradient norm of the early layers, with / without aux heads "
             f"(mean of steps {max(0, last - window + 1)}-{last}; in brackets step 0: same "
             f"weights and batch{', other dropout masks' if config.dropout else ''}):"]
    for layer, row in early_comparison(results, config).items():
        lines.append(f"  {layer:<12} {row['with']:.3e} / {row['without']:.3e}  ratio "
                     f"{row['ratio']:.2f}   (step 0: {row['with_step0']:.3e} / "
                     f"{row['without_step0']:.3e}, ratio {row['ratio_step0']:.2f})")
    main_a = window_mean(a.losses[:, 1], last, window)
    main_b = window_mean(b.losses[:, 1], last, window)
    total_a = window_mean(a.losses[:, 0], last, window)
    lines.append(f"training loss after {config.steps} steps (mean of the last {window}): main "
                 f"{main_a:.3f} with aux (total {total_a:.3f}), {main_b:.3f} without "
                 f"(difference {main_a - main_b:+.3f})")
    if a.test_acc is not None and b.test_acc is not None:
        lines.append(f"test accuracy (main head, {config.test_images} test images): "
                     f"{100 * a.test_acc:.1f}% with aux, {100 * b.test_acc:.1f}% without")
    late = late_splits(a.splits, config)
    lines.append(f"per-head split of the gradient in the run with aux heads (aux weighted by "
                 f"{config.aux_weight}; mean of the {len(late)} split steps "
                 f"{late[0][0]}-{late[-1][0]}):")
    for layer in EARLY_LAYERS:
        m = mean_split(late, layer)
        heads = ", ".join(f"{h} {m['norms'][h]:.3e} ({100 * m['shares'][h]:.0f}%)" for h in m["norms"])
        pairs = ", ".join(f"{p} {v:+.2f}" for p, v in m["cosines"].items())
        start = a.splits[0][1][layer]
        at_start = ", ".join(f"{h} {100 * start.shares[h]:.0f}%" for h in start.shares)
        lines.append(f"  {layer:<12} {heads}")
        lines.append(f"  {'':<12} cosine similarity: {pairs}")
        lines.append(f"  {'':<12} at step 0: {at_start}")
    return lines


# ==========================================================================
# main
# ==========================================================================
def main(argv=None) -> int:
    """Run the experiment; returns the exit status: 0, 1 (data or file error, or a run diverged),
    2 (usage), 130 (Ctrl-C) or 143 (SIGTERM)."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        with sigterm_interrupts():
            return _run(args, argv)
    except KeyboardInterrupt as stop:
        print(f"\n{PROG}: stopped", file=sys.stderr)
        return exit_status(stop)


def _run(args, argv) -> int:
    try:
        config = resolve_config(args)
        check_out_folder(config.out, OUTPUTS, given=args.out is not None, replace=args.overwrite)
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
          f"stem stride {config.stem_stride}; {config.steps} steps of {config.batch_size} images, "
          f"SGD lr {config.lr} momentum {config.momentum}; run (a) with aux heads "
          f"(weight {config.aux_weight}), run (b) without, same initial weights")
    try:
        config.out = claim_out_folder(config.out, OUTPUTS, given=args.out is not None,
                                      replace=args.overwrite)
        record = {"config": dataclasses.asdict(config), "command": " ".join([PROG] + argv),
                  "machine": f"{os.cpu_count()} CPU cores" if config.device == "cpu" else config.device,
                  "started": time.strftime("%Y-%m-%d %H:%M:%S")}
        write_text(os.path.join(config.out, "config.json"), json.dumps(record, indent=2) + "\n")
        # Each step checks its loss (train_run); NumPy's warnings would only repeat it.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            results = run_experiment(config, train_arrays, test_arrays, progress=args.progress)
        write_csv(results, config, os.path.join(config.out, "gradflow.csv"))
        plot_gradflow(results, config, os.path.join(config.out, "gradflow.png"))
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
    print(f"\noutputs in {config.out}: gradflow.png, gradflow_split.png, gradflow.csv, config.json")
    return 0


if __name__ == "__main__":
    sys.exit(main())
