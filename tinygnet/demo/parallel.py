"""Data parallelism on the CPU: each training step's batch cut into parts, one process a part.

One process leaves a core idle for much of a step: NumPy runs each
elementwise pass on one thread, and GoogLeNet's many small convolutions,
batch norms and ReLUs at the demo's width are too small to cut into blocks
for tinygnet's threads. Whole, independent pieces of work fill the cores:
here, the parts of a batch. ``DataParallel(model_args, processes=2)`` starts
two worker processes, each with its own copy of the network, each on one core
(``workers.py``). Every training step (``DataParallel.train_step``, in place
of ``training.train_step``):

1. the parent draws one seed per part from its random stream (for the
   part's dropout masks) and sends each worker the current weights and
   batch-norm running statistics, its part of the batch (the first parts one
   image larger when the batch does not divide evenly) and its seed;
2. each worker runs forward, the three-head loss and backward on its part,
   and sends back its gradients, losses, logits and running statistics;
3. the parent averages the parts' gradients, each weighted by its share of
   the batch: the gradient of the whole batch's mean loss. Its optimiser
   updates the weights, as after ``training.train_step``.

The parent owns the model, the optimiser and everything a checkpoint holds;
a worker keeps nothing from one step to the next (the weights come with each
step), so checkpoints and resuming are those of a one-process run. The test
after each epoch is cut the same way (``DataParallel.predict_classes``): each
worker predicts the classes of its part of the test images, and since an
image's prediction depends on that image alone, the numbers are those one
process gets.

What the number of parts changes (so it belongs to a run's configuration,
as the batch size does): batch norm normalises each part by the part's own
mean and variance, as PyTorch's ``DistributedDataParallel`` does without
``SyncBatchNorm``, and the running statistics kept for testing are the first
part's (DDP keeps the first process's); dropout draws each part's masks from
the part's seed. Everything else is the whole batch's: the loss is the mean
over all its images, and the update is the one its gradient gives.
"""
from __future__ import annotations

import contextlib
import multiprocessing
import os
import signal
import traceback

import numpy as np

from .. import backend
from ..data import DataLoader
from ..models import GoogLeNet, GoogLeNetLoss, GoogLeNetOutputs, googlenet_loss
from ..tensor import Tensor
from .training import predict_classes
from .workers import WorkerDied, WorkerTraceback, how_it_ended, settle_in, start_process

__all__ = ["DataParallel", "part_sizes"]


def part_sizes(n: int, parts: int) -> list:
    """How many of ``n`` images each of ``parts`` parts takes: as equal as can be, the first
    ones one larger (``np.array_split``'s rule); a part may be empty when ``n < parts``."""
    small, larger = divmod(n, parts)
    return [small + 1] * larger + [small] * (parts - larger)


