"""How GoogLeNet trains: one epoch of steps, and the test with the aux heads dropped.

One training step is the paper's recipe in five lines::

    outputs = model(x)                                  # logits, aux1, aux2: N x 10 each
    losses = googlenet_loss(outputs, labels, aux_weight)
    #   total = CE(logits) + aux_weight * (CE(aux1) + CE(aux2))
    optimizer.zero_grad()
    losses.total.backward()                             # one pass back through all three heads
    optimizer.step()

``train_step`` is that step; ``train_epoch`` runs it over the training set
and hands control back after each one; ``evaluate`` tests the main head in
eval mode, where GoogLeNet returns the main logits only (the aux heads exist
to train), optionally averaging each test image's logits over several views
of it; ``evaluate_heads`` also asks the two aux heads (``model.heads``, still
in eval mode, on the image alone) how well the features at inception4a and
inception4d classify. The rest of a CIFAR run (model and optimiser,
checkpoints, Ctrl-C, progress bar, plots) lives in ``run.py`` and its command line in ``cifar.py``; the gradient-flow
experiment (``gradflow.py``) trains with the same step and tests with the
same ``evaluate``. This module is the loop itself.
"""
from __future__ import annotations

import itertools
import math
from collections import namedtuple

import numpy as np

from .. import backend
from ..models import googlenet_loss
from ..tensor import Tensor, no_grad

__all__ = ["train_step", "train_epoch", "evaluate", "evaluate_heads", "predict_classes",
           "continues", "Evaluation",
           "RunningMetrics", "TTA_VIEWS", "TTA_LABELS", "TTA_DESCRIPTIONS"]


def train_step(model, images, labels, optimizer, device, aux_weight=0.3, label_smoothing=0.0,
               backward=None):
    """One step on one batch: forward, the combined loss, backward, update. Returns
    ``(losses, outputs)``: the ``GoogLeNetLoss`` and the model's ``(logits, aux1, aux2)``.

    ``images``: float32 N x 3 x 32 x 32 (host or device); ``labels``: int64 N on
    the host. The model must be in training mode (``train_epoch`` sets it).
    ``backward(losses)``, when given, replaces ``losses.total.backward()``: it
    must leave in each parameter's ``.grad`` the gradient of ``losses.total``
    (the gradient-flow experiment backpropagates the three losses one at a
    time to see what each head contributes, and reads the gradients before
    the update).
    """
    x = Tensor(backend.to_device(images, device))     # N x 3 x 32 x 32, normalised
    outputs = model(x)                 # logits, aux1, aux2: N x 10 each (aux None without heads)
    # Host labels: cross_entropy checks their range on the host, with no GPU sync.
    losses = googlenet_loss(outputs, labels, aux_weight=aux_weight,
                            label_smoothing=label_smoothing)
    optimizer.zero_grad()              # forget the last step's gradients (p.grad = None)
    if backward is None:
        losses.total.backward()        # gradients of the combined loss, all three heads at once
    else:
        backward(losses)               # the same gradients, reached the caller's way
    optimizer.step()                   # update every parameter in place
    return losses, outputs


def train_epoch(model, loader, optimizer, scheduler, metrics, device, aux_weight=0.3,
                label_smoothing=0.0, ema=None, step=train_step):
    """Train on the rest of the current epoch of ``loader``; yield each step's losses.

    A generator: after every step it yields the step's ``GoogLeNetLoss``
    (``total, main, aux1, aux2``, scalar Tensors on ``device``), so the
    caller can show progress, check the loss and stop between two steps,
    when the model, optimiser and loader agree and a checkpoint resumes
    exactly. ``scheduler`` is stepped every step; ``ema`` (an ``EMA`` or
    None) is updated after it; ``metrics`` (a ``RunningMetrics``) adds the
    step's losses and correct predictions without reading them back.
    ``step`` trains one batch: ``train_step``, or ``DataParallel.train_step``
    (``parallel.py``: the batch cut into parts, one worker process each).
    """
    model.train()                      # dropout on, batch norm on batch statistics, aux heads on
    for images, labels in loader:      # a loader resumed mid-epoch starts at the next batch
        losses, outputs = step(model, images, labels, optimizer, device, aux_weight,
                               label_smoothing)
        scheduler.step()               # the learning rate of the next step
        if ema is not None:
            ema.update()               # move the averaged weights towards the new ones
        metrics.add(losses, outputs.logits, backend.to_device(labels, device))
        yield losses


