"""Batch transforms for CIFAR-10: random crop, horizontal flip, normalisation.

Each works on a whole batch at once, N x C x H x W, with no Python loop over
images. Random choices are drawn separately (``draw_crop_offsets``,
``draw_flips``) from a ``numpy.random.Generator`` the caller owns, and passed
in, so the same draws always give the same batch and a loader can replay
draws to resume mid-epoch. Crops and flips work on uint8 images (a quarter of
the bytes of float32); normalisation comes last and makes float32.
"""
from __future__ import annotations

import numpy as np

from ..backend import get_array_module

__all__ = ["CIFAR10_MEAN", "CIFAR10_STD", "draw_crop_offsets", "draw_flips", "crop",
           "horizontal_flip", "random_crop", "random_horizontal_flip", "Normalize"]

CIFAR10_MEAN = (0.4914, 0.4822, 0.4465)   # per channel R, G, B, of images scaled to [0, 1]
CIFAR10_STD = (0.2470, 0.2435, 0.2616)


def draw_crop_offsets(generator, n, padding):
    """(n, 2) int offsets (top, left), each uniform in 0..2*padding."""
    return generator.integers(0, 2 * padding + 1, size=(n, 2))


def draw_flips(generator, n, p=0.5):
    """(n,) bool: which images to flip."""
    return generator.random(n) < p


def crop(images, offsets, padding=4):
    """Crop each image at its own offset from the image zero-padded by ``padding``.

    images: N x C x H x W; offsets: N x 2, (top, left) in 0..2*padding, the
    corner of the H x W window in the padded (H + 2P) x (W + 2P) image.
    Offset (P, P) gives the image back unchanged.
    """
    xp = get_array_module(images)
    N, C, H, W = images.shape
    P = padding
    padded = xp.zeros((N, C, H + 2 * P, W + 2 * P), dtype=images.dtype)
    padded[:, :, P:P + H, P:P + W] = images
    # Every H x W window of every image, as a view: N x C x (2P+1) x (2P+1) x H x W.
    windows = xp.lib.stride_tricks.sliding_window_view(padded, (H, W), axis=(2, 3))
    offsets = xp.asarray(offsets)
    # Pick window (top, left) of image n: the result is N x C x H x W.
    return windows[xp.arange(N), :, offsets[:, 0], offsets[:, 1]]


def horizontal_flip(images, flips):
    """Mirror left-right the images where ``flips`` (N bools) is True; returns a new array."""
    xp = get_array_module(images)
    out = images.copy()
    flips = xp.asarray(flips)
    out[flips] = images[flips, ..., ::-1]
    return out


def random_crop(images, generator, padding=4):
    """``crop`` at offsets drawn from ``generator``."""
    return crop(images, draw_crop_offsets(generator, len(images), padding), padding)


def random_horizontal_flip(images, generator, p=0.5):
    """``horizontal_flip`` of the images chosen with probability ``p``."""
    return horizontal_flip(images, draw_flips(generator, len(images), p))


class Normalize:
    """uint8 images (N x C x H x W, 0..255) -> float32 ``(x / 255 - mean) / std`` per channel.

    The two constants are folded once: ``y = x * scale + shift`` with
    ``scale = 1 / (255 std)`` and ``shift = -mean / std``, both float32.
    """

    def __init__(self, mean=CIFAR10_MEAN, std=CIFAR10_STD):
        mean = np.asarray(mean, dtype=np.float64)
        std = np.asarray(std, dtype=np.float64)
        if mean.shape != std.shape or mean.ndim != 1 or (std <= 0).any():
            raise ValueError(f"Normalize: mean and std must be equal-length lists with std > 0, "
                             f"got mean {mean.tolist()} std {std.tolist()}")
        self.mean, self.std = tuple(mean.tolist()), tuple(std.tolist())
        self.scale = (1.0 / (255.0 * std)).astype(np.float32).reshape(1, -1, 1, 1)
        self.shift = (-mean / std).astype(np.float32).reshape(1, -1, 1, 1)

    def __call__(self, images):
        xp = get_array_module(images)
        if images.ndim != 4 or images.shape[1] != self.scale.shape[1]:
            raise ValueError(f"Normalize: expected N x {self.scale.shape[1]} x H x W images, "
                             f"got shape {tuple(images.shape)}")
        out = images.astype(xp.float32)
        out *= xp.asarray(self.scale)
        out += xp.asarray(self.shift)
        return out

    def __repr__(self):
        return f"Normalize(mean={self.mean}, std={self.std})"