class DataParallel:
    """Worker processes that train each batch in ``processes`` parts, side by side.

    ``model_args``: the keyword arguments of the ``GoogLeNet`` the parent
    trains (each worker builds the same network; its weights arrive with each
    step). Use it as a context manager, or call ``close()``: the workers end
    with it (and with the parent, however it ends). A worker that dies
    raises ``WorkerDied``; an error in a worker is raised again here, its
    traceback attached.
    """

    def __init__(self, model_args: dict, processes: int):
        if isinstance(processes, bool) or not isinstance(processes, int) or processes < 2:
            raise ValueError(f"DataParallel: processes must be an integer >= 2, got {processes!r}")
        self.processes = processes
        self.workers = []           # (process, the parent's end of its pipe)
        context = multiprocessing.get_context("spawn")
        try:
            for part in range(processes):
                ours, theirs = context.Pipe()
                # Ctrl-C and SIGTERM are the parent's: it stops between two steps.
                process = start_process(context, work, name=f"tinygnet-part-{part}",
                                        args=(theirs, model_args, os.getpid(), np.geterr()),
                                        deaf_to=(signal.SIGINT, signal.SIGTERM))
                theirs.close()      # the worker's end: if it dies, ours reads EOF
                self.workers.append((process, ours))
        except BaseException:
            self.close()
            raise

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()

    def close(self) -> None:
        """End the workers (nothing of theirs is lost: they keep nothing between steps)."""
        for process, connection in self.workers:
            connection.close()
            process.kill()
            process.join()
        self.workers = []

    def train_step(self, model, images, labels, optimizer, device="cpu", aux_weight=0.3,
                   label_smoothing=0.0):
        """``training.train_step`` with the batch cut into parts: returns ``(losses, outputs)``,
        the whole batch's (each loss the mean over all its images; the logits of every image,
        in the batch's order), after the optimiser's update."""
        if device != "cpu":
            raise ValueError(f"DataParallel trains on the CPU only, got device {device!r}")
        params, buffers = list(model.parameters()), list(model.buffers())
        # One seed per part, drawn whether or not the part is empty: the stream moves the same.
        seeds = backend.default_generator().integers(0, 2**63 - 1, size=self.processes)
        weights = _flatten([p.data for p in params])
        statistics = _flatten([b.data for b in buffers])   # batch norm's running mean and var
        parts = self._in_parts(len(labels), lambda part, k: (
            "step", weights, statistics, images[part], labels[part], int(seeds[k]), aux_weight,
            label_smoothing))

        # The whole batch's mean loss is the parts' mean losses weighted by their sizes, and
        # so is its gradient. Summed in the parts' order: the same bits every time.
        shares = [size / len(labels) for size, _ in parts]
        replies = [reply for _, reply in parts]
        gradient = sum(share * reply["gradient"] for share, reply in zip(shares, replies))
        optimizer.zero_grad()
        for i, (p, g) in enumerate(zip(params, _unflatten(gradient, params))):
            p.grad = None if all(reply["missing"][i] for reply in replies) else Tensor(g)
        for b, updated in zip(buffers, _unflatten(replies[0]["buffers"], buffers)):
            b.data[...] = updated      # the first part's running statistics (DDP keeps rank 0's)
        losses = GoogLeNetLoss(*[
            None if replies[0]["losses"][i] is None else
            Tensor(np.asarray(sum(share * reply["losses"][i]
                                  for share, reply in zip(shares, replies))))
            for i in range(len(GoogLeNetLoss._fields))])
        outputs = GoogLeNetOutputs(*[
            None if replies[0]["outputs"][i] is None else
            Tensor(np.concatenate([reply["outputs"][i] for reply in replies]))
            for i in range(len(GoogLeNetOutputs._fields))])
        optimizer.step()
        return losses, outputs

    def predict_classes(self, model, loader, device="cpu", tta="none", aux=False,
                        final_tta=None) -> dict:
        """``training.predict_classes`` with the test images cut into parts, one per worker:
        the same predictions (each image's depends on it alone), in the loader's order."""
        if device != "cpu":
            raise ValueError(f"DataParallel tests on the CPU only, got device {device!r}")
        if loader.shuffle or loader.augment:
            raise ValueError("DataParallel.predict_classes needs a test loader: no shuffling, "
                             "no augmentation")
        weights = _flatten([p.data for p in model.parameters()])
        statistics = _flatten([b.data for b in model.buffers()])
        parts = self._in_parts(len(loader.labels), lambda part, k: (
            "predict", weights, statistics, loader.images[part], loader.labels[part],
            loader.batch_size, loader.normalize, tta, aux, final_tta))
        replies = [reply for _, reply in parts]
        return {key: None if replies[0][key] is None else
                np.concatenate([reply[key] for reply in replies]) for key in replies[0]}

    def _in_parts(self, n: int, message) -> list:
        """Cut ``n`` images into the workers' parts (``part_sizes``), send each worker
        ``message(part, k)`` for its part ``part`` (a slice; ``k`` its index), then wait for
        them all: ``[(size, reply)]`` of the parts that are not empty, in order. A worker's
        error is raised once every worker has answered: no reply is left in a pipe, to be
        taken for the next call's."""
        start, sent = 0, []
        for k, ((process, connection), size) in enumerate(
                zip(self.workers, part_sizes(n, self.processes))):
            if size:
                self._send(process, connection, message(slice(start, start + size), k))
                sent.append((process, connection, size))
                start += size
        replies, errors = [], []
        for process, connection, size in sent:
            try:
                replies.append((size, self._receive(process, connection)))
            except Exception as error:              # a worker's error, or WorkerDied
                errors.append(error)
        if errors:
            raise errors[0]
        return replies

    def _send(self, process, connection, message) -> None:
        try:
            connection.send(message)
        except (BrokenPipeError, ConnectionError):
            raise WorkerDied(self._death(process)) from None

    def _receive(self, process, connection) -> dict:
        try:
            kind, value = connection.recv()
        except (EOFError, ConnectionError):
            raise WorkerDied(self._death(process)) from None
        if kind == "failed":
            error, text = value
            raise error from WorkerTraceback(text)
        return value

    @staticmethod
    def _death(process) -> str:
        return (f"the worker process {process.name} ended before its part was done "
                f"({how_it_ended(process)})")


