"""The autograd engine: operators, broadcasting, graph bookkeeping, dtypes."""
import numpy as np
import pytest
from hypothesis import given, strategies as st

import tinygnet as tg
from tinygnet import gradcheck


def t64(rng, *shape, device="cpu"):
    return tg.tensor(rng.standard_normal(shape), requires_grad=True, device=device)


# ----------------------------------------------------------------- creation
def test_tensor_keeps_numpy_dtypes_and_lists_become_float32():
    assert tg.tensor(np.zeros(3, dtype=np.float64)).dtype == np.float64
    assert tg.tensor(np.zeros(3, dtype=np.float32)).dtype == np.float32
    assert tg.tensor(np.arange(3)).dtype == np.arange(3).dtype          # class targets stay integers
    assert tg.tensor([1, 2, 3]).dtype == np.float32
    assert tg.tensor(2.5).dtype == np.float32
    assert tg.tensor([1, 2], dtype=np.int64).dtype == np.int64


def test_tensor_copies_its_data():
    a = np.ones(3)
    t = tg.tensor(a)
    a[0] = 5
    assert t.numpy()[0] == 1


def test_integer_tensor_cannot_require_grad():
    with pytest.raises(TypeError, match="floating-point"):
        tg.tensor(np.arange(3), requires_grad=True)


def test_python_scalars_keep_float32():
    x = tg.tensor([1.0, 2.0], requires_grad=True)
    y = (x * 2 + 1.5) / 3 - 0.25
    y = y ** 2
    assert y.dtype == np.float32
    y.sum().backward()
    assert x.grad.dtype == np.float32


def test_mixing_float32_and_float64_is_an_error_not_an_upcast():
    a = tg.tensor(np.ones(2, dtype=np.float32))
    b = tg.tensor(np.ones(2, dtype=np.float64))
    with pytest.raises(TypeError, match="float32 and float64"):
        a + b
    with pytest.raises(TypeError, match="float32 and float64"):
        a * np.ones(2)                                   # a float64 array, not a Tensor


def test_as_tensor_takes_the_dtype_and_device_of_like():
    x32 = tg.tensor(np.ones(2, dtype=np.float32))
    assert tg.as_tensor(x32) is x32
    assert tg.as_tensor(2, like=x32).dtype == np.float32
    assert tg.as_tensor([1, 2], like=tg.tensor(np.ones(2))).dtype == np.float64
    np.testing.assert_array_equal(tg.as_tensor([1, 2], like=x32).numpy(), [1, 2])
    assert tg.as_tensor([1.5, 2]).dtype == np.float32                 # no like: tensor()'s rule
    with pytest.raises(TypeError, match="float32 and float64"):
        tg.as_tensor(np.ones(2), like=x32)
    with pytest.raises(ValueError, match="the other operand is ragged"):
        tg.as_tensor([[1, 2], [3]], like=x32)


def test_mul_and_div_keep_only_what_their_backward_needs(rng):
    """d(ab)/da = b, d(a/b)/da = 1/b: with one input needing a gradient, the other's value
    is all that is kept (a graph holds saved arrays until its backward pass)."""
    a, c = t64(rng, 3), tg.tensor(rng.uniform(1, 2, 3))           # c needs no gradient
    assert (a * c)._ctx.a is None and (a * c)._ctx.b is not None
    assert (a / c)._ctx.a is None and (a / c)._ctx.b is not None
    assert (c / a)._ctx.a is not None and (c / a)._ctx.b is not None   # -c/a^2 needs both
    with tg.no_grad():
        assert (a / c)._ctx is None


@pytest.mark.parametrize("data, error, words", [
    ([[1, 2], [3]], ValueError, r"tensor\(\): data is ragged: data\[0\] has length 2 but data\[1\] has length 1"),
    ([[1, 2], 3], ValueError, r"data\[0\] has length 2 but data\[1\] is a number"),
    (["x"], TypeError, r"tensor\(\): expected numbers \(float, int or bool\).*data\[0\] is str \('x'\)"),
    ([[1.0, None]], TypeError, r"data\[0\]\[1\] is NoneType"),
    ("x", TypeError, r"data is str"),
    (np.array(["x"]), TypeError, r"expected numbers .* got an array of dtype <U1"),
])
def test_tensor_of_what_is_not_numbers_says_what_it_expected(data, error, words):
    with pytest.raises(error, match=words) as caught:
        tg.tensor(data)
    assert "inhomogeneous" not in str(caught.value) and "could not convert" not in str(caught.value)


@pytest.mark.parametrize("other, words", [
    ("a", r"a Tensor combines with numbers, arrays, lists of numbers and Tensors, not str \('a'\)"),
    (None, r"not NoneType"),
    ({"a": 1}, r"not dict"),
    ([1.0, "a"], r"the other operand\[1\] is str"),
    ([[1.0], [1.0, 2.0]], r"the other operand is ragged"),
    (np.array(["a"]), r"not an array of dtype <U1"),
])
def test_operand_that_is_not_a_number_says_what_a_tensor_combines_with(other, words):
    x = tg.tensor([1.0])
    for combine in (lambda: x + other, lambda: other + x, lambda: x * other):
        with pytest.raises((TypeError, ValueError), match=words):
            combine()
    assert (x + [2.0]).numpy().tolist() == [3.0]            # lists of numbers still work


