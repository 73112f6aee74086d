"""The CIFAR demo run in child processes, with a fault injected at a chosen moment (not a time).

Used by the demo tests; CIFAR-10 there is a tiny fake with PER_BATCH images per batch.

    python demo_child.py kill-each PER_BATCH I,J,... OUTROOT -- ARGV...
        For each i listed, fork a child that runs the demo with ARGV --out OUTROOT/i and
        kills itself with SIGKILL at the i-th step of a file write, counted from 0
        (tinygnet.checkpoint's write hook: before the temporary file, after it is written,
        after the rename). Prints one line per child: "i killed" or "i exited STATUS" (the
        run ended before its i-th write step).

    python demo_child.py signal-at-step PER_BATCH STEP SIGNAL[xN] -- ARGV...
        Run the demo and send this process SIGNAL (e.g. SIGTERM; SIGTERMx2: twice in a row;
        SIGKILL) after its STEP-th optimiser step; exits with the demo's exit status. With
        "group-SIGNAL" the signal goes to the whole process group, as a terminal sends Ctrl-C
        (start this in a session of its own), in the middle of the STEP-th step: once the
        worker processes of cifar --processes have their parts; with "worker-SIGNAL" to one
        worker process after the STEP-th step.

    python demo_child.py gradflow-signal-at-step PER_BATCH STEP SIGNAL[xN] -- ARGV...
        The same with the gradflow demo.

    python demo_child.py gradflow-signal-at-run PER_BATCH RUNS SIGNAL -- ARGV...
        Run the gradflow demo and send SIGNAL once the kept runs (gradflow_runs.npz) number
        RUNS: with --jobs N > 1 the steps are taken in worker processes, but the runs are
        kept here. SIGNAL goes to this process, after printing "workers PID..." (the worker
        processes alive then); with "worker-SIGNAL" to one of the workers; with "group-SIGNAL"
        to the whole process group, as a terminal sends Ctrl-C (start this in a session of
        its own).

Plots are drawn by ``fake_plots``: matplotlib takes half a second a figure, and what these
tests check is where the writes fall, not the pictures. Forking saves every child the imports
(a second each); the parent computes nothing, so no worker thread exists to be lost in a fork.

STEP 0 never comes: signal-at-step with STEP 0 is a plain run of the demo. With
DEMO_CHILD_LOAD_SECONDS=S in the environment, loading the data takes S seconds more, as the real
CIFAR-10 does (2-3 s): the time between the --out check and the first write.
"""
import multiprocessing
import os
import signal
import sys
import time

import matplotlib.figure  # noqa: F401  (imported once here, inherited by every child)

import tinygnet.checkpoint
import tinygnet.data.cifar
import tinygnet.optim
from tinygnet.demo import cifar, gradflow, parallel, run

PNG = b"\x89PNG\r\n\x1a\n"


def fake_plots(trainer, confusion):
    """Stands in for ``Trainer.write_plots``: the same two atomic writes, in the same order,
    of a small file that says which epoch it shows."""
    for name in run.PLOTS:
        content = PNG + b"epoch %d" % trainer.epoch
        tinygnet.checkpoint.atomic_write(os.path.join(trainer.config.out, name),
                                         lambda f: f.write(content))


def kill_each(points, outroot, argv):
    for i in points:
        pid = os.fork()
        if pid == 0:                                  # the child: run until the i-th write step
            reached = iter(range(i + 1))

            def hook(event, path):
                if next(reached) == i:
                    os.kill(os.getpid(), signal.SIGKILL)

            tinygnet.checkpoint._write_hook = hook
            with open(os.devnull, "w") as quiet:
                sys.stdout = sys.stderr = quiet
                status = cifar.main(argv + ["--out", os.path.join(outroot, str(i))])
            os._exit(100 + status)                    # never reached the i-th write step
        _, status = os.waitpid(pid, 0)
        if os.WIFSIGNALED(status) and os.WTERMSIG(status) == signal.SIGKILL:
            print(i, "killed", flush=True)
        else:
            print(i, "exited", os.waitstatus_to_exitcode(status), flush=True)
    return 0


def signal_at_step(step, signum, times, argv, demo=cifar, target=""):
    real_step, count = tinygnet.optim.Optimizer.step, [0]
    if target == "group":
        return group_signal_mid_step(step, signum, argv)

    def step_then_signal(self):
        real_step(self)
        count[0] += 1
        if count[0] == step:
            for _ in range(times):
                if target == "group":
                    os.killpg(os.getpgid(0), signum)
                elif target == "worker":
                    os.kill(multiprocessing.active_children()[0].pid, signum)
                else:
                    os.kill(os.getpid(), signum)

    tinygnet.optim.Optimizer.step = step_then_signal
    return demo.main(argv)


def group_signal_mid_step(step, signum, argv):
    real_send, sent = parallel.DataParallel._send, [0]

    def send_then_signal(self, process, connection, message):
        real_send(self, process, connection, message)
        if message[0] == "step":
            sent[0] += 1
            if sent[0] == step * self.processes:       # the workers have the step's parts
                os.killpg(os.getpgid(0), signum)

    parallel.DataParallel._send = send_then_signal
    return cifar.main(argv)


def signal_at_run(runs, target, argv):
    real_save, signum = gradflow.save_runs, signal.Signals[target.split("-")[-1]]

    def save_then_signal(path, config, results):
        real_save(path, config, results)
        if len(results) == runs:
            workers = [process.pid for process in multiprocessing.active_children()]
            if target.startswith("worker-"):
                os.kill(workers[0], signum)
            elif target.startswith("group-"):
                print("workers", *workers, flush=True)
                os.killpg(os.getpgid(0), signum)
            else:
                print("workers", *workers, flush=True)
                os.kill(os.getpid(), signum)

    gradflow.save_runs = save_then_signal
    return gradflow.main(argv)


def main():
    mode, per_batch, first, second, separator, *argv = sys.argv[1:]
    assert separator == "--", "usage: see the docstring"
    tinygnet.data.cifar.IMAGES_PER_BATCH = int(per_batch)     # the fake data's batch size
    run.Trainer.write_plots = fake_plots
    seconds = float(os.environ.get("DEMO_CHILD_LOAD_SECONDS", 0))
    if seconds:
        load = cifar.load_cifar10

        def slow_load(config):
            time.sleep(seconds)
            return load(config)

        cifar.load_cifar10 = slow_load
    if mode == "kill-each":
        return kill_each([int(i) for i in first.split(",")], second, argv)
    if mode in ("signal-at-step", "gradflow-signal-at-step"):
        name, _, times = second.partition("x")
        target, _, name = name.rpartition("-")
        demo = gradflow if mode.startswith("gradflow") else cifar
        return signal_at_step(int(first), signal.Signals[name], int(times or 1), argv, demo,
                              target)
    if mode == "gradflow-signal-at-run":
        return signal_at_run(int(first), second, argv)
    raise SystemExit(f"unknown mode {mode!r}")


if __name__ == "__main__":
    sys.exit(main())
