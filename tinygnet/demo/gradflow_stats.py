"""The numbers made of the gradient-flow runs: measures, their spread over seeds, the CSV, the summary.

Every function here reads ``RunResult``s (``gradflow_runs.py``) and computes;
nothing trains. The plots (``gradflow_plots.py``) draw these same numbers,
and ``gradflow.csv`` holds each of them, so a figure can be checked against
its data.
"""
from __future__ import annotations

import csv
import io
import math

import numpy as np

from .common import write_text
from .gradflow_runs import AUX_HEADS, FIRST, HEADS, LAST, RUN_LABELS, RUNS, Config, RunResult


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
    """The numbers the summary and docs/vanishing-gradients.md quote for one (init, run) cell, over seeds."""
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
# gradflow.csv: every number, one per row
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


# ==========================================================================
# The printed summary
# ==========================================================================
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
    lines = [f"{plural(config.seeds, 'seed')} ({', '.join(map(str, config.seed_list))}): each "
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


def plural(n, word) -> str:
    """"1 seed", "2 seeds"."""
    return f"{n} {word}" + ("" if n == 1 else "s")
