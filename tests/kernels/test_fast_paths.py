"""Every fast path against the reference it replaces: forward and every gradient.

For each fast path registered in ``tinygnet.dispatch`` (see the table in
``tinygnet/kernels/__init__.py``), hypothesis draws inputs (shapes, strides,
paddings, modes) and a random upstream gradient; the reference Function and
the fast one each run forward and backward on them, and their outputs, input
gradients and any state they update in place (batch norm's running
statistics) must agree, in float32 and in float64. Where both sides do the
same comparisons (max pooling's winners, ReLU's mask) the results must be
equal to the bit; sums taken in another order agree to rounding.

Where the fast paths run:

* ``cpu``: on tinygnet's CPU threads (3 of them), once with the block-size
  thresholds as shipped (small inputs: one block) and once with them lowered
  to 1, so that every input is cut into blocks;
* ``cuda``: on a GPU (skipped without one);
* ``cuda-on-host``: the CUDA fast paths on NumPy arrays, their kernels
  compiled for the host by g++ (tests/kernels/conftest.py).

The references themselves are checked against plain loops and finite
differences in tests/functional/.
"""
import contextlib

import numpy as np
import pytest
from hypothesis import given, strategies as st

from tinygnet import dispatch
from tinygnet.functional.activation import ReLU
from tinygnet.functional.conv import Conv2d
from tinygnet.functional.loss import CrossEntropy
from tinygnet.functional.norm import BatchNorm, LocalResponseNorm
from tinygnet.functional.pool import AvgPool2d, MaxPool2d, pool_output_size
from tinygnet.kernels import (cpu_activation, cpu_conv, cpu_norm, cpu_pool,
                              threads as cpu_threads, workspaces)

# float64 agrees to rounding; float32 sums taken in another order to ~1e-6 relative,
# more where batch norm's backward subtracts nearly equal terms: tolerances are
# relative to the largest magnitude of the reference's result.
TOLERANCE = {np.float32: 2e-5, np.float64: 1e-11}


# --------------------------------------------------------------------------
# Inputs of each op: a strategy drawing (arrays, options). Arrays are float64
# (cast to the dtype under test); None stands for an absent bias or weight.
# --------------------------------------------------------------------------
@st.composite
def conv_inputs(draw):
    pointwise = draw(st.booleans())          # 1x1 / stride 1 / no padding: its own path
    N, C, O = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    if pointwise:
        KH = KW = SH = SW = 1
        PH = PW = 0
    else:
        KH, KW = draw(st.integers(1, 5)), draw(st.integers(1, 5))
        SH, SW = draw(st.integers(1, 3)), draw(st.integers(1, 3))
        PH, PW = draw(st.integers(0, 2)), draw(st.integers(0, 2))
    H = draw(st.integers(max(1, KH - 2 * PH), 9))
    W = draw(st.integers(max(1, KW - 2 * PW), 9))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    bias = rng.standard_normal(O) if draw(st.booleans()) else None
    arrays = [rng.standard_normal((N, C, H, W)), rng.standard_normal((O, C, KH, KW)), bias]
    return arrays, dict(stride=(SH, SW), padding=(PH, PW))


@st.composite
def pool_geometry(draw):
    KH, KW = draw(st.integers(1, 4)), draw(st.integers(1, 4))
    SH, SW = draw(st.integers(1, 3)), draw(st.integers(1, 3))
    PH, PW = draw(st.integers(0, KH // 2)), draw(st.integers(0, KW // 2))
    ceil_mode = draw(st.booleans())
    H, W = draw(st.integers(max(1, KH - 2 * PH), 9)), draw(st.integers(max(1, KW - 2 * PW), 9))
    if min(pool_output_size(H, KH, SH, PH, ceil_mode),
           pool_output_size(W, KW, SW, PW, ceil_mode)) < 1:
        ceil_mode = False
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 5)), H, W)
    return shape, dict(kernel_size=(KH, KW), stride=(SH, SW), padding=(PH, PW),
                       ceil_mode=ceil_mode)


@st.composite
def max_pool_inputs(draw):
    shape, options = draw(pool_geometry())
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = rng.integers(0, 4, shape).astype(np.float64)   # many ties: the first max must win
    return [x], options


@st.composite
def avg_pool_inputs(draw):
    shape, options = draw(pool_geometry())
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    return [rng.standard_normal(shape)], dict(options, count_include_pad=draw(st.booleans()))


@st.composite
def batch_norm_inputs(draw):
    N, C = draw(st.integers(1, 4)), draw(st.integers(1, 6))
    spatial = draw(st.sampled_from([(), (1, 1), (2, 3), (4, 4)]))
    training = draw(st.booleans())
    if training and N * int(np.prod(spatial)) < 2:
        N = 2                                     # training needs two values per channel
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = rng.standard_normal((N, C) + spatial) * 2 + 1
    weight = rng.uniform(0.5, 2.0, C) if draw(st.booleans()) else None
    bias = rng.standard_normal(C) if draw(st.booleans()) else None
    options = dict(running_mean=rng.standard_normal(C), running_var=rng.uniform(0.5, 2.0, C),
                   training=training, momentum=0.1, eps=1e-5)
    return [x, weight, bias], options


