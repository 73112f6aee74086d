"""Fixtures shared by the demo tests: CIFAR-10 batches in the official format, tiny."""
import os
import pickle

import numpy as np
import pytest

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_fake_cifar(root, per_batch, seed=0):
    """The official "python version" layout, with ``per_batch`` random images per batch."""
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        batch = {b"batch_label": name.encode(), b"labels": rng.integers(0, 10, per_batch).tolist(),
                 b"data": rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8),
                 b"filenames": [f"{i}.png".encode() for i in range(per_batch)]}
        with open(os.path.join(folder, name), "wb") as f:
            pickle.dump(batch, f, protocol=2)
    with open(os.path.join(folder, "batches.meta"), "wb") as f:
        pickle.dump({b"label_names": [c.encode() for c in CLASSES],
                     b"num_cases_per_batch": per_batch, b"num_vis": 3072}, f, protocol=2)
    return root


@pytest.fixture
def make_fake_cifar(tmp_path, monkeypatch):
    """make_fake_cifar(per_batch) -> a data folder with 5 x per_batch training and per_batch
    test images (the reader expects 10000 a batch: lowered here to match)."""
    import tinygnet.data.cifar

    def make(per_batch):
        monkeypatch.setattr(tinygnet.data.cifar, "IMAGES_PER_BATCH", per_batch)
        return write_fake_cifar(str(tmp_path / "data"), per_batch=per_batch)
    return make