def _flatten(arrays) -> np.ndarray:
    """The arrays (one dtype) end to end in one 1-D array: one message instead of hundreds."""
    return np.concatenate([a.ravel() for a in arrays]) if arrays else np.zeros(0, np.float32)


def _unflatten(flat, like) -> list:
    """``flat`` cut back into arrays shaped as the Tensors (or arrays) ``like`` (views)."""
    pieces, start = [], 0
    for t in like:
        shape = t.shape
        size = int(np.prod(shape, dtype=np.int64))
        pieces.append(flat[start:start + size].reshape(shape))
        start += size
    return pieces


# ==========================================================================
# The worker process
# ==========================================================================
def work(connection, model_args: dict, parent: int, errors: dict) -> None:
    """A worker: build the network, then for each message do its part, ``("step", ...)``
    (``train_part``) or ``("predict", ...)`` (``predict_part``), and send back
    ``("done", reply)`` or ``("failed", (error, traceback))``. Ends when the parent closes
    the pipe, or dies."""
    settle_in(parent)             # one core, memory kept, ends with the parent
    model = GoogLeNet(**model_args)
    model.train()                 # dropout on, batch norm on the part's statistics, aux heads on
    # NumPy's error handling as the parent's: the warnings it silences are silent here too.
    with np.errstate(**errors), contextlib.suppress(EOFError, BrokenPipeError):
        while True:
            kind, *message = connection.recv()
            try:
                reply = (train_part if kind == "step" else predict_part)(model, *message)
            except Exception as error:
                connection.send(("failed", (error, traceback.format_exc())))
            else:
                connection.send(("done", reply))


def train_part(model, weights, statistics, images, labels, seed, aux_weight,
               label_smoothing) -> dict:
    """Forward, the three-head loss and backward of one part of a batch, on ``model`` given
    the parent's flat ``weights`` and batch-norm running ``statistics``; dropout draws from a
    stream seeded with ``seed``. Returns what the parent needs: the flat gradient, which
    parameters got none, the losses (None for an absent head), the heads' logits and
    the running statistics as this part's batch statistics updated them."""
    params, buffers = _load(model, weights, statistics)
    backend.manual_seed(seed)
    outputs = model(Tensor(images))                                   # 3 heads: n x classes
    losses = googlenet_loss(outputs, labels, aux_weight=aux_weight,
                            label_smoothing=label_smoothing)
    losses.total.backward()
    return {"gradient": _flatten([p.data * 0 if p.grad is None else p.grad.data for p in params]),
            "missing": [p.grad is None for p in params],
            "losses": [None if part is None else part.data for part in losses],   # 0-d arrays
            "outputs": [None if head is None else head.data for head in outputs],
            "buffers": _flatten([b.data for b in buffers])}


def predict_part(model, weights, statistics, images, labels, batch_size, normalize, tta, aux,
                 final_tta) -> dict:
    """``training.predict_classes`` on one part of the test images (uint8, normalised by the
    parent's ``normalize``), with the parent's weights and running statistics."""
    _load(model, weights, statistics)
    loader = DataLoader((images, labels), batch_size, shuffle=False, augment=False, seed=0)
    loader.normalize = normalize
    return predict_classes(model, loader, "cpu", tta, aux, final_tta)


def _load(model, weights, statistics):
    """Set the worker's network to the parent's flat ``weights`` and running ``statistics``,
    gradients forgotten; returns its (parameters, buffers)."""
    params, buffers = list(model.parameters()), list(model.buffers())
    if params and params[0].dtype != weights.dtype:     # a float64 network (gradient checks)
        model.to(dtype=weights.dtype)
    for p, w in zip(params, _unflatten(weights, params)):
        p.data[...] = w
        p.grad = None
    for b, s in zip(buffers, _unflatten(statistics, buffers)):
        b.data[...] = s
    return params, buffers