@st.composite
def lrn_inputs(draw):
    shape = (draw(st.integers(1, 2)), draw(st.integers(1, 7))) + draw(
        st.sampled_from([(3,), (2, 3), (1, 4)]))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    return [rng.standard_normal(shape) * 3], dict(
        size=draw(st.integers(1, 6)), alpha=draw(st.sampled_from([1e-4, 0.5])),
        beta=draw(st.sampled_from([0.75, 1.2])), k=draw(st.sampled_from([1.0, 2.0])))


@st.composite
def relu_inputs(draw):
    shape = tuple(draw(st.lists(st.integers(1, 5), min_size=1, max_size=4)))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    return [rng.integers(-3, 4, shape).astype(np.float64)], {}     # zeros included


@st.composite
def cross_entropy_inputs(draw):
    N, K = draw(st.integers(1, 6)), draw(st.integers(2, 6))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    return [rng.standard_normal((N, K)) * 5], dict(
        targets=rng.integers(0, K, N), reduction=draw(st.sampled_from(["mean", "sum", "none"])),
        label_smoothing=draw(st.sampled_from([0.0, 0.1, 0.3])))


INPUTS = {Conv2d: conv_inputs(), MaxPool2d: max_pool_inputs(), AvgPool2d: avg_pool_inputs(),
          BatchNorm: batch_norm_inputs(), LocalResponseNorm: lrn_inputs(), ReLU: relu_inputs(),
          CrossEntropy: cross_entropy_inputs()}


def test_every_fast_path_has_inputs_here():
    """A new fast path must come with its strategy in INPUTS (and so be tested)."""
    missing = {ref.__name__ for ref, _, _ in dispatch.fast_paths()} - {c.__name__ for c in INPUTS}
    assert not missing


# --------------------------------------------------------------------------
# Running one Function, reference or fast, and comparing
# --------------------------------------------------------------------------
def run(function_class, arrays, options, gy_seed, xp=np):
    """Forward and backward of one Function on arrays (None stays None).

    Returns [y, gradient of each array input, updated running statistics] as
    NumPy arrays. The running statistics are copied first, so each run
    starts from the same ones.
    """
    to_xp = (lambda a: a) if xp is np else xp.asarray
    to_np = (lambda a: a) if xp is np else (lambda a: a.get())
    arrays = [None if a is None else to_xp(a) for a in arrays]
    options = {k: (to_xp(v.copy()) if isinstance(v, np.ndarray) else v)
               for k, v in options.items()}
    fn = function_class()
    fn.needs_input_grad = tuple(a is not None for a in arrays)
    y = fn.forward(*arrays, **options)
    gy = np.random.default_rng(gy_seed).standard_normal(y.shape).astype(y.dtype)
    grads = fn.backward(to_xp(gy))
    grads = grads if isinstance(grads, tuple) else (grads,)
    stats = [options[k] for k in ("running_mean", "running_var") if k in options]
    return [to_np(r) for r in [y, *[g for g in grads if g is not None], *stats]]


def assert_agree(fast, reference, dtype):
    assert len(fast) == len(reference)
    for got, want in zip(fast, reference):
        assert got.shape == want.shape and got.dtype == want.dtype
        scale = max(1.0, float(np.abs(want).max(initial=0.0)))
        np.testing.assert_allclose(got, want, rtol=TOLERANCE[dtype],
                                   atol=TOLERANCE[dtype] * scale)


def cast(arrays, options, dtype):
    arrays = [None if a is None else a.astype(dtype) for a in arrays]
    options = {k: (v.astype(dtype) if isinstance(v, np.ndarray) and v.dtype.kind == "f" else v)
               for k, v in options.items()}
    return arrays, options


@contextlib.contextmanager
def cpu_blocks(setting):
    """Three CPU threads; with setting "many", every block-size threshold lowered to 1, and
    the memory lent for kept arrays too (so convolutions rebuild their columns in backward)."""
    saved = [(module, name, getattr(module, name))
             for module, name in [(cpu_conv, "MIN_BLOCK_ELEMENTS"), (cpu_pool, "MIN_BLOCK_ELEMENTS"),
                                  (cpu_norm, "MIN_BLOCK_ELEMENTS"),
                                  (cpu_activation, "MIN_BLOCK_ELEMENTS"),
                                  (cpu_threads, "_MIN_CHUNK_FLOPS"),
                                  (workspaces, "LEND_BUDGET_BYTES")]]
    threads_before = cpu_threads.get_num_threads()
    cpu_threads.set_num_threads(3)
    try:
        if setting == "many":
            for module, name, _ in saved:
                setattr(module, name, 1)
        yield
    finally:
        for module, name, value in saved:
            setattr(module, name, value)
        cpu_threads.set_num_threads(threads_before)


