"""ImageNet photos in, the way the BVLC Caffe models take them, and the 1000 class names.

``load_image(path)`` turns a photo into GoogLeNet's input: the shorter side
resized to 256, the centre 224 x 224 cut out, the channels in Caffe's BGR
order on the 0-255 scale, minus BVLC's mean pixel (104, 117, 123). Caffe read
images with OpenCV, which stores BGR; a network trained that way sees blue
in its first input channel, so a photo must be given to it the same way.

``imagenet_classes()`` lists the 1000 classes in the order of the Caffe
models' outputs (Caffe's ``synset_words.txt``: WordNet ids sorted, tench
first, toilet tissue last); ``imagenet_classes.txt`` beside this file is
that list.
"""
from __future__ import annotations

import os
from collections import namedtuple

import numpy as np

__all__ = ["load_image", "imagenet_classes", "ImageNetClass", "BVLC_MEAN_BGR"]

BVLC_MEAN_BGR = (104.0, 117.0, 123.0)    # the mean pixel of BVLC's ImageNet training set
RESIZE, CROP = 256, 224
CLASSES_FILE = os.path.join(os.path.dirname(os.path.abspath(__file__)), "imagenet_classes.txt")

ImageNetClass = namedtuple("ImageNetClass", ["wnid", "name", "description"])
ImageNetClass.__doc__ = """One ImageNet class: its WordNet id (``n01440764``), its first name
(``tench``) and all its names (``tench, Tinca tinca``)."""


def imagenet_classes() -> list[ImageNetClass]:
    """The 1000 ILSVRC-2012 classes, index i being output i of the Caffe models."""
    classes = []
    with open(CLASSES_FILE, encoding="utf-8") as f:
        for line in f:
            wnid, description = line.rstrip("\n").split(" ", 1)
            classes.append(ImageNetClass(wnid, description.split(",")[0], description))
    return classes


def load_image(path, resize=RESIZE, crop=CROP, mean_bgr=BVLC_MEAN_BGR) -> np.ndarray:
    """A photo as the BVLC GoogLeNet's input: 3 x crop x crop float32, BGR, 0-255, minus the mean.

    Steps: open it with Pillow (turned upright if its EXIF data says the
    camera was rotated, and to RGB: greyscale, palette and alpha images
    too), resize it so its shorter side is ``resize`` pixels (bilinear,
    keeping the aspect ratio), cut out the centre ``crop`` x ``crop``, swap
    the channels to BGR and subtract ``mean_bgr``. Stack several with
    ``np.stack`` for a batch.

    Raises ``FileNotFoundError`` for a missing file and ``ValueError`` for
    one that is not an image Pillow can read (one line each, naming it).
    """
    from PIL import Image, ImageOps, UnidentifiedImageError   # Pillow: imported on first use

    if not os.path.isfile(path):
        raise FileNotFoundError(f"{path}: no such file")
    try:
        with Image.open(path) as image:
            image = ImageOps.exif_transpose(image).convert("RGB")
    except (UnidentifiedImageError, Image.DecompressionBombError, OSError, SyntaxError,
            ValueError) as error:              # not an image, truncated, absurdly large...
        raise ValueError(f"{path}: not an image Pillow can read "
                         f"({type(error).__name__})") from None
    width, height = image.size
    if min(width, height) < 1:
        raise ValueError(f"{path}: an empty image ({width} x {height})")
    scale = resize / min(width, height)
    size = (max(crop, round(width * scale)), max(crop, round(height * scale)))
    image = image.resize(size, Image.BILINEAR)
    left, top = (size[0] - crop) // 2, (size[1] - crop) // 2
    image = image.crop((left, top, left + crop, top + crop))
    rgb = np.asarray(image, dtype=np.float32)                     # crop x crop x 3, RGB, 0-255
    bgr = rgb[:, :, ::-1] - np.asarray(mean_bgr, dtype=np.float32)   # BGR minus the mean
    return np.ascontiguousarray(bgr.transpose(2, 0, 1))           # 3 x crop x crop
