"""Planes moved by a few positions (``kernels/moves.py``): against padding, and the adjoint."""
import numpy as np
import pytest
from hypothesis import example, given, strategies as st

from tinygnet.kernels.moves import add_moved_back, centred_stride_1, move


@st.composite
def planes_and_move(draw):
    H, W = draw(st.integers(1, 5)), draw(st.integers(1, 5))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 3)), H, W)    # rows, planes, H, W
    # Often past the plane's edge (planes smaller than a window's half).
    dh, dw = draw(st.integers(-H - 1, H + 1)), draw(st.integers(-W - 1, W + 1))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    return rng.standard_normal(shape), dh, dw


# Moves past the edge of planes of H = 2, W = 3, along one axis (the other would cover it).
PLANES = np.arange(24.0).reshape(2, 2, 2, 3)
PAST_THE_EDGE = [(PLANES, 3, 0), (PLANES, -3, 0), (PLANES, 0, 4), (PLANES, 0, -4)]


def past_the_edge(test, *more):
    for case in PAST_THE_EDGE:
        test = example(case, *more)(test)
    return test


def moved_by_padding(a, dh, dw, value):
    """The plain way: pad every plane by 8 of ``value`` (more than any move here), read the
    window (dh, dw) off."""
    H, W = a.shape[-2:]
    p = 8
    padded = np.pad(a, [(0, 0), (0, 0), (p, p), (p, p)], constant_values=value)
    return padded[..., p + dh:p + dh + H, p + dw:p + dw + W]


@given(planes_and_move())
@past_the_edge
def test_move_is_the_padded_planes_read_at_the_offset(case):
    a, dh, dw = case
    out = np.full_like(a, np.nan)                        # every position must be written
    np.testing.assert_array_equal(move(out, a, dh, dw, -np.inf),
                                  moved_by_padding(a, dh, dw, -np.inf))


@given(planes_and_move(), st.integers(0, 2**16))
@lambda test: past_the_edge(test, 0)
def test_add_moved_back_is_the_adjoint_of_move(case, seed):
    """<move(x), y> = <x, add_moved_back(0, y)> for every x, y: col2im is im2col's adjoint."""
    x, dh, dw = case
    y = np.random.default_rng(seed).standard_normal(x.shape)
    moved_x = move(np.empty_like(x), x, dh, dw, 0.0)
    back = add_moved_back(np.zeros_like(x), y.copy(), dh, dw)
    np.testing.assert_allclose(np.vdot(moved_x, y), np.vdot(x, back), rtol=1e-12, atol=1e-12)


def test_centred_stride_1_is_odd_centred_windows_one_step_at_a_time():
    assert centred_stride_1(3, 5, 1, 1, 1, 2)
    assert not centred_stride_1(3, 3, 2, 1, 1, 1)        # stride 2
    assert not centred_stride_1(4, 4, 1, 1, 2, 2)        # even: not centred
    assert not centred_stride_1(3, 3, 1, 1, 0, 0)        # no padding: smaller output


def test_an_array_written_through_rows_that_are_not_contiguous_is_refused():
    """A reshape of such rows is a copy: the writes would be lost without a word."""
    a = np.arange(24.0).reshape(2, 1, 3, 4)
    strided = np.zeros((2, 1, 3, 8))[..., ::2]            # rows of every other column
    message = r"^moves: an array of shape \(2, 1, 3, 4\) and strides .* is written through its rows"
    with pytest.raises(ValueError, match=message):
        move(strided, a, 1, 0, 0.0)
    with pytest.raises(ValueError, match=message):
        add_moved_back(strided, a.copy(), 1, 0)
    with pytest.raises(ValueError, match=message):
        add_moved_back(np.zeros_like(a), np.zeros((2, 1, 3, 8))[..., ::2], 1, 0)
    # Read only, the source may be strided: the same move as from a contiguous copy.
    np.testing.assert_array_equal(move(np.empty_like(a), strided + a, 1, -1, 0.0),
                                  move(np.empty_like(a), a.copy(), 1, -1, 0.0))