# Test-time augmentation: the views of each test image whose logits are averaged,
# each (dy, dx, mirrored): moved dy rows and dx columns, then mirrored left-right or not.
# The image alone comes first: evaluate_heads tests the aux heads on it.
TTA_VIEWS = {
    "none": ((0, 0, False),),
    "mirror": ((0, 0, False), (0, 0, True)),
    "shifts": tuple((dy, dx, mirrored) for dy, dx in ((0, 0), (-1, -1), (1, 1))
                    for mirrored in (False, True)),
}
TTA_LABELS = {"none": "test", "mirror": "test+mirror", "shifts": "test x6"}   # short, per epoch
TTA_DESCRIPTIONS = {
    "none": "the image alone",
    "mirror": "each image and its mirror",
    "shifts": "6 views of each image (it and its mirror, also shifted one pixel each way)",
}


def evaluate(model, loader, device, num_classes, tta="none"):
    """Test the main head in eval mode: (accuracy, confusion matrix) over ``loader``.

    Eval mode turns dropout off, makes batch norm use its running
    statistics, and drops the aux heads: the model returns the main logits
    only. ``tta`` is test-time augmentation, the mean of the logits of
    several views of each image: ``"none"`` (the image), ``"mirror"`` (the
    image and its left-right mirror: 2 forward passes) or ``"shifts"`` (those
    two, and both moved one pixel up-left and one down-right, edges
    reflected: 6 passes). Training flipped and shifted its images at random,
    so the network knows these views; averaging them evens out its errors.
    ``confusion[i, j]`` counts test images of class ``i`` predicted as ``j``
    (a ``num_classes x num_classes`` int64 NumPy array).
    """
    result = _test(model, loader, device, num_classes, tta, aux=False)
    return result.accuracy, result.confusion


Evaluation = namedtuple("Evaluation", ["accuracy", "confusion", "aux1_accuracy", "aux2_accuracy",
                                       "final_accuracy"], defaults=(math.nan,))
Evaluation.__doc__ = """A test of every head: the main head's accuracy (on --tta's views) and
confusion matrix, then each aux head's accuracy on the image alone (NaN for a model without
aux heads), and the main head's accuracy on ``final_tta``'s views when asked (else NaN)."""


def evaluate_heads(model, loader, device, num_classes, tta="none", final_tta=None,
                   predict=None) -> Evaluation:
    """``evaluate``, and each aux head's test accuracy on the image alone:
    ``Evaluation(accuracy, confusion, aux1_accuracy, aux2_accuracy, final_accuracy)``.

    The aux heads exist to train, and ``model(x)`` in eval mode drops them;
    ``model.heads(x)`` keeps them, so the first view (the image alone) gives
    all three heads' logits in one forward pass: how well do the features of
    inception4a (aux1) and inception4d (aux2) alone classify? The other views,
    if any, feed the main head only, as in ``evaluate``.

    ``final_tta``, when given, is a longer list of views that begins with
    ``tta``'s (``TTA_VIEWS`` grow by adding views: none, mirror, shifts): the
    same pass goes on through its extra views and ``final_accuracy`` is the
    main head's accuracy on all of them. The CIFAR demo's last epoch tests
    this way, so that the final 6-view test does not run the first views twice.

    ``predict`` computes the predictions: ``predict_classes`` (the default),
    or ``DataParallel.predict_classes`` (``parallel.py``: the test images cut
    into parts, one per worker process; the same predictions).
    """
    return _test(model, loader, device, num_classes, tta, aux=True, final_tta=final_tta,
                 predict=predict)


def continues(final_tta, tta) -> bool:
    """Do ``final_tta``'s views begin with ``tta``'s and add more (mirror, then shifts)?
    Then one pass of ``evaluate_heads(..., final_tta=final_tta)`` tests both."""
    views, final_views = TTA_VIEWS[tta], TTA_VIEWS[final_tta]
    return len(final_views) > len(views) and final_views[:len(views)] == views


def _test(model, loader, device, num_classes, tta, aux, final_tta=None,
          predict=None) -> Evaluation:
    if final_tta is not None and not continues(final_tta, tta):
        raise ValueError(f"final_tta={final_tta!r} does not begin with tta={tta!r}'s views "
                         f"and add more")
    predicted = (predict or predict_classes)(model, loader, device, tta, aux, final_tta)
    labels = loader.labels
    confusion = _confusion(predicted["main"], labels, num_classes)
    accuracy = float(np.trace(confusion) / max(confusion.sum(), 1))
    final_accuracy = math.nan
    if final_tta is not None:
        final_confusion = _confusion(predicted["final"], labels, num_classes)
        final_accuracy = float(np.trace(final_confusion) / max(final_confusion.sum(), 1))
    aux_accuracies = [math.nan if predicted[head] is None else
                      float(np.mean(predicted[head] == labels)) for head in ("aux1", "aux2")]
    return Evaluation(accuracy, confusion, *aux_accuracies, final_accuracy)