def fast_paths_on(device):
    return [pytest.param(ref, fast, id=ref.__name__)
            for ref, dev, fast in dispatch.fast_paths() if dev == device]


DTYPES = [pytest.param(np.float32, id="float32"), pytest.param(np.float64, id="float64")]


# --------------------------------------------------------------------------
# The family
# --------------------------------------------------------------------------
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("blocks", ["one", "many"])
@pytest.mark.parametrize("reference, fast", fast_paths_on("cpu"))
@given(data=st.data())
def test_cpu_fast_path_matches_its_reference(reference, fast, blocks, dtype, data):
    arrays, options = cast(*data.draw(INPUTS[reference]), dtype)
    with cpu_blocks(blocks):
        fast_result = run(fast, arrays, options, gy_seed=1)
    assert_agree(fast_result, run(reference, arrays, options, gy_seed=1), dtype)


@pytest.mark.cuda
@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reference, fast", fast_paths_on("cuda"))
@given(data=st.data())
def test_cuda_fast_path_matches_its_reference(reference, fast, dtype, data, cuda):
    import cupy
    arrays, options = cast(*data.draw(INPUTS[reference]), dtype)
    assert_agree(run(fast, arrays, options, gy_seed=1, xp=cupy),
                 run(reference, arrays, options, gy_seed=1, xp=cupy), dtype)


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("reference, fast", fast_paths_on("cuda"))
@given(data=st.data())
def test_cuda_fast_path_on_the_host_matches_its_reference(reference, fast, dtype, data,
                                                          kernels_on_host):
    arrays, options = cast(*data.draw(INPUTS[reference]), dtype)
    with kernels_on_host():
        fast_result = run(fast, arrays, options, gy_seed=1)
    assert_agree(fast_result, run(reference, arrays, options, gy_seed=1), dtype)


# --------------------------------------------------------------------------
# The whole network: one training step's gradients, fast paths on and off
# --------------------------------------------------------------------------
@pytest.mark.parametrize("batchnorm", [True, False])
def test_googlenet_gradients_are_the_same_with_and_without_the_fast_paths(batchnorm, device):
    """Forward, the combined loss and backward of a narrow GoogLeNet in float64, on
    each device: every parameter's gradient agrees whichever implementation ran each op."""
    import tinygnet as tg
    from tinygnet.models import GoogLeNet, googlenet_loss
    rng = np.random.default_rng(0)
    x = rng.standard_normal((4, 3, 32, 32))
    y = rng.integers(0, 10, 4)
    results = []
    for fast in (True, False):
        tg.manual_seed(0)
        model = GoogLeNet(num_classes=10, config="cifar", width=0.0625, stem_stride=2,
                          batchnorm=batchnorm, dropout=0.0, aux_dropout=0.0)
        model.to(device, dtype=np.float64)
        with tg.use_fast(fast):
            losses = googlenet_loss(model(tg.tensor(x, device=device)), y, label_smoothing=0.1)
            losses.total.backward()
        results.append([losses.total.item()] + [p.grad.numpy() for p in model.parameters()])
    assert results[0][0] == pytest.approx(results[1][0], rel=1e-12)
    for fast_grad, reference_grad in zip(results[0][1:], results[1][1:]):
        np.testing.assert_allclose(fast_grad, reference_grad, rtol=1e-9, atol=1e-12)


@pytest.mark.parametrize("blocks", ["one", "many"])
def test_cpu_relu_takes_strided_arrays(blocks, rng):
    """In GoogLeNet a ReLU's gradient is a channel slice of cat's gradient (a strided view),
    and its input may be one too: the fast ReLU must read them as they are."""
    x = rng.integers(-3, 4, (4, 10, 3, 3)).astype(np.float32)[:, 2:7]   # zeros included
    gy = rng.standard_normal((4, 12, 3, 3)).astype(np.float32)[:, 5:10]
    results = []
    for function_class in (cpu_activation.ReLUBlocks, ReLU):
        fn = function_class()
        fn.needs_input_grad = (True,)
        with cpu_blocks(blocks):
            results.append((fn.forward(x), fn.backward(gy)))
    for fast, reference in zip(*results):
        np.testing.assert_array_equal(fast, reference)


# --------------------------------------------------------------------------
# Routes of their own inside a fast path: taken, and matching the reference
# --------------------------------------------------------------------------
@contextlib.contextmanager
def counted(module, name):
    """Counts the calls of ``module.name`` while inside: ``[calls]``."""
    function, calls = getattr(module, name), [0]

    def counting(*args, **kwargs):
        calls[0] += 1
        return function(*args, **kwargs)
    setattr(module, name, counting)
    try:
        yield calls
    finally:
        setattr(module, name, function)


