"""The CUDA kernels against their NumPy twins, without a GPU.

Three checks:

1. On the host: the kernel sources are plain C++ once ``__global__`` and the
   thread indices are defined away, so g++ compiles them into a shared
   library and ``_HostCuPy`` (a stand-in for the few CuPy calls the kernels
   make) runs the real wrappers of ``tinygnet.cuda.kernels`` on NumPy
   arrays. Every kernel is then compared with the NumPy code of its op: this
   checks the index arithmetic and the arguments, everything but the GPU.
2. ``nvcc -ptx`` compiles every source as CUDA, in float32 and float64 (a
   syntax and type check for the device compiler).
3. On a GPU, the op tests of tests/functional run with ``device="cuda"``
   (the ``device`` fixture of tests/conftest.py) and compare with the CPU.

Each check skips when its compiler is missing.
"""
import ctypes
import shutil
import subprocess
import sys

import numpy as np
import pytest

from tinygnet.cuda import kernels
from tinygnet.functional.activation import ReLU
from tinygnet.functional.conv import Conv2d
from tinygnet.functional.loss import CrossEntropy
from tinygnet.functional.norm import LocalResponseNorm
from tinygnet.functional.pool import MaxPool2d, pool_output_size

_ARCH = "sm_80"


# --------------------------------------------------------------------------
# ElementwiseKernel specs as a plain loop (CuPy generates the same shape)
# --------------------------------------------------------------------------
def elementwise_as_c(name, ctype, device):
    """ELEMENTWISE_SOURCES[name] as a C function over ``total`` elements.

    Every non-raw parameter is an array read (or written) at index i, as in
    CuPy's generated code; raw ones are plain pointers.
    """
    in_params, out_params, operation = kernels.ELEMENTWISE_SOURCES[name]
    types = {"T": ctype, "int64": "long long"}
    params, body = [], []
    for spec, is_output in [(s, False) for s in in_params.split(",")] + \
                           [(s, True) for s in out_params.split(",")]:
        words = spec.split()
        ctyp, var = types[words[-2]], words[-1]
        if words[0] == "raw":
            params.append(f"const {ctyp}* {var}")
        elif is_output:
            params.append(f"{ctyp}* {var}_array")
            body.append(f"{ctyp}& {var} = {var}_array[i];")
        else:
            params.append(f"const {ctyp}* {var}_array")
            body.append(f"const {ctyp} {var} = {var}_array[i];")
    head = 'extern "C" __global__' if device else 'extern "C"'
    loop = ("long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; if (i < total)"
            if device else "for (long long i = 0; i < total; ++i)")
    return (f"typedef {ctype} T;\n{head} void {name}(long long total, {', '.join(params)}) {{\n"
            f"    {loop} {{ {' '.join(body)} {operation} }}\n}}\n")


# --------------------------------------------------------------------------
# The host stand-in for CuPy
# --------------------------------------------------------------------------
_HOST_PRELUDE = """#include <cmath>
#include <algorithm>
using std::max; using std::min; using std::pow; using std::exp; using std::log;
#define __global__
struct Dim { long long x; };
static const Dim blockIdx = {0}, blockDim = {1}, gridDim = {1}, threadIdx = {0};
"""


