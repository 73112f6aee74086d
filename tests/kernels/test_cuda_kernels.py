"""The CUDA kernels against the reference ops, without a GPU.

Two checks:

1. On the host (``kernels_on_host``, tests/kernels/conftest.py): every
   kernel wrapper of ``tinygnet.kernels.cuda_kernels`` runs its g++-compiled
   source on NumPy arrays and is compared with the reference op's
   computation. The ops built on the kernels (``tinygnet/kernels/cuda.py``)
   are compared with their references in test_fast_paths.py.
2. ``nvcc -ptx`` compiles every source as CUDA, in float32 and float64 (a
   syntax and type check for the device compiler).

On a GPU, test_fast_paths.py and tests/cuda/ run them for real. Each check
skips when its compiler is missing.
"""
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tinygnet.functional.activation import ReLU
from tinygnet.functional.conv import col2im, im2col
from tinygnet.functional.loss import CrossEntropy
from tinygnet.functional.norm import LocalResponseNorm
from tinygnet.functional.pool import MaxPool2d, pool_output_size
from tinygnet.kernels import cuda_kernels as kernels

_ARCH = "sm_80"


@pytest.fixture
def on_host(kernels_on_host):
    with kernels_on_host() as host:
        yield host


def _shuffled(rng, shape, dtype):
    """Distinct, well-spaced values in random order: no ties for the max pool."""
    size = int(np.prod(shape))
    return (rng.permutation(size) / size - 0.5).reshape(shape).astype(dtype)


def _run(function_class, arrays, **options):
    """An op's NumPy Function after forward (call its backward next), and the output."""
    fn = function_class()
    fn.needs_input_grad = (True,) * len(arrays)
    return fn, fn.forward(*arrays, **options)


# --------------------------------------------------------------------------
# 1. the kernels on the host against the NumPy ops
# --------------------------------------------------------------------------
GEOMETRIES = [  # KH, KW, SH, SW, PH, PW
    (3, 3, 1, 1, 1, 1), (5, 5, 1, 1, 2, 2), (7, 7, 2, 2, 3, 3), (3, 2, 2, 3, 0, 1),
    (1, 1, 2, 2, 0, 0)]


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("KH, KW, SH, SW, PH, PW", GEOMETRIES)
def test_im2col_and_col2im_match_numpy(on_host, rng, dtype, KH, KW, SH, SW, PH, PW):
    x = rng.standard_normal((2, 3, 9, 8)).astype(dtype)
    OH, OW = (9 + 2 * PH - KH) // SH + 1, (8 + 2 * PW - KW) // SW + 1
    geometry = (KH, KW, SH, SW, PH, PW, OH, OW)
    cols = kernels.im2col(x, *geometry)
    np.testing.assert_array_equal(cols, im2col(x, KH, KW, SH, SW, PH, PW))
    gcols = rng.standard_normal(cols.shape).astype(dtype)
    np.testing.assert_allclose(kernels.col2im(gcols, x.shape, *geometry),
                               col2im(gcols, x.shape, KH, KW, SH, SW, PH, PW), rtol=1e-5, atol=1e-5)


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("kernel, stride, padding, ceil_mode", [
    ((3, 3), (1, 1), (1, 1), False), ((3, 3), (2, 2), (0, 0), True),
    ((2, 3), (2, 1), (1, 0), False), ((3, 3), (2, 2), (1, 1), True),
    ((2, 2), (3, 3), (0, 0), True)])
def test_max_pool_matches_numpy(on_host, rng, dtype, kernel, stride, padding, ceil_mode):
    x = _shuffled(rng, (2, 3, 9, 10), dtype)
    (KH, KW), (SH, SW), (PH, PW) = kernel, stride, padding
    OH = pool_output_size(9, KH, SH, PH, ceil_mode)
    OW = pool_output_size(10, KW, SW, PW, ceil_mode)
    fn, y_ref = _run(MaxPool2d, [x], kernel_size=kernel, stride=stride, padding=padding,
                     ceil_mode=ceil_mode)
    y, argmax = kernels.max_pool2d_forward(x, KH, KW, SH, SW, PH, PW, OH, OW)
    np.testing.assert_array_equal(y, y_ref)
    gy = rng.standard_normal(y.shape).astype(dtype)
    gx = kernels.max_pool2d_backward(gy, argmax, x.shape, KH, KW, SH, SW, PH, PW, OH, OW,
                                     dtype=x.dtype)
    np.testing.assert_allclose(gx, fn.backward(gy), rtol=1e-6, atol=1e-6)


def test_max_pool_ties_go_to_the_first_maximum(on_host):
    x = np.zeros((1, 1, 4, 4), dtype=np.float32)   # every window is a tie
    y, argmax = kernels.max_pool2d_forward(x, 2, 2, 2, 2, 0, 0, 2, 2)
    np.testing.assert_array_equal(argmax.ravel(), [0, 2, 8, 10])


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("size, shape", [(5, (2, 7, 3, 4)), (4, (2, 6, 5)), (1, (1, 3, 2, 2)),
                                         (9, (2, 4, 3, 3))])
def test_lrn_matches_numpy(on_host, rng, dtype, size, shape):
    x = rng.standard_normal(shape).astype(dtype)
    alpha, beta, k = 0.5, 0.75, 2.0          # large alpha: the window sum matters
    fn, y_ref = _run(LocalResponseNorm, [x], size=size, alpha=alpha, beta=beta, k=k)
    y, scale = kernels.lrn_forward(x, size, alpha, beta, k)
    np.testing.assert_allclose(y, y_ref, rtol=1e-5, atol=1e-6)
    gy = rng.standard_normal(shape).astype(dtype)
    np.testing.assert_allclose(kernels.lrn_backward(x, scale, gy, size, alpha, beta),
                               fn.backward(gy), rtol=1e-5, atol=1e-6)


