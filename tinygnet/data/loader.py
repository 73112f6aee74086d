"""DataLoader: shuffled, augmented, normalised mini-batches that can resume exactly.

Each pass ``for images, labels in loader`` is one epoch: a fresh permutation
(if ``shuffle``), then batches of ``batch_size``, the last one smaller unless
``drop_last``. A batch is gathered as uint8, cropped and flipped as uint8
(if ``augment``), then normalised to float32 N x 3 x 32 x 32; labels are int64.

Every random choice comes from ``loader.generator``, a NumPy Generator the
loader owns: the permutation at the start of an epoch, then for each batch
its crop offsets and flips. ``state_dict()`` records the generator state at
the start of the current epoch and how many batches were handed out;
``load_state_dict()`` makes the next pass redraw that epoch's permutation
and replay the skipped batches' draws (cheap: no pixels are touched), so a
run resumed from a checkpoint sees exactly the batches it would have seen.
"""
from __future__ import annotations

import copy

import numpy as np

from ..backend import default_generator
from .transforms import (CIFAR10_MEAN, CIFAR10_STD, Normalize, crop, draw_crop_offsets, draw_flips,
                         horizontal_flip)

__all__ = ["DataLoader"]


class DataLoader:
    """Iterate over ``(images float32 N x C x H x W, labels int64 N)`` NumPy batches.

    ``data``: a data set with ``.images`` (uint8 N x C x H x W) and ``.labels``,
    or an ``(images, labels)`` pair. ``seed``: seeds the loader's own
    generator (None: drawn from tinygnet's default generator, so
    ``tinygnet.manual_seed`` fixes it). ``padding``: zero padding of the
    random crop. ``mean``/``std``: per-channel normalisation of [0, 1] pixels.
    """

    def __init__(self, data, batch_size, shuffle=True, augment=False, seed=None, drop_last=False,
                 padding=4, mean=CIFAR10_MEAN, std=CIFAR10_STD):
        images, labels = (data.images, data.labels) if hasattr(data, "images") else data
        images, labels = np.asarray(images), np.asarray(labels)
        if images.ndim != 4 or images.dtype != np.uint8:
            raise ValueError(f"DataLoader: images must be uint8 N x C x H x W, "
                             f"got shape {images.shape} dtype {images.dtype}")
        if labels.shape != (len(images),):
            raise ValueError(f"DataLoader: {len(images)} images but labels have shape {labels.shape}")
        if not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
            raise ValueError(f"DataLoader: batch_size must be a positive integer, got {batch_size!r}")
        self.images, self.labels = images, labels.astype(np.int64, copy=False)
        self.batch_size, self.shuffle, self.augment = int(batch_size), shuffle, augment
        self.drop_last, self.padding = drop_last, padding
        self.normalize = Normalize(mean, std)
        if seed is None:
            seed = int(default_generator().integers(0, 2**63 - 1))
        self.generator = np.random.default_rng(seed)
        self.epoch = 0                 # epochs completed
        self._epoch_start_state = None  # generator state when the current epoch began
        self._batches_done = 0          # batches handed out in the current epoch
        self._resume_skip = 0           # batches to skip on the next pass (after a load)

    def __len__(self):
        """Batches per epoch."""
        full, rest = divmod(len(self.labels), self.batch_size)
        return full + (1 if rest and not self.drop_last else 0)

    def __iter__(self):
        skip, self._resume_skip = self._resume_skip, 0
        self._epoch_start_state = copy.deepcopy(self.generator.bit_generator.state)
        self._batches_done = 0
        n = len(self.labels)
        order = self.generator.permutation(n) if self.shuffle else np.arange(n)
        for b in range(len(self)):
            index = order[b * self.batch_size:(b + 1) * self.batch_size]
            if self.augment:  # draw even for skipped batches, so later draws line up
                offsets = draw_crop_offsets(self.generator, len(index), self.padding)
                flips = draw_flips(self.generator, len(index))
            if b < skip:
                continue
            images = self.images[index]                        # uint8 B x C x H x W
            if self.augment:
                images = horizontal_flip(crop(images, offsets, self.padding), flips)
            self._batches_done = b + 1
            yield self.normalize(images), self.labels[index]   # float32, int64
        self.epoch += 1
        self._epoch_start_state = None
        self._batches_done = 0

    def state_dict(self) -> dict:
        """Where iteration stands: enough to continue with exactly the same batches."""
        if self._epoch_start_state is not None:       # inside an epoch
            generator, done = self._epoch_start_state, self._batches_done
        else:                                          # between epochs (or just loaded)
            generator, done = self.generator.bit_generator.state, self._resume_skip
        return {"epoch": self.epoch, "generator": copy.deepcopy(generator), "batches_done": done}

    def load_state_dict(self, state: dict) -> None:
        """Restore; the next pass continues the saved epoch after its last handed-out batch."""
        self.epoch = int(state["epoch"])
        self.generator.bit_generator.state = copy.deepcopy(state["generator"])
        self._resume_skip = int(state["batches_done"])
        self._epoch_start_state, self._batches_done = None, 0

    def __repr__(self):
        return (f"DataLoader(size={len(self.labels)}, batch_size={self.batch_size}, "
                f"shuffle={self.shuffle}, augment={self.augment}, drop_last={self.drop_last})")