class _HostCuPy:
    """NumPy arrays and g++-compiled kernels behind the CuPy names the kernels use."""

    int32, int64 = np.int32, np.int64
    empty, empty_like = staticmethod(np.empty), staticmethod(np.empty_like)
    ascontiguousarray = staticmethod(np.ascontiguousarray)

    def __init__(self, folder):
        self.folder, self.libraries = folder, {}

    def _compile(self, source, name):
        if source not in self.libraries:
            path = self.folder / f"k{len(self.libraries)}"
            path.with_suffix(".cpp").write_text(_HOST_PRELUDE + source)
            subprocess.run(["g++", "-O1", "-shared", "-fPIC", "-o", str(path.with_suffix(".so")),
                            str(path.with_suffix(".cpp"))], check=True)
            self.libraries[source] = ctypes.CDLL(str(path.with_suffix(".so")))
        return getattr(self.libraries[source], name)

    def RawKernel(self, source, name):
        function = self._compile(source, name)

        def launch(grid, block, args):
            function(*map(_as_ctype, args))
        return launch

    def ElementwiseKernel(self, in_params, out_params, operation, name):
        spec = next(k for k, v in kernels.ELEMENTWISE_SOURCES.items()
                    if v == (in_params, out_params, operation))
        raw = [s.split()[0] == "raw" for s in in_params.split(",")]

        def call(*args):
            arrays = [a for a, r in zip(args, raw) if not r and np.ndim(a) > 0]
            shape = np.broadcast_shapes(*(a.shape for a in arrays))
            dtype = arrays[0].dtype
            ctype = "float" if dtype == np.float32 else "double"
            function = self._compile(elementwise_as_c(spec, ctype, device=False), spec)
            inputs = [np.ascontiguousarray(a) if r else
                      np.ascontiguousarray(np.broadcast_to(np.asarray(a), shape))
                      for a, r in zip(args, raw)]
            out = np.empty(shape, dtype=dtype)
            function(ctypes.c_longlong(out.size), *map(_as_ctype, inputs + [out]))
            return out
        return call


def _as_ctype(value):
    if isinstance(value, np.ndarray):
        return ctypes.c_void_p(value.ctypes.data)
    return {np.int32: ctypes.c_int, np.int64: ctypes.c_longlong, np.float32: ctypes.c_float,
            np.float64: ctypes.c_double}[type(value)](value)


@pytest.fixture(scope="module")
def host_cupy(tmp_path_factory):
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed")
    return _HostCuPy(tmp_path_factory.mktemp("kernels"))


@pytest.fixture
def on_host(host_cupy, monkeypatch):
    monkeypatch.setattr(kernels, "_cupy", lambda: host_cupy)
    monkeypatch.setattr(kernels, "_raw_kernels", {})
    monkeypatch.setattr(kernels, "_elementwise_kernels", {})
    return host_cupy


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
    np.testing.assert_array_equal(cols, Conv2d._im2col(x, *geometry))
    gcols = rng.standard_normal(cols.shape).astype(dtype)
    np.testing.assert_allclose(kernels.col2im(gcols, x.shape, *geometry),
                               Conv2d._col2im(gcols, x.shape, *geometry), rtol=1e-5, atol=1e-5)


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
    gx = kernels.max_pool2d_backward(gy, argmax, x.shape, KH, KW, SH, SW, PH, PW, OH, OW)
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


@pytest.mark.parametrize("dtype", [np.float32, np.float64])
def test_relu_kernels_match_numpy(on_host, rng, dtype):
    x = _shuffled(rng, (3, 4, 5, 2), dtype)
    b = rng.standard_normal(4).astype(dtype)
    np.testing.assert_array_equal(kernels.bias_relu(x, b),
                                  np.maximum(x + b.reshape(4, 1, 1), 0))
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
def _all_cuda_sources():
    for ctype, dtype in (("float", np.float32), ("double", np.float64)):
        for name in kernels.RAW_SOURCES:
            yield f"raw-{name}-{ctype}", kernels.raw_source(name, dtype)
        for name in kernels.ELEMENTWISE_SOURCES:
            yield f"elementwise-{name}-{ctype}", elementwise_as_c(name, ctype, device=True)


@pytest.mark.skipif(shutil.which("nvcc") is None, reason="nvcc is not installed")
def test_every_kernel_compiles_with_nvcc(tmp_path):
    # One translation unit per source (they are compiled separately by CuPy too),
    # all in one nvcc process per dtype to keep the test fast.
    failures = []
    for label, source in _all_cuda_sources():
        path = tmp_path / f"{label}.cu"
        path.write_text(source)
        command = ["nvcc", "-ptx", f"-arch={_ARCH}", "-o", str(path.with_suffix(".ptx")),
                   str(path)]
        result = subprocess.run(command, capture_output=True, text=True)
        if result.returncode != 0:
            failures.append(f"{label}:\n{result.stderr}")
    assert not failures, "\n".join(failures)


def test_kernels_module_does_not_import_cupy():
    code = "import sys, tinygnet.cuda.kernels; assert 'cupy' not in sys.modules"
    subprocess.run([sys.executable, "-c", code], check=True)


