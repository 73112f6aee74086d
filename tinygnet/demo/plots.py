"""Plots of a training run, drawn with matplotlib's Agg renderer into PNG files.

Figures are built with the object-oriented API (``matplotlib.figure.Figure``),
not ``pyplot``: no window, no global state, no GUI backend is ever chosen,
so this works on a headless server. Files are written atomically.
"""
from __future__ import annotations

import numpy as np

from ..checkpoint import atomic_write
from .training import TTA_LABELS

__all__ = ["plot_curves", "plot_per_class", "new_figure", "save_figure"]


def new_figure(width, height):
    """An empty ``matplotlib.figure.Figure`` of ``width x height`` inches (100 dpi, constrained layout)."""
    from matplotlib.figure import Figure     # imported on first use: matplotlib loads slowly
    return Figure(figsize=(width, height), dpi=100, layout="constrained")


def save_figure(figure, path) -> None:
    """Write ``figure`` to ``path`` as a PNG, atomically."""
    atomic_write(path, lambda f: figure.savefig(f, format="png"))


def plot_curves(history: list[dict], path, tta="none") -> None:
    """Loss parts and accuracies against epoch, from the rows of ``metrics.csv``.

    ``history`` holds one dict per epoch with keys ``epoch``, ``loss``,
    ``loss_main``, ``loss_aux1``, ``loss_aux2`` (aux ones may be NaN when the
    aux heads are off), ``train_acc`` and ``test_acc`` (fractions in [0, 1]),
    and ``test_acc_aux1``, ``test_acc_aux2`` (each aux head on the test
    images alone; NaN or missing: not drawn);
    ``tta``: the views each test image was averaged over (--tta).
    """
    from matplotlib.ticker import MaxNLocator

    epochs = [row["epoch"] for row in history]
    figure = new_figure(11, 4)
    losses, accuracies = figure.subplots(1, 2)

    for key, label, style in [("loss", "total", "-"), ("loss_main", "main", "-"),
                              ("loss_aux1", "aux1", "--"), ("loss_aux2", "aux2", ":")]:
        values = [row[key] for row in history]
        if not all(np.isnan(values)):
            losses.plot(epochs, values, style, marker="o", markersize=3, label=label)
    losses.set(title="training loss (mean over the epoch)", xlabel="epoch", ylabel="loss")
    losses.legend()
    losses.grid(alpha=0.3)

    for key, label in [("train_acc", "train (augmented, train mode)"),
                       ("test_acc", f"{TTA_LABELS[tta]} (main head, eval mode)")]:
        accuracies.plot(epochs, [100 * row[key] for row in history],
                        marker="o", markersize=3, label=label)
    # The aux heads on the test images alone (NaN without aux heads, or in the rows of a
    # checkpoint from before they were measured): drawn where there is a number.
    for key, label, style in [("test_acc_aux1", "test, aux1 head (on inception4a)", "--"),
                              ("test_acc_aux2", "test, aux2 head (on inception4d)", ":")]:
        values = [100 * row.get(key, np.nan) for row in history]
        if not all(np.isnan(values)):
            accuracies.plot(epochs, values, style, marker="o", markersize=3, label=label)
    best = max(history, key=lambda row: row["test_acc"])
    accuracies.set(title=f"accuracy (best test {100 * best['test_acc']:.2f}% at epoch {best['epoch']})",
                   xlabel="epoch", ylabel="accuracy (%)")
    accuracies.legend()
    accuracies.grid(alpha=0.3)
    for axes in (losses, accuracies):
        axes.xaxis.set_major_locator(MaxNLocator(integer=True))
        axes.set_xlim(min(epochs) - 0.5, max(epochs) + 0.5)
    save_figure(figure, path)


def plot_per_class(confusion: np.ndarray, class_names: list[str], path) -> None:
    """Per-class test accuracy (bars) beside the confusion matrix (rows: true class).

    ``confusion[i, j]`` counts test images of class ``i`` predicted as ``j``.
    """
    confusion = np.asarray(confusion)
    per_class = np.diag(confusion) / np.maximum(confusion.sum(axis=1), 1)
    rates = confusion / np.maximum(confusion.sum(axis=1, keepdims=True), 1)
    ticks = np.arange(len(class_names))

    figure = new_figure(13, 5.5)
    bars, matrix = figure.subplots(1, 2, width_ratios=[1, 1.25])

    overall = np.trace(confusion) / max(confusion.sum(), 1)
    bars.barh(ticks, 100 * per_class, color="tab:blue")
    bars.set(yticks=ticks, yticklabels=class_names, xlim=(0, 100), xlabel="test accuracy (%)",
             title=f"per-class accuracy (overall {100 * overall:.2f}%)")
    bars.invert_yaxis()
    for y, value in zip(ticks, per_class):
        bars.text(min(100 * value + 1, 88), y, f"{100 * value:.1f}", va="center")

    image = matrix.imshow(rates, cmap="Blues", vmin=0, vmax=1)
    matrix.set(xticks=ticks, yticks=ticks, xlabel="predicted class", ylabel="true class",
               title="confusion matrix (fraction of each true class)")
    matrix.set_xticklabels(class_names, rotation=45, ha="right")
    matrix.set_yticklabels(class_names)
    for i in range(len(class_names)):
        for j in range(len(class_names)):
            if confusion[i, j]:
                matrix.text(j, i, f"{confusion[i, j]}", ha="center", va="center", fontsize=7,
                            color="white" if rates[i, j] > 0.5 else "black")
    figure.colorbar(image, ax=matrix, shrink=0.8)
    save_figure(figure, path)
