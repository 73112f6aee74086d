"""The training step both benchmarks time, for tinygnet and for the PyTorch port,
and the interleaved timing loop they share.

One step: forward, the combined loss (main + 0.3 * aux, label smoothing 0.1),
backward and an SGD update (momentum, Nesterov, weight decay), on a fixed
random batch already on ``device``. tinygnet's is the CIFAR demo's own step,
``tinygnet.demo.training.train_step``, so what is timed is what the demo runs;
the PyTorch step is written in the same order (the last step's gradients are
dropped after the forward pass, as in the demo). Each step sets training mode
itself, so a test in eval mode between two timed steps cannot change what is
timed. Import after the thread pools are sized.
"""
import time

import numpy as np

from tinygnet import backend
from tinygnet.demo.training import train_step
from tinygnet.optim import SGD

NUM_CLASSES = 10
SGD_OPTIONS = dict(lr=0.01, momentum=0.9, nesterov=True, weight_decay=5e-4)
LOSS_OPTIONS = dict(aux_weight=0.3, label_smoothing=0.1)


def data(batch, seed=0):
    """A fixed batch: float32 N x 3 x 32 x 32 images and int64 labels (host arrays)."""
    rng = np.random.default_rng(seed)
    return (rng.standard_normal((batch, 3, 32, 32), dtype=np.float32),
            rng.integers(0, NUM_CLASSES, batch))


def tinygnet_train_step(model, batch, device="cpu"):
    optimizer = SGD(model.parameters(), **SGD_OPTIONS)
    x, y = data(batch)
    x = backend.to_device(x, device)   # labels stay on the host: no GPU sync in the loss

    def step():
        model.train()
        train_step(model, x, y, optimizer, device, **LOSS_OPTIONS)
    return step


def tinygnet_parallel_train_step(model, model_args, batch, parallel):
    """The CIFAR demo's CPU step: the batch cut into parts, each trained in a worker process of
    ``parallel`` (a ``DataParallel`` built for ``model_args``, the model's GoogLeNet arguments)."""
    optimizer = SGD(model.parameters(), **SGD_OPTIONS)
    x, y = data(batch)

    def step():
        model.train()
        parallel.train_step(model, x, y, optimizer, "cpu", **LOSS_OPTIONS)
    return step


def torch_train_step(model, batch, device="cpu"):
    import torch
    import torch_googlenet
    optimizer = torch.optim.SGD(model.parameters(), **SGD_OPTIONS)
    x, y = data(batch)
    x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)

    def step():
        model.train()
        loss = torch_googlenet.googlenet_loss(model(x), y, **LOSS_OPTIONS)
        optimizer.zero_grad(set_to_none=True)
        loss.backward()
        optimizer.step()
    return step


def interleaved(cases: dict, repeats: int, warmup: int = 1) -> dict:
    """{name: fn} -> {name: sorted list of seconds}. Repeats are interleaved across
    the cases (a, b, a, b, ...) so that a change in machine load hits them all."""
    for fn in cases.values():
        for _ in range(warmup):
            fn()
    times = {name: [] for name in cases}
    for _ in range(repeats):
        for name, fn in cases.items():
            start = time.perf_counter()
            fn()
            times[name].append(time.perf_counter() - start)
    return {name: sorted(t) for name, t in times.items()}
