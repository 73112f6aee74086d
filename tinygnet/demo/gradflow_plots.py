"""The gradient-flow experiment's three figures, drawn from the numbers of ``gradflow_stats.py``.

* ``plot_gradflow``: per initialisation, each layer's gradient norm over
  fc's at step 0 and at the end, with and without the aux heads; and
  conv1's over fc's over training;
* ``plot_training``: the main training loss, and each run's test accuracy;
* ``plot_split``: in the runs with aux heads, each head's gradient per layer
  at step 0, and each head's share of conv1's gradient over training.

With several seeds a line is their mean and a shaded band their range.
"""
from __future__ import annotations

import math

import numpy as np

from .gradflow_runs import FIRST, HEADS, LAST, RUN_LABELS, RUNS, Config
from .gradflow_stats import first_over_last, late_steps, over_seeds, profile, smooth
from .plots import new_figure, save_figure

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
    if tested:
        accuracy.legend(fontsize=8)
    else:                              # --test-images 0: nothing to show, and say so
        accuracy.text(0.5, 0.5, "not tested (--test-images 0)", ha="center", va="center",
                      transform=accuracy.transAxes, color="gray")
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