def test_kernel_parameters_read_the_signature():
    assert kernels.kernel_parameters("max_pool_backward")[:5] == [
        ("T", True, True, "gy"), ("int", True, True, "argmax"), ("T", True, False, "gx"),
        ("long long", False, False, "total"), ("int", False, False, "H")]
    assert kernels.kernel_parameters("lrn_forward")[-4:] == [
        ("int", False, False, "after"), ("T", False, False, "alpha_over_size"),
        ("T", False, False, "beta"), ("T", False, False, "k")]


def test_kernel_arguments_are_made_what_the_kernel_declares(on_host, rng):
    """NumPy scalars of other types, and a float64 gy for a float32 x, reach each kernel
    as its signature declares (the stand-in refuses anything else, as CuPy would
    misread it): the results are those of the plain arguments."""
    x = rng.standard_normal((2, 7, 3, 4))
    y, scale = kernels.lrn_forward(x, np.int64(5), np.float32(0.5), np.float32(0.75),
                                   np.float32(2.0))
    fn, y_ref = _run(LocalResponseNorm, [x], size=5, alpha=0.5, beta=0.75, k=2.0)
    np.testing.assert_allclose(y, y_ref, rtol=1e-12)
    x32, gy = x.astype(np.float32), rng.standard_normal(x.shape)          # gy: float64
    _, scale32 = kernels.lrn_forward(x32, 5, 0.5, 0.75, 2.0)
    gx = kernels.lrn_backward(x32, scale32, gy, 5, 0.5, 0.75)
    assert gx.dtype == np.float32
    np.testing.assert_array_equal(gx, kernels.lrn_backward(x32, scale32, gy.astype(np.float32),
                                                           5, 0.5, 0.75))
    pooled, argmax = kernels.max_pool2d_forward(x32, *np.int64([3, 3, 2, 2, 1, 1, 2, 2]))
    gy = rng.standard_normal(pooled.shape)                                 # float64
    gx = kernels.max_pool2d_backward(gy, argmax, x.shape, 3, 3, 2, 2, 1, 1, 2, 2,
                                     dtype=np.float32)
    assert gx.dtype == np.float32
    fn, _ = _run(MaxPool2d, [x32], kernel_size=(3, 3), stride=(2, 2), padding=(1, 1),
                 ceil_mode=False)
    np.testing.assert_allclose(gx, fn.backward(gy.astype(np.float32)), rtol=1e-6)
    assert kernels.relu_backward(gy, pooled).dtype == np.float32


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_backward_kernel_matches_numpy(on_host, rng, dtype):
    x = _shuffled(rng, (3, 4, 5, 2), dtype)
    fn, y = _run(ReLU, [x])
    gy = rng.standard_normal(x.shape).astype(dtype)
    np.testing.assert_array_equal(kernels.relu_backward(gy, y), fn.backward(gy))


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.2])
def test_cross_entropy_matches_numpy(on_host, rng, dtype, reduction, label_smoothing):
    x = (rng.standard_normal((6, 5)) * 30).astype(dtype)   # large logits: no overflow
    targets = rng.integers(0, 5, size=6)
    fn, loss_ref = _run(CrossEntropy, [x], targets=targets, reduction=reduction,
                        label_smoothing=label_smoothing)
    rows, p = kernels.cross_entropy_forward(x, targets, label_smoothing, keep_softmax=True)
    loss = {"mean": rows.mean(), "sum": rows.sum(), "none": rows}[reduction]
    np.testing.assert_allclose(loss, loss_ref, rtol=1e-5, atol=1e-5)
    np.testing.assert_allclose(p, fn.p, rtol=1e-5, atol=1e-7)
    gy = (rng.standard_normal(6) if reduction == "none" else np.asarray(1.7)).astype(dtype)
    np.testing.assert_allclose(
        kernels.cross_entropy_backward(p, targets, gy, label_smoothing, reduction),
        fn.backward(gy), rtol=1e-5, atol=1e-7)
    _, none = kernels.cross_entropy_forward(x, targets, label_smoothing, keep_softmax=False)
    assert none is None


# --------------------------------------------------------------------------
# 2. nvcc compiles every source as CUDA
# --------------------------------------------------------------------------
def _all_cuda_sources(elementwise_source):
    for ctype, dtype in (("float", np.float32), ("double", np.float64)):
        for name in kernels.RAW_SOURCES:
            yield f"raw-{name}-{ctype}", kernels.raw_source(name, dtype)
        for name in kernels.ELEMENTWISE_SOURCES:
            yield f"elementwise-{name}-{ctype}", elementwise_source(name, ctype, device=True)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_every_kernel_compiles_with_nvcc(tmp_path, elementwise_source):
    # One translation unit per source (they are compiled separately by CuPy too),
    # all in one nvcc process per dtype to keep the test fast.
    failures = []
    for label, source in _all_cuda_sources(elementwise_source):
        path = tmp_path / f"{label}.cu"
        path.write_text(source)
        command = ["nvcc", "-ptx", f"-arch={_ARCH}", "-o", str(path.with_suffix(".ptx")),
                   str(path)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            failures.append(f"{label}:\n{result.stderr}")
    assert not failures, "\n".join(failures)


def test_kernels_module_does_not_import_cupy():
    code = "import sys, tinygnet.kernels.cuda_kernels; assert 'cupy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)
