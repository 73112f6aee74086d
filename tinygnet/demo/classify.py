"""``python -m tinygnet.demo classify PHOTO...``: the real GoogLeNet's three heads on your photos.

    python -m tinygnet.demo classify cat.jpg dog.png
    python -m tinygnet.demo classify cat.jpg --weights ~/Downloads/bvlc_googlenet.caffemodel
    python -m tinygnet.demo classify cat.jpg --gradients

Loads the BVLC GoogLeNet (``bvlc_googlenet.caffemodel``, the Caffe
replication of the 2014 paper, trained on ImageNet with both auxiliary
classifiers) into tinygnet's ``GoogLeNet`` with tinygnet's own reader, and
prints for each photo the top-5 classes of the three heads side by side:
the main classifier (loss3, on inception5b), aux1 (loss1, on inception4a)
and aux2 (loss2, on inception4d). The aux heads were trained to help
gradients reach the lower layers; here they are asked, at inference, what
the features of the middle of the network alone say about the photo.

``--filters PNG`` draws conv1's 64 trained 7x7 filters into a new PNG file.
``--gradients`` also backpropagates, for each photo and the main head's
top class (or ``--label``), the paper's training loss ``main + 0.3 * (aux1
+ aux2)`` one head at a time, and prints each head's share of conv1's
gradient (``tinygnet.diagnostics.split_backward``) in the trained network.

The weights (53 MB) are read from ``--weights FILE``, else from
``bvlc_googlenet.caffemodel`` in the data folder (``--data``,
$TINYGNET_DATA, ``~/.cache/tinygnet``); nothing is downloaded.
"""
from __future__ import annotations

import argparse
import hashlib
import math
import os
import sys

import numpy as np

from ..data import imagenet_classes, load_image, resolve_data_root
from ..diagnostics import split_backward
from ..models import googlenet_loss, load_caffe_googlenet
from ..tensor import Tensor, no_grad
from .common import positive_int

PROG = "python -m tinygnet.demo classify"
EXIT_FAILURE, EXIT_USAGE = 1, 2

WEIGHTS_FILE = "bvlc_googlenet.caffemodel"
WEIGHTS_URL = "http://dl.caffe.berkeleyvision.org/bvlc_googlenet.caffemodel"
WEIGHTS_SIZE = "53 MB"
WEIGHTS_SHA1 = "405fc5acd08a3bb12de8ee5e23a96bec22f08204"
HEADS = [("logits", "main (loss3, inception5b)"), ("aux1", "aux1 (loss1, inception4a)"),
         ("aux2", "aux2 (loss2, inception4d)")]
AUX_WEIGHT = 0.3                 # the paper's discount of the aux losses
BATCH = 8                        # photos per forward pass


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(
        prog=PROG, description="Classify photos with the BVLC GoogLeNet: the top classes of its "
                               "main head and of its two auxiliary heads, side by side.")
    parser.add_argument("photos", nargs="+", metavar="PHOTO", help="image files (JPEG, PNG, ...)")
    parser.add_argument("--weights", metavar="FILE", default=None,
                        help=f"the caffemodel (default: {WEIGHTS_FILE} in the data folder)")
    parser.add_argument("--data", metavar="DIR", default=None,
                        help="the data folder (default: $TINYGNET_DATA, else ~/.cache/tinygnet)")
    parser.add_argument("--top", type=positive_int, default=5, metavar="K",
                        help="classes shown per head (default: 5)")
    parser.add_argument("--gradients", action="store_true",
                        help="also show each head's share of conv1's gradient for the photo")
    parser.add_argument("--filters", default=None, metavar="PNG",
                        help="also draw conv1's trained filters into this (new) PNG file")
    parser.add_argument("--label", default=None, metavar="CLASS",
                        help="with --gradients: the class the losses are taken against, an index "
                             "0-999 or a name (default: the main head's top class)")
    return parser


def main(argv=None) -> int:
    """Classify the photos; returns the exit status: 0, 1 (a file that cannot be read) or 2."""
    argv = sys.argv[1:] if argv is None else list(argv)
    args = build_parser().parse_args(argv)
    try:
        return _run(args)
    except KeyboardInterrupt:
        print(f"\n{PROG}: stopped", file=sys.stderr)
        return 130


def _error(message, status=EXIT_FAILURE) -> int:
    print(f"{PROG}: error: {message}", file=sys.stderr)
    return status


