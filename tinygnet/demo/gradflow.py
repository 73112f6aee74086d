"""``python -m tinygnet.demo gradflow``: do GoogLeNet's auxiliary heads rescue a vanishing gradient?

    python -m tinygnet.demo gradflow --quick       # under a minute on a CPU
    python -m tinygnet.demo gradflow               # 12 runs of 300 steps: minutes on a CPU

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

Each run trains with the CIFAR demo's step (``training.train_step``). Every
step records each layer's gradient norm (``tinygnet.diagnostics``); every
``--split-every`` steps run (a) backpropagates its three losses one at a
time to see how much of each layer's gradient comes from each head. After
training, each run's main head is scored on ``--test-images`` test images
(``training.evaluate``). With several seeds, the plots show the mean and the range (min to
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
* ``gradflow_runs.npz``: the configuration and every finished run's
  measurements, rewritten (atomically) as each run ends;
* ``config.json``; and a summary printed at the end.

The runs are independent: every run starts from its own seeds, so it
computes the same numbers whichever process trains it, and in whatever
order. ``--jobs N`` trains N runs at once, each in a worker process on one
core (default: one per CPU core); ``--jobs 1`` trains them one after another
in this process, each op spread over the cores by tinygnet's threads. The
outputs are written in the grid's order whichever run ends first, and one
thread against several could differ only in how BLAS rounds a matrix product
cut into blocks (identical bit for bit where measured:
docs/vanishing-gradients.md).

A stopped experiment (Ctrl-C, SIGTERM, ``kill -9``, a power cut) loses only
the runs it was in (one per worker): ``--resume OUT`` trains the runs not yet
finished, with the saved settings (``--jobs`` may change), and writes the
outputs as an uninterrupted experiment would have. The code: this file is
the command line and the order of things; ``gradflow_runs.py`` the runs and
the workers, ``gradflow_stats.py`` the numbers made of them (CSV, summary),
``gradflow_plots.py`` the figures.

Defaults (sized for a run of minutes on a small CPU; docs/vanishing-gradients.md
has the times measured): a network at an eighth of the paper's width
(``--width 0.125``) with ``--stem-stride 2`` (Inception stages at 16, 8 and 4
pixels), batches of 64, SGD lr 0.01 with momentum 0.9 (the paper's momentum;
without batch norm the gradients at initialisation are large, so the rate
stays small), 300 steps per run, the three initialisations, 2 seeds.
"""
from __future__ import annotations

import argparse
import contextlib
import dataclasses
import json
import os
import shlex
import sys
import time

import numpy as np

from ..checkpoint import CheckpointError
from ..data import CIFAR10, DatasetError, resolve_data_root
from ..models import INITS
from .common import (TrainingDiverged, UsageError, claim_out_folder, default_out_folder,
                     exit_status, hold_out_folder, invalid, momentum_factor, non_negative_float,
                     non_negative_int, path_text, positive_float, positive_int, probability,
                     resolve_device, sigterm_interrupts, width_factor, write_text)
from .gradflow_plots import plot_gradflow, plot_split, plot_training
from .gradflow_runs import Config, WorkerDied, load_runs, run_experiment, save_runs
from .gradflow_stats import plural, summary_lines, write_csv
from .workers import more_workers_than_cores, usable_cores

PROG = "python -m tinygnet.demo gradflow"

DEFAULTS = dict(init=("gaussian", "xavier", "he"), seeds=2, seed=0, steps=300, batch_size=64,
                width=0.125, stem_stride=2, lr=0.01, momentum=0.9, aux_weight=0.3, dropout=0.4,
                aux_dropout=0.7, split_every=25, test_images=1000, train_images=None)
QUICK_OVERRIDES = dict(steps=24, batch_size=32, width=0.0625, seeds=1, split_every=8,
                       test_images=256, train_images=2048)
RUNS_FILE = "gradflow_runs.npz"     # every finished run, kept as each one ends
OUTPUTS = ("gradflow.png", "gradflow_training.png", "gradflow_split.png", "gradflow.csv",
           RUNS_FILE, "config.json")   # in --out

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


# The rule of each setting, for the command line and for a saved experiment alike.
RULES = dict(seeds=positive_int, seed=non_negative_int, steps=positive_int,
             batch_size=positive_int, width=width_factor, stem_stride=(1, 2), lr=positive_float,
             momentum=momentum_factor, aux_weight=non_negative_float, dropout=probability,
             aux_dropout=probability, split_every=positive_int, train_images=positive_int,
             test_images=non_negative_int, device=str, data=path_text, download=bool,
             out=path_text, quick=bool)