def test_info_and_conversions(rng):
    x = tg.tensor(rng.standard_normal((2, 3)))
    assert x.shape == (2, 3) and x.ndim == 2 and x.size == 6 and x.device == "cpu"
    assert isinstance(x.numpy(), np.ndarray)
    assert tg.tensor(3.0).item() == 3.0
    with pytest.raises(ValueError, match="one element"):
        x.item()
    assert x.to(dtype=np.float32).dtype == np.float32
    assert "tensor(" in repr(x)


# ------------------------------------------------------- gradients of ops
@pytest.mark.parametrize("op", [
    lambda a, b: a + b, lambda a, b: a - b, lambda a, b: a * b,
    lambda a, b: a / (b * b + 1.0), lambda a, b: -a * 3.0 + 2.0 - b,
    lambda a, b: 1.0 / (a * a + 2.0) + 2.0 * b,
])
def test_binary_ops_with_broadcasting(op, rng, device):
    a = t64(rng, 2, 3, 4, device=device)
    b = t64(rng, 3, 1, device=device)        # broadcast over the first and last axes
    gradcheck(op, [a, b])


def test_shapes_that_do_not_broadcast_are_named(rng):
    with pytest.raises(ValueError, match=r"add: shapes \(2, 3\) and \(4,\)"):
        t64(rng, 2, 3) + t64(rng, 4)


def test_pow_exp_log(rng, device):
    x = tg.tensor(rng.uniform(0.5, 2.0, (3, 4)), requires_grad=True, device=device)
    gradcheck(lambda x: x ** 3 + x ** 0.5 + x.exp() + x.log(), [x])


def test_matmul_including_batched(rng, device):
    gradcheck(lambda a, b: a @ b, [t64(rng, 3, 4, device=device), t64(rng, 4, 5, device=device)])
    gradcheck(lambda a, b: a @ b, [t64(rng, 2, 3, 4, device=device),
                                   t64(rng, 4, 5, device=device)])
    with pytest.raises(ValueError, match=r"\(3, 4\) and \(5, 2\)"):
        t64(rng, 3, 4) @ t64(rng, 5, 2)


def test_indexing_and_slicing_with_repeated_indices(rng, device):
    x = t64(rng, 4, 5, device=device)
    gradcheck(lambda x: x[1:3, ::2], [x])
    gradcheck(lambda x: x[[0, 0, 2]], [x])                  # row 0 gets two contributions
    gradcheck(lambda x: x[np.array([1, 3]), np.array([0, 4])], [x])


@pytest.mark.parametrize("dim,keepdim", [(None, False), (0, False), (1, True), ((0, 2), False), (-1, True)])
def test_reductions(dim, keepdim, rng, device):
    x = t64(rng, 3, 4, 5, device=device)
    gradcheck(lambda x: x.sum(dim, keepdim), [x])
    gradcheck(lambda x: x.mean(dim, keepdim), [x])
    gradcheck(lambda x: x.max(dim, keepdim), [x])          # distinct values: no ties


def test_max_splits_gradient_between_ties():
    x = tg.tensor(np.array([1.0, 3.0, 3.0]), requires_grad=True)
    x.max().backward()
    np.testing.assert_allclose(x.grad.numpy(), [0, 0.5, 0.5])


def test_shape_ops(rng, device):
    x = t64(rng, 2, 3, 4, device=device)
    gradcheck(lambda x: x.reshape(4, 6), [x])
    gradcheck(lambda x: x.reshape(-1), [x])
    gradcheck(lambda x: x.permute(2, 0, 1), [x])
    gradcheck(lambda x: x.transpose(0, 2), [x])
    gradcheck(lambda x: x.flatten(1), [x])
    assert x.flatten(1).shape == (2, 12)
    assert x.T.shape == (4, 3, 2)
    with pytest.raises(ValueError, match=r"shape \(2, 3, 4\).*\(5, 5\)"):
        x.reshape(5, 5)
    with pytest.raises(ValueError, match="not a permutation"):
        x.permute(0, 0, 1)


@given(shape_a=st.lists(st.integers(1, 3), min_size=1, max_size=3),
       drop=st.integers(0, 2), ones=st.lists(st.booleans(), min_size=3, max_size=3),
       seed=st.integers(0, 2**16))
def test_broadcast_gradient_is_reduced_to_each_input_shape(shape_a, drop, ones, seed):
    # b's shape is a suffix of a's with some axes set to 1: any legal broadcast.
    rng = np.random.default_rng(seed)
    suffix = shape_a[min(drop, len(shape_a) - 1):]
    shape_b = [1 if one else n for n, one in zip(suffix, ones)]
    a, b = t64(rng, *shape_a), t64(rng, *shape_b)
    gradcheck(lambda a, b: a * b + b, [a, b])


