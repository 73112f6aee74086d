"""DataLoader: coverage, batching, seeding, augmentation and exact resumption."""
import numpy as np
import pytest

from tinygnet.data import DataLoader
from tinygnet.data.transforms import Normalize, crop


def tagged(n):
    """n images where image i is filled with the value i (so batches show which images they hold)."""
    images = np.broadcast_to(np.arange(n, dtype=np.uint8).reshape(n, 1, 1, 1), (n, 3, 8, 8)).copy()
    return images, np.arange(n)


def pixel_ids(batch):
    """Undo the normalisation to read the image tags back."""
    images, _ = batch
    normalize = Normalize()
    return np.rint((images - normalize.shift) / normalize.scale)[:, 0, 0, 0].astype(int)


def epoch(loader):
    return [(x.copy(), y.copy()) for x, y in loader]


def assert_same_batches(first, second):
    assert len(first) == len(second)
    for (x1, y1), (x2, y2) in zip(first, second):
        np.testing.assert_array_equal(x1, x2)
        np.testing.assert_array_equal(y1, y2)


def test_each_epoch_is_a_fresh_permutation():
    loader = DataLoader(tagged(10), batch_size=4, seed=0)
    assert len(loader) == 3
    orders = []
    for _ in range(3):
        batches = epoch(loader)
        assert [len(y) for _, y in batches] == [4, 4, 2]
        for batch in batches:
            x, y = batch
            assert x.dtype == np.float32 and x.shape[1:] == (3, 8, 8) and y.dtype == np.int64
            np.testing.assert_array_equal(pixel_ids(batch), y)   # images stay with their labels
        order = np.concatenate([y for _, y in batches])
        assert sorted(order) == list(range(10))
        orders.append(order)
    assert not np.array_equal(orders[0], orders[1]) and loader.epoch == 3


def test_no_shuffle_and_drop_last():
    loader = DataLoader(tagged(10), batch_size=4, shuffle=False, drop_last=True)
    assert len(loader) == 2
    np.testing.assert_array_equal(np.concatenate([y for _, y in loader]), np.arange(8))


def test_accepts_a_dataset_object():
    class Data:
        images, labels = tagged(5)

    assert len(DataLoader(Data(), batch_size=2)) == 3


@pytest.mark.parametrize("bad, match", [
    (dict(data=(np.zeros((4, 3, 8, 8), np.float32), np.zeros(4))), "uint8"),
    (dict(data=(np.zeros((4, 3, 8, 8), np.uint8), np.zeros(3))), "labels"),
    (dict(data=tagged(4), batch_size=0), "batch_size"),
])
def test_rejects_bad_arguments(bad, match):
    with pytest.raises(ValueError, match=match):
        DataLoader(**{"batch_size": 2, **bad})


def test_same_seed_same_batches_different_seed_different():
    rng = np.random.default_rng(3)
    data = (rng.integers(0, 256, (20, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 20))
    make = lambda seed: DataLoader(data, batch_size=8, augment=True, seed=seed)
    a, b, c = make(5), make(5), make(6)
    for _ in range(2):
        ea = epoch(a)
        assert_same_batches(ea, epoch(b))
        assert not np.array_equal(ea[0][0], epoch(c)[0][0])


def test_augmented_images_are_crops_and_flips_of_the_originals():
    rng = np.random.default_rng(4)
    images = rng.integers(1, 256, (12, 3, 32, 32), dtype=np.uint8)
    loader = DataLoader((images, np.arange(12)), batch_size=5, augment=True, seed=1)
    normalize = Normalize()
    seen_flip = seen_shift = False
    for x, y in loader:
        raw = np.rint((x - normalize.shift) / normalize.scale).astype(np.uint8)
        for k, label in enumerate(y):
            # Look for the one (top, left, flip) that gives this image.
            candidates = [(top, left, flip) for top in range(9) for left in range(9) for flip in (0, 1)
                          if np.array_equal(raw[k], (lambda c: c[..., ::-1] if flip else c)(
                              crop(images[label][None], np.array([[top, left]]))[0]))]
            assert candidates, f"image {label} is not a crop/flip of the original"
            seen_flip |= any(flip for _, _, flip in candidates)
            seen_shift |= any((top, left) != (4, 4) for top, left, _ in candidates)
    assert seen_flip and seen_shift


@pytest.mark.parametrize("stop_after", [0, 2, 3])   # batches into the second epoch (3 = its end)
def test_resumed_loader_continues_identically(stop_after):
    rng = np.random.default_rng(5)
    data = (rng.integers(0, 256, (10, 3, 32, 32), dtype=np.uint8), rng.integers(0, 10, 10))
    original = DataLoader(data, batch_size=3, augment=True, seed=11)
    epoch(original)
    iterator = iter(original)
    for _ in range(stop_after):
        next(iterator)
    saved = original.state_dict()
    rest_of_epoch = list(iterator)
    following = [epoch(original), epoch(original)]

    resumed = DataLoader(data, batch_size=3, augment=True, seed=999)
    resumed.load_state_dict(saved)
    assert resumed.state_dict() == saved          # saving again before iterating loses nothing
    assert_same_batches(epoch(resumed), rest_of_epoch)
    for expected in following:
        assert_same_batches(epoch(resumed), expected)
    assert resumed.epoch == original.epoch