def saved_config_problem(config: Config) -> str | None:
    """What in a saved experiment's configuration breaks the command line's rules, or None."""
    names = config.init
    if (not isinstance(names, (list, tuple)) or not names or len(set(names)) != len(names)
            or any(name not in INITS for name in names)):
        return f"init {names!r}, which must be one or more of {', '.join(INITS)}, each once"
    for name, rule in RULES.items():
        value = getattr(config, name)
        if value is None and name == "train_images":      # None: all the images
            continue
        why = invalid(rule, value)
        if why is not None:
            return f"{name} {value!r}, which must be {why}"
    return None


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG,
        description="Train GoogLeNet without batch norm from each initialisation, with and "
                    "without the auxiliary heads from the same initial weights, and measure "
                    "the gradient reaching each layer.",
        epilog="Outputs in --out: gradflow.png, gradflow_training.png, gradflow_split.png, "
               "gradflow.csv, gradflow_runs.npz (the finished runs), config.json. Stopped "
               "(Ctrl-C, SIGTERM, kill -9), an experiment keeps its finished runs: continue it "
               "with --resume OUT.")
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
        "is shown", type=RULES["seeds"], metavar="N")
    add("--seed", "the first seed: initial weights, batches and dropout", type=RULES["seed"],
        metavar="N")
    add("--steps", "training steps of each run", type=RULES["steps"], metavar="N")
    add("--batch-size", "images per step", type=RULES["batch_size"], metavar="N")
    add("--width", "multiplies every channel count; 1 is the paper's network",
        type=RULES["width"], metavar="X")
    add("--stem-stride", "stride of conv1; 2 runs the Inception stages at 16/8/4 pixels",
        type=int, choices=RULES["stem_stride"])
    add("--lr", "SGD learning rate (constant)", type=RULES["lr"], metavar="X")
    add("--momentum", "SGD momentum", type=RULES["momentum"], metavar="X")
    add("--aux-weight", "weight of each aux loss in run (a); the paper's is 0.3",
        type=RULES["aux_weight"], metavar="X")
    add("--dropout", "dropout before the main classifier; the paper's is 0.4",
        type=RULES["dropout"], metavar="P")
    add("--aux-dropout", "dropout inside the aux heads; the paper's is 0.7",
        type=RULES["aux_dropout"], metavar="P")
    add("--split-every", "steps between per-head splits in run (a); a split step backpropagates "
        "the three losses one by one, costing about twice a normal step", type=RULES["split_every"],
        metavar="N")
    add("--train-images", "use the first N training images only", default_text="all 50000",
        type=RULES["train_images"], metavar="N")
    add("--test-images", "test images for the final accuracy of each run; 0 skips it",
        type=RULES["test_images"], metavar="N")
    parser.add_argument("--device", choices=("auto", "cpu", "cuda"), default="auto",
                        help="cuda if a GPU is usable with CuPy, else cpu (default: auto)")
    parser.add_argument("--data", type=RULES["data"], metavar="DIR",
                        help="folder holding cifar-10-batches-py/ or cifar-10-python.tar.gz "
                             "(default: $TINYGNET_DATA, else ~/.cache/tinygnet)")
    parser.add_argument("--no-download", dest="download", action="store_false",
                        help="never download CIFAR-10; fail if it is not found")
    parser.add_argument("--out", type=RULES["out"], metavar="DIR",
                        help="output folder (default: runs/gradflow-DATE-TIME)")
    parser.add_argument("--resume", metavar="DIR",
                        help="continue the stopped experiment in DIR with its own settings: its "
                             "finished runs are kept, the others trained")
    parser.add_argument("--overwrite", action="store_true",
                        help="start over in an --out that holds an earlier run, replacing its "
                             "outputs (without it, such an --out is refused)")
    parser.add_argument("-j", "--jobs", type=positive_int, metavar="N",
                        help="train N runs at once, each in a worker process on one core; 1 "
                             "trains them one after another in this process (default: one per "
                             "CPU core this process may use; 1 on cuda). Not a setting of the "
                             "experiment (each run is computed the same way): --resume may "
                             "change it")
    parser.add_argument("--no-progress", dest="progress", action="store_false",
                        help="no progress bars")
    return parser


