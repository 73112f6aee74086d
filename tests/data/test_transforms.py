"""Crop, flip and normalisation, each checked image by image against a plain reference."""
import numpy as np
import pytest
from hypothesis import given
from hypothesis import strategies as st

from tinygnet.data.transforms import (CIFAR10_MEAN, CIFAR10_STD, Normalize, crop, horizontal_flip,
                                      random_crop, random_horizontal_flip)


def images_of(rng, n, c=3, h=32, w=32):
    return rng.integers(1, 256, size=(n, c, h, w), dtype=np.uint8)   # no zeros: padding shows


def crop_reference(image, top, left, padding):
    """One image: pad with zeros by hand, then slice."""
    C, H, W = image.shape
    padded = np.zeros((C, H + 2 * padding, W + 2 * padding), image.dtype)
    for y in range(H):
        for x in range(W):
            padded[:, y + padding, x + padding] = image[:, y, x]
    return padded[:, top:top + H, left:left + W]


@given(seed=st.integers(0, 2**32 - 1), n=st.integers(1, 6), padding=st.integers(0, 5),
       h=st.integers(4, 12), w=st.integers(4, 12))
def test_crop_is_a_shift_with_zero_fill(seed, n, padding, h, w):
    rng = np.random.default_rng(seed)
    images = images_of(rng, n, 2, h, w)
    offsets = rng.integers(0, 2 * padding + 1, size=(n, 2))
    out = crop(images, offsets, padding)
    assert out.shape == images.shape and out.dtype == np.uint8
    for k in range(n):
        np.testing.assert_array_equal(out[k], crop_reference(images[k], *offsets[k], padding))


def test_crop_corner_cases(rng):
    images = images_of(rng, 3)
    out = crop(images, np.array([[4, 4], [0, 0], [8, 8]]), padding=4)
    np.testing.assert_array_equal(out[0], images[0])                     # centre: unchanged
    assert (out[1, :, :4, :] == 0).all() and (out[1, :, :, :4] == 0).all()  # top-left: zero border
    np.testing.assert_array_equal(out[1, :, 4:, 4:], images[1, :, :28, :28])
    assert (out[2, :, 28:, :] == 0).all() and (out[2, :, :, 28:] == 0).all()
    np.testing.assert_array_equal(out[2, :, :28, :28], images[2, :, 4:, 4:])


def test_flip_mirrors_chosen_images_and_is_an_involution(rng):
    images = images_of(rng, 6)
    before = images.copy()
    flips = np.array([True, False, True, True, False, False])
    out = horizontal_flip(images, flips)
    np.testing.assert_array_equal(images, before)                        # input untouched
    for k in range(6):
        expected = images[k, :, :, ::-1] if flips[k] else images[k]
        np.testing.assert_array_equal(out[k], expected)
        np.testing.assert_array_equal(out[k, :, 3, 0], images[k, :, 3, 31] if flips[k] else images[k, :, 3, 0])
    np.testing.assert_array_equal(horizontal_flip(out, flips), images)


def test_random_transforms_follow_the_generator(rng):
    images = images_of(rng, 64)
    a = random_horizontal_flip(random_crop(images, np.random.default_rng(7)), np.random.default_rng(8))
    b = random_horizontal_flip(random_crop(images, np.random.default_rng(7)), np.random.default_rng(8))
    c = random_horizontal_flip(random_crop(images, np.random.default_rng(9)), np.random.default_rng(8))
    np.testing.assert_array_equal(a, b)
    assert not np.array_equal(a, c)
    flipped = random_horizontal_flip(images, np.random.default_rng(0))
    share = np.mean([not np.array_equal(flipped[k], images[k]) for k in range(64)])
    assert 0.25 < share < 0.75


def test_normalize_matches_the_formula(rng):
    images = images_of(rng, 5)
    out = Normalize()(images)
    assert out.dtype == np.float32 and out.shape == images.shape
    mean = np.array(CIFAR10_MEAN).reshape(1, 3, 1, 1)
    std = np.array(CIFAR10_STD).reshape(1, 3, 1, 1)
    np.testing.assert_allclose(out, (images / 255.0 - mean) / std, rtol=1e-6, atol=1e-6)


def test_normalize_gives_zero_mean_unit_std_on_data_with_those_statistics():
    # Channel c takes two values a_c, b_c equally often: mean (a+b)/2, std |b-a|/2 (in 0..255).
    a = np.array([40.0, 90.0, 10.0])
    b = np.array([200.0, 160.0, 250.0])
    pattern = (np.arange(32 * 32).reshape(32, 32) % 2).astype(bool)
    images = np.where(pattern, b.reshape(3, 1, 1), a.reshape(3, 1, 1)).astype(np.uint8)[None]
    mean, std = (a + b) / 2 / 255, (b - a) / 2 / 255
    out = Normalize(mean, std)(np.repeat(images, 4, axis=0))
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)), 0.0, atol=1e-5)
    np.testing.assert_allclose(out.std(axis=(0, 2, 3)), 1.0, atol=1e-5)
    # With the CIFAR-10 constants: per channel (m_c - mean_c) / std_c and s_c / std_c.
    out = Normalize()(images)
    np.testing.assert_allclose(out.mean(axis=(0, 2, 3)),
                               (mean - CIFAR10_MEAN) / CIFAR10_STD, rtol=1e-5)
    np.testing.assert_allclose(out.std(axis=(0, 2, 3)), std / CIFAR10_STD, rtol=1e-5)


def test_normalize_rejects_bad_input():
    with pytest.raises(ValueError, match="Normalize.*shape"):
        Normalize()(np.zeros((2, 1, 32, 32), np.uint8))
    with pytest.raises(ValueError, match="std"):
        Normalize((0.5, 0.5, 0.5), (0.2, 0.0, 0.2))
