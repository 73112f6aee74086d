"""The training step both benchmarks time, for tinygnet and for the PyTorch port,
and the interleaved timing loop they share.

One step: forward, the combined loss (main + 0.3 * aux, label smoothing 0.1),
backward and an SGD update (momentum, Nesterov, weight decay), on a fixed
random batch already on ``device``, always in train mode (aux heads, dropout,
batch statistics): each step sets it, since the benchmarks also run the same
model in eval mode between steps. Import after the thread pools are sized.
"""
import time

import numpy as np

from tinygnet import backend
from tinygnet.models import googlenet_loss
from tinygnet.optim import SGD
from tinygnet.tensor import Tensor

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
    x = Tensor(backend.to_device(x, device))   # labels stay on the host: no GPU sync in the loss

    def step():
        model.train()
        optimizer.zero_grad()
        googlenet_loss(model(x), y, **LOSS_OPTIONS).total.backward()
        optimizer.step()
    return step


def torch_train_step(model, batch, device="cpu"):
    import torch
    import torch_googlenet
    optimizer = torch.optim.SGD(model.parameters(), **SGD_OPTIONS)
    x, y = data(batch)
    x, y = torch.from_numpy(x).to(device), torch.from_numpy(y).to(device)

    def step():
        model.train()
        optimizer.zero_grad(set_to_none=True)
        torch_googlenet.googlenet_loss(model(x), y, **LOSS_OPTIONS).backward()
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