def default_jobs(device: str) -> int:
    """Runs at once when --jobs is not given: one per core on the CPU; on a GPU one, the runs
    sharing the one device."""
    return usable_cores() if device == "cpu" else 1



def resolve_config(args) -> Config:
    """DEFAULTS, then --quick's overrides, then the flags given."""
    values = dict(DEFAULTS)
    if args.quick:
        values.update(QUICK_OVERRIDES)
    values.update(_given(args))
    return Config(**values, device=resolve_device(args.device), data=resolve_data_root(args.data),
                  download=args.download, quick=args.quick,
                  out=args.out or default_out_folder("gradflow"))


def _given(args) -> dict:
    """The experiment's settings given on the command line (argparse leaves the others None)."""
    return {k: v for k, v in vars(args).items() if k in DEFAULTS and v is not None}


def config_for_resume(args, saved: dict) -> Config:
    """The stopped experiment's configuration; flags that would change its results are refused.

    The device, the data folder, downloading and progress bars may change:
    they do not decide what a run computes (a device, only its rounding).
    """
    if args.out is not None and os.path.abspath(args.out) != os.path.abspath(args.resume):
        raise UsageError("--resume continues the experiment in its own folder; leave out --out")
    if args.overwrite:
        raise UsageError(f"--overwrite would delete the experiment that --resume continues "
                         f"({args.resume}); leave it out")
    try:
        config = Config(**saved)
    except TypeError as error:
        raise CheckpointError(f"{args.resume}: its configuration does not fit this version of the "
                              f"demo ({error})") from None
    problem = saved_config_problem(config)
    if problem is not None:
        raise CheckpointError(f"{args.resume}: its saved configuration has {problem}")
    conflicts = [f"--{name.replace('_', '-')} {_flag_text(value)} "
                 f"(saved: {_flag_text(getattr(config, name))})"
                 for name, value in _given(args).items() if value != getattr(config, name)]
    if args.quick and not config.quick:
        conflicts.append("--quick (the saved experiment is not a quick one)")
    if conflicts:
        raise UsageError(f"--resume continues the experiment with its own settings; these "
                         f"options differ from them: {', '.join(conflicts)}")
    config.device = resolve_device(args.device)
    if args.data is not None:
        config.data = resolve_data_root(args.data)
    config.download = args.download
    config.out = args.resume
    return config


def _flag_text(value) -> str:
    """A setting as it is written on the command line (initialisations joined by commas)."""
    return ",".join(value) if isinstance(value, tuple) else str(value)