# ------------------------------------------------------- graph properties
@given(k=st.integers(1, 6), seed=st.integers(0, 1000))
def test_a_tensor_used_k_times_gets_the_sum_of_k_contributions(k, seed):
    rng = np.random.default_rng(seed)
    x = t64(rng, 3)
    weights = rng.standard_normal(k)
    total = sum((x * float(w)).sum() for w in weights)
    total.backward()
    np.testing.assert_allclose(x.grad.numpy(), np.full(3, weights.sum()), rtol=1e-12)


def test_fan_out_like_an_inception_module(rng, device):
    # One input feeding four branches that are then concatenated-by-addition.
    x = t64(rng, 2, 3, device=device)
    gradcheck(lambda x: (x * 2.0) + (x * x) + x.exp() + x.sum(1, keepdim=True), [x])


def test_a_chain_of_5000_ops_backpropagates():
    x = tg.tensor(1.0, requires_grad=True, dtype=np.float64)
    y = x
    for _ in range(5000):
        y = y * 1.0001
    y.backward()
    np.testing.assert_allclose(x.grad.item(), 1.0001 ** 5000, rtol=1e-10)


def test_no_grad_builds_no_graph(rng):
    x = t64(rng, 3)
    with tg.no_grad():
        y = x * 2 + 1
    assert not y.requires_grad and y.is_leaf
    assert tg.is_grad_enabled()


def test_grad_mode_is_restored_when_the_block_raises(rng):
    """no_grad and enable_grad put the previous mode back however their block ends."""
    x = t64(rng, 3)
    with pytest.raises(ValueError, match="inside"):
        with tg.no_grad():
            raise ValueError("inside no_grad")
    assert tg.is_grad_enabled() and (x * 2).requires_grad
    with tg.no_grad():
        with pytest.raises(ValueError, match="inside"):
            with tg.enable_grad():
                assert (x * 2).requires_grad
                raise ValueError("inside enable_grad")
        assert not tg.is_grad_enabled() and not (x * 2).requires_grad
    assert tg.is_grad_enabled()

    @tg.no_grad()
    def failing_step():
        raise ValueError("inside a no_grad function")
    with pytest.raises(ValueError, match="inside"):
        failing_step()
    assert tg.is_grad_enabled()


def test_backward_twice_without_retain_graph_is_a_clear_error(rng):
    x = t64(rng, 3)
    y = (x * x).sum()
    y.backward()
    with pytest.raises(RuntimeError, match="second time.*retain_graph=True"):
        y.backward()


def test_retain_graph_allows_a_second_backward_and_grads_accumulate(rng):
    x = t64(rng, 3)
    y = (x * x).sum()
    y.backward(retain_graph=True)
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), 4 * x.numpy())


def test_gradients_accumulate_across_backward_calls(rng):
    x = t64(rng, 3)
    (x * 3.0).sum().backward()
    (x * x).sum().backward()
    np.testing.assert_allclose(x.grad.numpy(), 3 + 2 * x.numpy())


def test_backward_on_non_scalar_needs_a_gradient(rng):
    x = t64(rng, 2, 3)
    with pytest.raises(RuntimeError, match=r"one-element.*\(2, 3\)"):
        (x * 2).backward()
    with pytest.raises(ValueError, match=r"\(3,\).*\(2, 3\)"):
        (x * 2).backward(np.ones(3))
    y = x * 2
    y.backward(np.ones((2, 3)))
    np.testing.assert_allclose(x.grad.numpy(), 2.0)


def test_accumulated_leaf_gradient_never_aliases_an_upstream_array(rng):
    # Add hands gy to both inputs; if a leaf stored gy itself, accumulating into
    # one leaf's .grad would silently change the other's.
    a, b = t64(rng, 3), t64(rng, 3)
    gy = np.ones(3)
    (a + b).backward(gy)
    a.grad.data += 1
    np.testing.assert_allclose(b.grad.numpy(), 1.0)
    np.testing.assert_allclose(gy, 1.0)


def test_detach_cuts_the_graph(rng):
    x = t64(rng, 3)
    y = (x.detach() * x).sum()
    y.backward()
    np.testing.assert_allclose(x.grad.numpy(), x.numpy())


def test_backward_frees_saved_arrays(rng):
    x = t64(rng, 3)
    y = x * x
    fn = y._ctx
    y.sum().backward()
    assert getattr(fn, "released", False) and not hasattr(fn, "a")


def test_manual_seed_reproduces_random_streams():
    from tinygnet.backend import default_generator
    tg.manual_seed(7)
    a = default_generator().standard_normal(4)
    tg.manual_seed(7)
    np.testing.assert_array_equal(a, default_generator().standard_normal(4))
    with pytest.raises(ValueError, match="non-negative"):
        tg.manual_seed(-1)
