"""cat and flatten: forward against plain loops, backward by gradcheck."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import tinygnet as tg
from tinygnet.functional.shape import cat, flatten


def t64(array, grad=True):
    return tg.tensor(array, dtype=np.float64, requires_grad=grad)


def cat_reference(arrays, dim):
    """Walk the output index by index and read from whichever input owns it."""
    shape = list(arrays[0].shape)
    shape[dim] = sum(a.shape[dim] for a in arrays)
    out = np.empty(shape)
    for index in np.ndindex(*shape):
        position = index[dim]
        for a in arrays:
            if position < a.shape[dim]:
                out[index] = a[index[:dim] + (position,) + index[dim + 1:]]
                break
            position -= a.shape[dim]
    return out


@given(base=st.lists(st.integers(1, 3), min_size=1, max_size=4),
       sizes=st.lists(st.integers(1, 3), min_size=1, max_size=4), data=st.data())
def test_cat_matches_loop_and_gradcheck(base, sizes, data):
    dim = data.draw(st.integers(-len(base), len(base) - 1))
    rng = np.random.default_rng(len(sizes))
    arrays = []
    for size in sizes:
        shape = list(base)
        shape[dim] = size
        arrays.append(rng.standard_normal(shape))
    y = cat([t64(a, grad=False) for a in arrays], dim=dim)
    np.testing.assert_array_equal(y.numpy(), cat_reference(arrays, dim % len(base)))
    assert tg.gradcheck(lambda *xs: cat(xs, dim=dim), [t64(a) for a in arrays])


def test_cat_inception_channels_float32(rng):
    branches = [tg.tensor(rng.standard_normal((2, c, 3, 3)).astype(np.float32), requires_grad=True)
                for c in (4, 6, 2, 3)]
    y = cat(branches)                             # dim=1 by default
    assert y.shape == (2, 15, 3, 3) and y.dtype == np.float32
    gy = rng.standard_normal(y.shape).astype(np.float32)
    y.backward(gy)
    np.testing.assert_array_equal(branches[1].grad.numpy(), gy[:, 4:10])
    assert branches[1].grad.dtype == np.float32


def test_cat_with_a_tensor_that_needs_no_grad(rng):
    a = t64(rng.standard_normal((2, 3)))
    b = t64(rng.standard_normal((2, 2)), grad=False)
    assert tg.gradcheck(lambda a: cat([a, b, a]), a)


def test_cat_bad_input():
    a = tg.tensor(np.zeros((2, 3, 4), dtype=np.float32))
    with pytest.raises(ValueError, match="non-empty"):
        cat([])
    with pytest.raises(ValueError, match=r"\[\(2, 3, 4\), \(2, 3, 5\)\] must match except in dim 1"):
        cat([a, tg.tensor(np.zeros((2, 3, 5), dtype=np.float32))])
    with pytest.raises(ValueError, match=r"\(2, 3, 4\), \(2, 3\)\]"):
        cat([a, tg.tensor(np.zeros((2, 3), dtype=np.float32))])
    with pytest.raises(TypeError, match="float32, float64"):
        cat([a, tg.tensor(np.zeros((2, 3, 4)))])
    with pytest.raises(ValueError, match=r"dim 3 is out of range.*\(2, 3, 4\)"):
        cat([a, a], dim=3)


def test_flatten(rng):
    x = rng.standard_normal((2, 3, 4, 5))
    assert flatten(t64(x, False)).shape == (2, 60)
    assert flatten(t64(x, False), 0).shape == (120,)
    assert flatten(t64(x, False), 1, 2).shape == (2, 12, 5)
    np.testing.assert_array_equal(flatten(t64(x, False)).numpy(),
                                  [[v for v in row.ravel()] for row in x])
    assert tg.gradcheck(flatten, t64(x))
    y = flatten(tg.tensor(x.astype(np.float32)))
    assert y.dtype == np.float32
    with pytest.raises(ValueError, match=r"start_dim 4 is out of range.*\(2, 3, 4, 5\)"):
        flatten(t64(x), 4)
    with pytest.raises(ValueError, match="start_dim 2 comes after end_dim 1"):
        flatten(t64(x), 2, 1)