# --------------------------------------------------------------------------
# Max pooling's route for centred stride-1 windows (the Inception branches' pools)
# --------------------------------------------------------------------------
@st.composite
def centred_max_pool_inputs(draw):
    """Odd windows centred on every position, stride 1, padding half the window: planes
    smaller than the window and larger, many ties."""
    KH, KW = draw(st.sampled_from([1, 3, 5])), draw(st.sampled_from([1, 3, 5]))
    shape = (draw(st.integers(1, 3)), draw(st.integers(1, 5)), draw(st.integers(1, 9)),
             draw(st.integers(1, 9)))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    x = rng.integers(0, 4, shape).astype(np.float64)
    return [x], dict(kernel_size=(KH, KW), stride=(1, 1), padding=(KH // 2, KW // 2),
                     ceil_mode=draw(st.booleans()))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("blocks", ["one", "many"])
@given(data=st.data())
def test_centred_max_pool_takes_its_own_route_and_matches_the_reference(blocks, dtype, data):
    arrays, options = cast(*data.draw(centred_max_pool_inputs()), dtype)
    with cpu_blocks(blocks), counted(cpu_pool, "_max_pool_centred") as calls:
        fast_result = run(cpu_pool.MaxPool2dFlatPasses, arrays, options, gy_seed=1)
    assert calls[0] >= 1
    assert_agree(fast_result, run(MaxPool2d, arrays, options, gy_seed=1), dtype)


@pytest.mark.parametrize("blocks", ["one", "many"])
def test_centred_max_pool_of_minus_infinity_sends_no_gradient_out_of_the_plane(blocks):
    """A window whose every value is -inf is won by its first tap, the padding (as in the
    reference): its gradient is dropped. The centred route has no padding to send it to,
    so such input takes the padded route (and NaN too)."""
    x = np.zeros((1, 2, 3, 4))
    x[0, 0, :2, :2] = -np.inf                  # the top-left window: all -inf
    x[0, 1, 1, 2] = np.nan
    options = dict(kernel_size=(3, 3), stride=(1, 1), padding=(1, 1), ceil_mode=False)
    with cpu_blocks(blocks), counted(cpu_pool, "_max_pool_centred") as calls:
        fast_y, fast_gx = run(cpu_pool.MaxPool2dFlatPasses, [x[:, :1]], options, gy_seed=1)
        run(cpu_pool.MaxPool2dFlatPasses, [x[:, 1:]], options, gy_seed=1)
    assert calls[0] == 0
    y, gx = run(MaxPool2d, [x[:, :1]], options, gy_seed=1)
    np.testing.assert_array_equal(fast_y, y)                # maxima are exact, -inf too
    assert_agree([fast_gx], [gx], np.float64)


# --------------------------------------------------------------------------
# The convolution's route for centred stride-1 kernels (the Inception 3x3 and 5x5)
# --------------------------------------------------------------------------
@st.composite
def centred_conv_inputs(draw):
    """Odd kernels centred on every position, stride 1, padding half the kernel: planes
    smaller than the kernel and larger, several images (the moves cross images)."""
    KH, KW = draw(st.sampled_from([1, 3, 5])), draw(st.sampled_from([3, 5]))
    N, C, O = draw(st.integers(1, 3)), draw(st.integers(1, 4)), draw(st.integers(1, 4))
    H, W = draw(st.integers(1, 7)), draw(st.integers(1, 7))
    rng = np.random.default_rng(draw(st.integers(0, 2**16)))
    bias = rng.standard_normal(O) if draw(st.booleans()) else None
    arrays = [rng.standard_normal((N, C, H, W)), rng.standard_normal((O, C, KH, KW)), bias]
    return arrays, dict(stride=(1, 1), padding=(KH // 2, KW // 2))


@pytest.mark.parametrize("dtype", DTYPES)
@pytest.mark.parametrize("blocks", ["one", "many"])
@given(data=st.data())
def test_centred_conv_takes_its_own_route_and_matches_the_reference(blocks, dtype, data):
    """Forward, gx and gW, with the columns kept from forward and rebuilt in backward."""
    arrays, options = cast(*data.draw(centred_conv_inputs()), dtype)
    with cpu_blocks(blocks), counted(cpu_conv, "_im2col_centred") as im2col, \
            counted(cpu_conv, "_col2im_centred") as col2im:
        fast_result = run(cpu_conv.Conv2dOneGemm, arrays, options, gy_seed=1)
    assert im2col[0] >= 1 and col2im[0] == 1
    assert_agree(fast_result, run(Conv2d, arrays, options, gy_seed=1), dtype)