# --------------------------------------------------------------------------
# 3. the ops' GPU branches, run on the host: the op modules see an array module
#    that is "not NumPy" (so they take their `if xp is not np` branch) and the
#    kernels run through _HostCuPy. This checks the wiring (which kernel, which
#    arguments, what is saved for backward) against the plain NumPy path.
# --------------------------------------------------------------------------
class _NotNumPy:
    """NumPy under another name: ``xp is not np`` holds, every xp.* call still works."""

    def __getattr__(self, name):
        return getattr(np, name)


def _op_result(fn, arrays, upstream):
    import tinygnet as tg
    inputs = [tg.tensor(a, requires_grad=True) for a in arrays]
    y = fn(*inputs)
    y.backward(tg.tensor(upstream))
    return [y.numpy()] + [t.grad.numpy() for t in inputs]


def _gpu_branch_matches_numpy(monkeypatch, module, fn, arrays, rtol=1e-6, atol=1e-6):
    rng = np.random.default_rng(7)
    import tinygnet as tg
    with tg.no_grad():
        shape = fn(*[tg.tensor(a) for a in arrays]).shape
    upstream = rng.standard_normal(shape).astype(arrays[0].dtype)
    expected = _op_result(fn, arrays, upstream)
    fake = _NotNumPy()
    monkeypatch.setattr(module, "get_array_module", lambda *a: fake)
    for got, want in zip(_op_result(fn, arrays, upstream), expected):
        np.testing.assert_allclose(got, want, rtol=rtol, atol=atol)


@pytest.mark.parametrize("stride, padding, kernel", [
    (1, 1, (3, 3)), (2, 3, (7, 7)), (1, 2, (5, 5)), (1, 0, (1, 1)), ((2, 1), (1, 2), (3, 5))])
def test_conv2d_gpu_branch(on_host, monkeypatch, rng, stride, padding, kernel):
    import tinygnet.functional as F
    from tinygnet.functional import conv
    arrays = [rng.standard_normal((2, 3, 9, 8)), rng.standard_normal((4, 3) + kernel),
              rng.standard_normal(4)]
    _gpu_branch_matches_numpy(monkeypatch, conv,
                              lambda x, w, b: F.conv2d(x, w, b, stride=stride, padding=padding),
                              arrays, rtol=1e-10, atol=1e-10)


@pytest.mark.parametrize("kernel, stride, padding, ceil_mode", [
    (3, 1, 1, False), (3, 2, 0, True), ((3, 2), (1, 2), (1, 0), True)])
def test_max_pool2d_gpu_branch(on_host, monkeypatch, rng, kernel, stride, padding, ceil_mode):
    import tinygnet.functional as F
    from tinygnet.functional import pool
    _gpu_branch_matches_numpy(
        monkeypatch, pool, lambda x: F.max_pool2d(x, kernel, stride, padding, ceil_mode),
        [_shuffled(rng, (2, 3, 8, 9), np.float64)])


def test_local_response_norm_gpu_branch(on_host, monkeypatch, rng):
    import tinygnet.functional as F
    from tinygnet.functional import norm
    _gpu_branch_matches_numpy(
        monkeypatch, norm, lambda x: F.local_response_norm(x, 5, alpha=0.5, beta=0.75, k=2.0),
        [rng.standard_normal((2, 7, 3, 4))], rtol=1e-10, atol=1e-12)


def test_relu_gpu_branch(on_host, monkeypatch, rng):
    import tinygnet.functional as F
    from tinygnet.functional import activation
    _gpu_branch_matches_numpy(monkeypatch, activation, F.relu,
                              [_shuffled(rng, (3, 4, 5), np.float64)])


@pytest.mark.parametrize("reduction", ["mean", "sum", "none"])
@pytest.mark.parametrize("label_smoothing", [0.0, 0.1])
def test_cross_entropy_gpu_branch(on_host, monkeypatch, rng, reduction, label_smoothing):
    import tinygnet.functional as F
    from tinygnet.functional import loss
    targets = np.array([0, 3, 3, 1])
    _gpu_branch_matches_numpy(
        monkeypatch, loss,
        lambda x: F.cross_entropy(x, targets, reduction=reduction, label_smoothing=label_smoothing),
        [rng.standard_normal((4, 5)) * 3], rtol=1e-10, atol=1e-12)
