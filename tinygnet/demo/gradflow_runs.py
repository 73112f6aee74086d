"""The gradient-flow experiment's runs: the grid, one run, and the runs kept as each one ends.

For each seed and each initialisation, ``build_models`` makes two networks
with the same initial weights, (a) with the aux heads and (b) without, and
``train_run`` trains each with ``training.train_step``, the CIFAR demo's
step, recording every layer's gradient norm at every step (and in run (a),
every ``split_every`` steps, how much of each layer's gradient each head
supplies). ``run_experiment`` runs the grid and hands each finished run to
the caller, who keeps it (``save_runs``): an interrupted experiment loses
only the run it was in, and every run starts from its own seeds, so a run
trained after a restart is the run an uninterrupted experiment trains.
``gradflow.py`` is the command line around this, ``gradflow_stats.py`` and
``gradflow_plots.py`` what is made of the runs.
"""
from __future__ import annotations

import dataclasses
import math
import time

import numpy as np
from tqdm.auto import tqdm

from .. import backend
from ..checkpoint import CheckpointError, load_checkpoint, save_checkpoint
from ..data import DataLoader
from ..diagnostics import GradientMonitor, LayerSplit, split_backward
from ..models import GoogLeNet
from ..optim import SGD
from .common import TrainingDiverged, describe_loss
from .training import evaluate, train_step

RUNS = ("aux", "no_aux")
RUN_LABELS = {"aux": "with aux heads", "no_aux": "without aux heads"}
AUX_HEADS = ("aux1", "aux2")                # GoogLeNet's auxiliary heads: top-level layers
HEADS = ("main",) + AUX_HEADS               # the three terms of the loss
FIRST, LAST = "conv1", "fc"                 # the ends of the network, input and output
RUNS_KIND = "tinygnet-gradflow-runs"        # what a file of kept runs says it is


@dataclasses.dataclass
class Config:
    """Everything that decides the experiment (the command line's flags, resolved)."""
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

    def grid(self) -> list:
        """Every run's key ``(init, run, seed)``, in the order they are trained."""
        return [(init, run, seed) for seed in self.seed_list for init in self.init for run in RUNS]


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
    losses, splits = [], []

    def backward(parts):
        """train_step's backward at ``step`` (the loop's, below), then the gradients recorded."""
        if aux and step % config.split_every == 0:      # the three losses one at a time
            terms = {"main": (parts.main, 1.0), "aux1": (parts.aux1, config.aux_weight),
                     "aux2": (parts.aux2, config.aux_weight)}
            splits.append((step, split_backward(model, terms, trunk)))
        else:
            parts.total.backward()
        monitor.record(step)          # every layer's gradient norm, before the update

    model.train()
    started = time.perf_counter()
    bar = tqdm(total=config.steps, desc=label, unit="step", leave=False, disable=not progress,
               dynamic_ncols=True)
    with bar:
        for step, (batch, y) in zip(range(config.steps), batches(images, labels, config, seed)):
            parts, _ = train_step(model, batch, y, optimizer, config.device,
                                  aux_weight=config.aux_weight, backward=backward)
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


def main_head_accuracy(model, config: Config, images, labels) -> float:
    """Accuracy of the main head on ``images`` (uint8, unaugmented): ``training.evaluate``."""
    loader = DataLoader((images, labels), 256, shuffle=False, seed=0)  # seeded: draws nothing
    accuracy, _ = evaluate(model, loader, config.device, num_classes=10)
    return accuracy


def run_experiment(config: Config, train, test=None, progress=True, log=print, finished=None,
                   keep=None) -> dict:
    """Every run of the grid; returns {(init, run, seed): RunResult}, in the grid's order.

    ``finished``: runs already done ({key: RunResult}, from an interrupted
    experiment): taken as they are, not trained again. ``keep(results)`` is
    called after each run trained, with every result so far. Raises
    ``TrainingDiverged`` as soon as a run's loss is not finite.
    """
    images, labels = train
    finished = finished or {}
    results = {}
    for seed in config.seed_list:
        for init in config.init:
            todo = [run for run in RUNS if (init, run, seed) not in finished]
            models = dict(zip(RUNS, build_models(config, init, seed))) if todo else {}
            for run in RUNS:
                if run not in todo:
                    results[init, run, seed] = finished[init, run, seed]
                    log(f"{results[init, run, seed].label}: kept from the interrupted experiment")
                    continue
                result = train_run(models[run], init, run, seed, config, images, labels,
                                   progress=progress)
                if test is not None and config.test_images > 0:
                    result.test_acc = main_head_accuracy(models[run], config, *test)
                accuracy = "" if result.test_acc is None else f", test accuracy {result.test_acc:.1%}"
                log(f"{result.label}: {config.steps} steps in {result.seconds:.1f} s, main loss "
                    f"{result.losses[-1, 1]:.3f}{accuracy}")
                results[init, run, seed] = result
                if keep is not None:
                    keep(results)
    return results


# ==========================================================================
# Keeping the finished runs: one file, rewritten atomically as each run ends
# ==========================================================================
def save_runs(path, config: Config, results: dict) -> None:
    """Write the experiment's configuration and its finished runs to ``path``, atomically."""
    runs = [dataclasses.asdict(r) for r in results.values()]      # each LayerSplit a dict too
    save_checkpoint(path, {"kind": RUNS_KIND, "config": dataclasses.asdict(config), "runs": runs})


def load_runs(path) -> tuple:
    """``(saved configuration dict, {(init, run, seed): RunResult})`` from a ``save_runs`` file.

    Raises ``FileNotFoundError`` or ``CheckpointError`` (a file that is not one).
    """
    state = load_checkpoint(path)
    if state.get("kind") != RUNS_KIND or not isinstance(state.get("config"), dict):
        raise CheckpointError(f"{path!r} is not a file of gradflow runs")
    results = {}
    try:
        for saved in state["runs"]:
            splits = [(step, {layer: LayerSplit(**s) for layer, s in split.items()})
                      for step, split in saved.pop("splits")]
            result = RunResult(**saved, splits=splits)
            results[result.init, result.run, result.seed] = result
    except (KeyError, TypeError, ValueError) as error:
        raise CheckpointError(f"{path!r}: a saved run does not fit this version of the demo "
                              f"({error})") from None
    return state["config"], results