def _run(args) -> int:
    classes = imagenet_classes()
    if args.top > len(classes):
        return _error(f"--top {args.top}: there are {len(classes)} classes", EXIT_USAGE)
    label = None
    if args.label is not None:
        label = _class_index(args.label, classes)
        if label is None:
            return _error(f"--label {args.label!r}: not a class index 0-{len(classes) - 1} or an "
                          f"ImageNet class name (e.g. 'tabby')", EXIT_USAGE)
        if not args.gradients:
            return _error("--label is for --gradients", EXIT_USAGE)

    if args.filters is not None and os.path.lexists(args.filters):
        return _error(f"--filters {args.filters}: the file exists; give a new name (it is not "
                      f"overwritten)", EXIT_USAGE)
    weights = args.weights or os.path.join(resolve_data_root(args.data), WEIGHTS_FILE)
    if not os.path.isfile(weights):
        if args.weights:
            return _error(f"--weights {weights}: no such file")
        return _error(f"no GoogLeNet weights at {weights}: download {WEIGHTS_URL} "
                      f"({WEIGHTS_SIZE}, sha1 {WEIGHTS_SHA1}) and put it there, or pass "
                      f"--weights FILE")
    images = []
    for photo in args.photos:                          # every photo checked before the model
        try:
            images.append(load_image(photo))           # 3 x 224 x 224, BGR minus the mean
        except (OSError, ValueError) as error:
            return _error(error)

    try:
        digest = _sha1(weights)
    except OSError as error:
        return _error(f"cannot read {weights}: {error.strerror}")
    if digest == WEIGHTS_SHA1:
        print(f"weights: {weights} (the BVLC release: sha1 matches)")
    else:                                  # said before loading: it may explain a load error
        print(f"weights: {weights}\nnote: its sha1 is {digest}, not the BVLC release's "
              f"{WEIGHTS_SHA1} (another GoogLeNet caffemodel can still load)", flush=True)
    try:
        model = load_caffe_googlenet(weights)
    except ValueError as error:
        return _error(error)
    except OSError as error:
        return _error(f"cannot read {weights}: {error.strerror}")
    if args.filters is not None:
        try:
            _draw_filters(model.conv1.weight.data, args.filters, os.path.basename(weights))
        except OSError as error:
            return _error(f"cannot write {args.filters}: {error.strerror}")
        print(f"conv1's {model.conv1.weight.shape[0]} filters: {args.filters}")
    heads = HEADS if model.aux1 is not None else HEADS[:1]
    if model.aux1 is None:
        print("note: this file has no aux heads (loss1/*, loss2/*): the main head only")

    for start in range(0, len(images), BATCH):
        batch = np.stack(images[start:start + BATCH])                    # N x 3 x 224 x 224
        with no_grad():
            outputs = model.heads(Tensor(batch))                         # eval mode: 3 x N x 1000
        for i, photo in enumerate(args.photos[start:start + BATCH]):
            print()
            print(photo)
            columns = [[title] + _top(_softmax(getattr(outputs, head).data[i]), args.top,
                                      classes) for head, title in heads]
            widths = [max(map(len, column)) + 3 for column in columns]
            for row in zip(*columns):                     # the titles, then the top classes
                print("  " + "".join(f"{cell:<{w}}" for cell, w in zip(row, widths)).rstrip())
            if args.gradients:
                target = label if label is not None else int(outputs.logits.data[i].argmax())
                _print_gradient_split(model, batch[i:i + 1], target, classes)
    return 0


def _class_index(text, classes):
    """A class from ``--label``: its index, or a name of it (any of its synonyms, any case)."""
    if text.isdigit():
        index = int(text)
        return index if index < len(classes) else None
    wanted = text.strip().lower()
    for index, item in enumerate(classes):
        if wanted in (name.strip().lower() for name in item.description.split(",")):
            return index
    return None


def _sha1(path) -> str:
    digest = hashlib.sha1()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def _softmax(logits):
    shifted = np.exp(logits.astype(np.float64) - logits.max())
    return shifted / shifted.sum()


def _top(probabilities, k, classes):
    """The ``k`` most probable classes as cells: " 62.1% tabby"."""
    best = np.argsort(-probabilities, kind="stable")[:k]
    return [f"{100 * probabilities[index]:5.1f}% {classes[index].name}" for index in best]


def _print_gradient_split(model, image, target, classes):
    """Each head's share of conv1's gradient for one photo, the paper's loss against ``target``."""
    outputs = model.heads(Tensor(image))                                 # eval mode, with a graph
    labels = np.array([target])
    losses = googlenet_loss(outputs, labels, aux_weight=AUX_WEIGHT)
    terms = {"main": (losses.main, 1.0), "aux1": (losses.aux1, AUX_WEIGHT),
             "aux2": (losses.aux2, AUX_WEIGHT)}
    model.zero_grad()
    with np.errstate(over="ignore", invalid="ignore"):      # a non-finite share prints n/a
        split = split_backward(model, terms, layers=["conv1"])["conv1"]
    model.zero_grad()
    shares = ", ".join(f"{name} {100 * share:.0f}%" if math.isfinite(share) else f"{name} n/a"
                       for name, share in split.shares.items())
    each = ", ".join(f"{name} {float(loss.data):.3g}" for name, (loss, _) in terms.items()
                     if loss is not None)
    print(f"  the loss main + {AUX_WEIGHT} x (aux1 + aux2) for '{classes[target].name}' "
          f"(cross-entropy {each}):")
    print(f"    each head's share of conv1's gradient: {shares}")


def filter_mosaic(weight, columns=8):
    """conv1's filters (N x 3 x KH x KW, input channels BGR) as one RGB picture: a grid of
    ``columns`` filters a row, each scaled to [0, 1] on its own, 1-pixel white gaps."""
    n, _, kh, kw = weight.shape
    rgb = weight[:, ::-1].astype(np.float64)                     # BGR -> RGB, to be seen
    low = rgb.min(axis=(1, 2, 3), keepdims=True)
    high = rgb.max(axis=(1, 2, 3), keepdims=True)
    tiles = ((rgb - low) / np.maximum(high - low, 1e-12)).transpose(0, 2, 3, 1)   # N x KH x KW x 3
    rows = -(-n // columns)
    mosaic = np.ones((rows * (kh + 1) - 1, columns * (kw + 1) - 1, 3))
    for i, tile in enumerate(tiles):
        top, left = (i // columns) * (kh + 1), (i % columns) * (kw + 1)
        mosaic[top:top + kh, left:left + kw] = tile
    return mosaic


def _draw_filters(weight, path, source):
    from .plots import new_figure, save_figure        # matplotlib: only when asked
    figure = new_figure(6, 6.4)
    axes = figure.subplots()
    axes.imshow(filter_mosaic(np.asarray(weight)), interpolation="nearest")
    axes.set_axis_off()
    axes.set_title(f"conv1's {weight.shape[0]} filters in {source}\n"
                   f"({weight.shape[2]}x{weight.shape[3]}, shown RGB, each scaled to its own range)")
    save_figure(figure, path)