def _how_to_continue(out) -> str:
    """The start of the "already holds a run" advice, when ``out`` holds kept runs."""
    if os.path.isfile(os.path.join(out, RUNS_FILE)):
        return f"continue it with --resume {shlex.quote(out)}, "
    return ""


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
    finished = {}                      # with --resume: the runs the stopped experiment finished
    try:
        if args.resume is not None:
            finished, config = _stopped_experiment(args)
        else:
            config = resolve_config(args)
        # Held until the run exits: a second run into it (or --resume of it) is refused.
        config.out = held.enter_context(hold_out_folder(
            config.out, "gradflow", OUTPUTS, given=args.out is not None or bool(args.resume),
            replace=args.overwrite, continuing=args.resume is not None,
            advice=_how_to_continue(config.out), resuming=args.resume)).path
    except UsageError as error:
        print(f"{PROG}: error: {error}", file=sys.stderr)
        return EXIT_USAGE
    except (FileNotFoundError, CheckpointError) as error:
        print(f"{PROG}: error: cannot resume: {error}", file=sys.stderr)
        return EXIT_FAILURE
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
          f"{plural(config.seeds, 'seed')}; {config.steps} steps of {config.batch_size} images, "
          f"SGD lr {config.lr} momentum {config.momentum}; for each init and seed, run (a) with "
          f"aux heads (weight {config.aux_weight}) and run (b) without, same initial weights")
    total = len(config.grid())
    if args.resume is not None:
        print(f"resuming {config.out}: {len(finished)} of {plural(total, 'run')} finished and "
              f"kept" + (f", {total - len(finished)} to train" if len(finished) < total
                         else "; the outputs are written again"))
    jobs = min(args.jobs or default_jobs(config.device), total - len(finished))
    if jobs > 1:
        print(f"{jobs} runs at a time, each in a worker process on one core (--jobs)")
        note = more_workers_than_cores(jobs, "--jobs")
        if note:
            print(note)
    runs_file = os.path.join(config.out, RUNS_FILE)

    def keep(results):
        save_runs(runs_file, config, results)

    started = time.perf_counter()
    try:
        config.out = claim_out_folder(config.out, OUTPUTS, replace=args.overwrite)
        runs_file = os.path.join(config.out, RUNS_FILE)
        # config.json first: it says which demo the folder belongs to (--overwrite checks it)
        if not os.path.exists(os.path.join(config.out, "config.json")):
            record = {"demo": "gradflow", "config": dataclasses.asdict(config),
                      "command": " ".join([PROG] + argv),
                      "machine": f"{os.cpu_count()} CPU cores" if config.device == "cpu"
                      else config.device, "started": time.strftime("%Y-%m-%d %H:%M:%S")}
            write_text(os.path.join(config.out, "config.json"), json.dumps(record, indent=2) + "\n")
        if args.resume is None:        # the runs file next: --resume needs only it
            save_runs(runs_file, config, {})
        # Each step checks its loss (train_run); NumPy's warnings would only repeat it.
        with np.errstate(over="ignore", invalid="ignore", divide="ignore"):
            results = run_experiment(config, train_arrays, test_arrays, progress=args.progress,
                                     finished=finished, keep=keep, jobs=jobs)
        write_csv(results, config, os.path.join(config.out, "gradflow.csv"))
        plot_gradflow(results, config, os.path.join(config.out, "gradflow.png"))
        plot_training(results, config, os.path.join(config.out, "gradflow_training.png"))
        plot_split(results, config, os.path.join(config.out, "gradflow_split.png"))
    except TrainingDiverged as error:
        print(f"{PROG}: error: {error}; stopped. Try a smaller --lr (this run: {config.lr:g})",
              file=sys.stderr)
        return EXIT_FAILURE
    except WorkerDied as error:    # killed, out of memory...: the finished runs are on disk
        print(f"{PROG}: error: {error}; {_runs_in(runs_file)} of {plural(total, 'run')} finished, "
              f"kept in {runs_file}: continue with {PROG} --resume {shlex.quote(config.out)}",
              file=sys.stderr)
        return EXIT_FAILURE
    except OSError as error:       # disk full, a folder made read-only during the run...
        print(f"{PROG}: error: cannot write {error.filename or config.out}: {error.strerror}",
              file=sys.stderr)
        return EXIT_FAILURE
    except KeyboardInterrupt as stop:  # Ctrl-C or SIGTERM: the finished runs are on disk
        if not os.path.isfile(runs_file):
            raise
        print(f"\n{PROG}: stopped; {_runs_in(runs_file)} of {plural(total, 'run')} finished, "
              f"kept in {runs_file}. Continue with:\n  {PROG} --resume {shlex.quote(config.out)}",
              file=sys.stderr)
        return exit_status(stop)
    print()
    for line in summary_lines(results, config):
        print(line)
    seconds = f"{time.perf_counter() - started:.0f} s"
    runs = (f"{len(results)} runs in {seconds}" if not finished else
            f"{len(results)} runs ({len(finished)} kept, {len(results) - len(finished)} "
            f"trained in {seconds})")
    print(f"\n{runs}; outputs in {config.out}: {', '.join(OUTPUTS)}")
    return 0


def _runs_in(path) -> int:
    """How many finished runs the runs file holds: read back, as a stop may come between the
    file's rename and any count kept beside it."""
    try:
        return len(load_runs(path)[1])
    except (OSError, CheckpointError):
        return 0


def _stopped_experiment(args) -> tuple:
    """``(finished runs, configuration)`` of the experiment that ``--resume DIR`` continues."""
    if not args.resume:
        raise UsageError("--resume needs the folder of a stopped experiment, got an empty path")
    if not os.path.isdir(args.resume):
        raise FileNotFoundError(f"{args.resume} is not a folder")
    path = os.path.join(args.resume, RUNS_FILE)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"{args.resume} holds no gradflow experiment (no {RUNS_FILE})")
    saved, finished = load_runs(path)
    config = config_for_resume(args, saved)
    stray = sorted(set(finished) - set(config.grid()))
    if stray:
        raise CheckpointError(f"{path!r} holds runs outside its experiment: {stray}")
    return finished, config


if __name__ == "__main__":
    sys.exit(main())