def predict_classes(model, loader, device, tta, aux, final_tta=None) -> dict:
    """The class each head predicts for each image of ``loader``, in eval mode, in the
    loader's order (int64 NumPy arrays): ``"main"`` from the mean logits of ``tta``'s views,
    ``"final"`` from those of ``final_tta``'s (None when not asked), and with ``aux`` the aux
    heads' ``"aux1"`` and ``"aux2"`` on the image alone (None otherwise, or without heads).
    Each image's prediction depends on that image alone, not on the batch it came in."""
    first = len(TTA_VIEWS[tta])            # views of "main"; final_tta's go on from them
    model.eval()
    predictions, final_predictions, aux_predictions = [], [], {"aux1": [], "aux2": []}
    with no_grad():                    # no graph: nothing is kept for a backward pass
        for images, _ in loader:
            x = backend.to_device(images, device)                       # N x 3 x 32 x 32
            views = _views(x, final_tta or tta)                         # the image alone first
            if aux:
                outputs = model.heads(Tensor(next(views)))              # 3 heads: N x classes
                logits = outputs.logits.data
                for head, found in aux_predictions.items():
                    if getattr(outputs, head) is not None:
                        found.append(getattr(outputs, head).data.argmax(axis=1))
            else:
                logits = 0
            # The sum of the views' logits: the same argmax as their mean.
            for view in itertools.islice(views, first - (1 if aux else 0)):   # tta's other views
                logits = logits + model(Tensor(view)).data              # N x classes
            predictions.append(logits.argmax(axis=1))                   # N, on the device
            if final_tta is not None:
                for view in views:                                      # final_tta's extra views
                    logits = logits + model(Tensor(view)).data
                final_predictions.append(logits.argmax(axis=1))
    model.train()
    return {"main": _gather(predictions),
            "final": _gather(final_predictions) if final_tta is not None else None,
            **{head: _gather(found) if found else None for head, found in aux_predictions.items()}}


def _gather(predictions):
    """The batches' predictions (device arrays) as one int64 NumPy array."""
    if not predictions:                # no test images
        return np.zeros(0, dtype=np.int64)
    xp = backend.get_array_module(predictions[0])
    return backend.to_numpy(xp.concatenate(predictions)).astype(np.int64, copy=False)


def _confusion(predicted, labels, k):
    """confusion[i, j]: test images of class i predicted as j (a k x k int64 NumPy array)."""
    return np.bincount(labels * k + predicted, minlength=k * k).reshape(k, k)


def _views(x, tta):
    """The views of the batch ``x`` (N x C x H x W) that ``tta`` averages, one at a time."""
    xp = backend.get_array_module(x)
    H, W = x.shape[2:]
    shifted = any((dy, dx) != (0, 0) for dy, dx, _ in TTA_VIEWS[tta])
    padded = xp.pad(x, ((0, 0), (0, 0), (1, 1), (1, 1)), mode="reflect") if shifted else None
    for dy, dx, mirrored in TTA_VIEWS[tta]:
        view = x if (dy, dx) == (0, 0) else padded[:, :, 1 + dy:1 + dy + H, 1 + dx:1 + dx + W]
        if mirrored:
            view = view[..., ::-1]                                     # left-right
        yield xp.ascontiguousarray(view)


class RunningMetrics:
    """Sums of the loss parts and correct predictions over an epoch, kept on the device.

    ``add`` only queues device work; ``means()`` reads the sums back (a host
    sync on a GPU), so a training loop calls it only every few steps.
    """

    PARTS = ("loss", "loss_main", "loss_aux1", "loss_aux2")

    def __init__(self, xp):
        self.xp = xp
        self.sums = xp.zeros(len(self.PARTS), dtype=xp.float64)   # loss parts x images
        self.correct = xp.zeros((), dtype=xp.int64)
        self.images = 0
        self.present = [True, True, False, False]   # aux parts: once the heads report

    def add(self, losses, logits, labels):
        """One step: ``losses`` a GoogLeNetLoss, ``logits`` N x classes, ``labels`` N (device)."""
        n = len(labels)
        for i, part in enumerate(losses):           # total, main, aux1, aux2
            if part is not None:
                self.sums[i] += part.data * n
                self.present[i] = True
        self.correct += (logits.data.argmax(axis=1) == labels).sum()
        self.images += n

    def means(self) -> dict:
        """Mean of each loss part per image (NaN for an absent aux head) and the accuracy."""
        sums = backend.to_numpy(self.sums)
        n = max(self.images, 1)
        values = {name: (float(s) / n if present else math.nan)
                  for name, s, present in zip(self.PARTS, sums, self.present)}
        values["train_acc"] = int(backend.to_numpy(self.correct)) / n
        return values

    def state_dict(self) -> dict:
        return {"sums": backend.to_numpy(self.sums).copy(),
                "correct": int(backend.to_numpy(self.correct)), "images": self.images,
                "present": list(self.present)}

    def load_state_dict(self, state):
        self.sums = self.xp.asarray(state["sums"])
        self.correct = self.xp.asarray(state["correct"], dtype=self.xp.int64)
        self.images, self.present = int(state["images"]), list(state["present"])
