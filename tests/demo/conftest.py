"""Fixtures shared by the demo tests: CIFAR-10 batches in the official format, tiny."""
import importlib.util
import os
import pickle

import numpy as np
import pytest

CLASSES = ["airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck"]


def write_fake_cifar(root, per_batch, seed=0, learnable=False):
    """The official "python version" layout, with ``per_batch`` random images per batch.

    ``learnable``: each image's red and green levels give away its class (plus
    noise), so that a few steps of training change the test accuracy.
    """
    rng = np.random.default_rng(seed)
    folder = os.path.join(root, "cifar-10-batches-py")
    os.makedirs(folder)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        labels = rng.integers(0, 10, per_batch)
        data = rng.integers(0, 256, (per_batch, 3072), dtype=np.uint8)
        if learnable:
            levels = np.stack([25 * labels, 250 - 25 * labels], axis=1)[:, :, None]  # N x 2 x 1
            noise = rng.integers(0, 30, (per_batch, 2, 1024))
            data[:, :2048] = (levels + noise).reshape(per_batch, 2048).clip(0, 255)
        batch = {b"batch_label": name.encode(), b"labels": labels.tolist(), b"data": data,
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


@pytest.fixture(scope="module")
def learnable_cifar(tmp_path_factory):
    """A data folder of 5 x 16 training and 16 test images that give their class away, for a
    whole test module (the reader is patched to 16 images a batch meanwhile)."""
    import tinygnet.data.cifar

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(tinygnet.data.cifar, "IMAGES_PER_BATCH", 16)
        yield write_fake_cifar(str(tmp_path_factory.mktemp("learnable") / "data"), 16,
                               learnable=True)


def _load_demo_child():
    path = os.path.join(os.path.dirname(os.path.abspath(__file__)), "demo_child.py")
    spec = importlib.util.spec_from_file_location("demo_child", path)
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


demo_child = _load_demo_child()


@pytest.fixture
def fast_plots(monkeypatch):
    """The CIFAR demo writes its plots as small stand-in files (matplotlib takes half a second
    a figure): for tests about runs and files, not pictures."""
    from tinygnet.demo import run

    monkeypatch.setattr(run.Trainer, "write_plots", demo_child.fake_plots)
