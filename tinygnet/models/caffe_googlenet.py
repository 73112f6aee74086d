"""The BVLC GoogLeNet caffemodel in tinygnet's GoogLeNet: the Caffe name of every layer.

``load_caffe_googlenet("bvlc_googlenet.caffemodel")`` reads the file
(``caffemodel.read_caffemodel``), builds ``GoogLeNet(config="imagenet")`` and
copies each Caffe layer's two blobs, weight and bias, into the tinygnet layer
of ``CAFFE_NAMES``. Nothing else needs translating: both lay a convolution's
weight out as out x in x KH x KW and correlate the same way, both store an
inner product's weight as out x in and flatten N x C x H x W in (C, H, W)
order, the branches are concatenated in the same order (1x1, 3x3, 5x5, pool
projection), and the network's input is Caffe's: BGR, 0-255, mean subtracted
(see ``tinygnet.data.imagenet.load_image``). docs/real-googlenet.md lists the
places where Caffe's arithmetic could have differed, and what was found.
"""
from __future__ import annotations

from .caffemodel import read_caffemodel
from .googlenet import GoogLeNet

__all__ = ["load_caffe_googlenet", "googlenet_from_caffe_layers", "CAFFE_NAMES"]

# Caffe layer name -> tinygnet layer, written out in pieces: the stem, each Inception
# module's six convolutions, the two aux heads and the classifier.
_STEM = {"conv1/7x7_s2": "conv1", "conv2/3x3_reduce": "conv2_reduce", "conv2/3x3": "conv2"}
_INCEPTION_MODULES = ["3a", "3b", "4a", "4b", "4c", "4d", "4e", "5a", "5b"]
# Each module's six: e.g. inception_4c/3x3_reduce -> inception4c.branch2_reduce.
_INCEPTION_BRANCHES = {"1x1": "branch1",
                       "3x3_reduce": "branch2_reduce", "3x3": "branch2",
                       "5x5_reduce": "branch3_reduce", "5x5": "branch3",
                       "pool_proj": "branch4"}
_AUX_HEADS = {"loss1": "aux1", "loss2": "aux2"}   # loss1 sits on inception_4a, loss2 on 4d
_AUX_LAYERS = {"conv": "conv", "fc": "fc1", "classifier": "fc2"}
_CLASSIFIER = {"loss3/classifier": "fc"}

TRUNK_NAMES = {**_STEM,
               **{f"inception_{m}/{branch}": f"inception{m}.{layer}"
                  for m in _INCEPTION_MODULES for branch, layer in _INCEPTION_BRANCHES.items()},
               **_CLASSIFIER}
AUX_NAMES = {f"{loss}/{part}": f"{head}.{layer}"
             for loss, head in _AUX_HEADS.items() for part, layer in _AUX_LAYERS.items()}
CAFFE_NAMES = {**TRUNK_NAMES, **AUX_NAMES}        # 64 layers with weights, 6 of them aux

# What each tinygnet layer is in Caffe, for the check of a layer's type.
_CAFFE_TYPES = {"conv": "Convolution", "fc": "InnerProduct"}


def load_caffe_googlenet(path, *, width=1.0) -> GoogLeNet:
    """The GoogLeNet of a Caffe caffemodel (BVLC's ``bvlc_googlenet.caffemodel``).

    Returns ``GoogLeNet(num_classes=1000, config="imagenet")`` in float32 on
    the CPU, in eval mode, holding the file's weights, with the two aux
    heads when the file has the ``loss1/*`` and ``loss2/*`` layers (a deploy
    file without them gives a model without aux heads). The model takes what
    Caffe's ``data`` blob takes: N x 3 x 224 x 224, BGR, 0-255 with the mean
    (104, 117, 123) subtracted.

    ``width`` is the channel scale the file was written at: 1 for BVLC's;
    the tests write thin networks through the same mapping. Raises
    ``ValueError`` (one line naming the file) for a file that is not a
    caffemodel, lacks a GoogLeNet layer, or holds a blob of another shape.
    """
    return googlenet_from_caffe_layers(read_caffemodel(path), source=str(path), width=width)


def googlenet_from_caffe_layers(layers, source="caffemodel", width=1.0) -> GoogLeNet:
    """``load_caffe_googlenet`` from layers already read (``caffemodel.CaffeLayer`` list)."""
    by_name = {}
    for layer in layers:
        if layer.name in CAFFE_NAMES:
            if layer.name in by_name:
                raise ValueError(f"{source}: two layers are named {layer.name!r}")
            by_name[layer.name] = layer
    for name, target in TRUNK_NAMES.items():
        if name not in by_name:
            raise ValueError(f"{source}: no layer {name!r} (GoogLeNet's {target}): not a "
                             f"GoogLeNet caffemodel, or not a trained one")
    present = [name for name in AUX_NAMES if name in by_name]
    if present and len(present) != len(AUX_NAMES):
        missing = next(name for name in AUX_NAMES if name not in by_name)
        raise ValueError(f"{source}: has aux layer {present[0]!r} but no {missing!r}: "
                         f"the aux heads are incomplete")
    aux = bool(present)

    model = GoogLeNet(num_classes=1000, config="imagenet", aux=aux, width=width)
    modules = dict(model.named_modules())
    state = {}
    for name, target in (CAFFE_NAMES if aux else TRUNK_NAMES).items():
        layer, module = by_name[name], modules[target]
        kind = "conv" if module.weight.ndim == 4 else "fc"
        if layer.type != _CAFFE_TYPES[kind]:
            raise ValueError(f"{source}: layer {name!r} is a {layer.type or 'layer of no type'}, "
                             f"expected {_CAFFE_TYPES[kind]} (GoogLeNet's {target})")
        if len(layer.blobs) != 2:
            raise ValueError(f"{source}: layer {name!r} has {len(layer.blobs)} blobs, expected "
                             f"2 (weight and bias): a file without trained weights?")
        for blob, param in zip(layer.blobs, ("weight", "bias")):
            expected = getattr(module, param).shape
            state[f"{target}.{param}"] = _fit(blob, expected, f"{source}: layer {name!r} "
                                              f"{param}", f"{target}.{param}")
    model.load_state_dict(state)                     # strict: every parameter from the file
    return model.eval()


def _fit(blob, expected, what, target):
    """``blob`` in tinygnet's shape ``expected``, dropping Caffe's leading 1s (V1 files store an
    inner product's weight as 1 x 1 x out x in and every bias as 1 x 1 x 1 x out)."""
    shape = blob.shape
    while len(shape) > len(expected) and shape[0] == 1:
        shape = shape[1:]
    if tuple(shape) != tuple(expected):
        raise ValueError(f"{what} has shape {blob.shape}, GoogLeNet's {target} is "
                         f"{tuple(expected)}")
    return blob.reshape(shape)
