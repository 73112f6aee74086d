"""The CUDA kernels on the host, for tests without a GPU.

The kernel sources of ``tinygnet.kernels.cuda_kernels`` are plain C++ once
``__global__`` and the thread indices are defined away, so g++ compiles them
into a shared library, and ``HostCuPy`` (a stand-in for the few CuPy calls
the kernel wrappers make) runs the real wrappers on NumPy arrays. This checks
the index arithmetic and the arguments of every kernel, everything but the
GPU itself. The ``kernels_on_host`` fixture switches the wrappers over.
"""
import contextlib
import ctypes
import shutil
import subprocess

import numpy as np
import pytest

from tinygnet.kernels import cuda_kernels


def elementwise_as_c(name, ctype, device):
    """ELEMENTWISE_SOURCES[name] as a C function over ``total`` elements.

    Every non-raw parameter is an array read (or written) at index i, as in
    CuPy's generated code; raw ones are plain pointers.
    """
    in_params, out_params, operation = cuda_kernels.ELEMENTWISE_SOURCES[name]
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


_HOST_PRELUDE = """#include <cmath>
#include <algorithm>
using std::max; using std::min; using std::pow; using std::exp; using std::log;
#define __global__
struct Dim { long long x; };
static const Dim blockIdx = {0}, blockDim = {1}, gridDim = {1}, threadIdx = {0};
"""


class HostCuPy:
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
        T = {"float": np.float32, "double": np.float64}[source.split()[1]]   # "typedef float T;"

        def launch(grid, block, args):
            _check_as_cupy_passes_them(name, T, args)
            function(*map(_as_ctype, args))
        return launch

    def ElementwiseKernel(self, in_params, out_params, operation, name):
        spec = next(k for k, v in cuda_kernels.ELEMENTWISE_SOURCES.items()
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


def _check_as_cupy_passes_them(name, T, args):
    """Each argument must be what the kernel declares, since CuPy passes it by its own type.

    CuPy hands a raw kernel a NumPy scalar as its own bytes and an array as a
    bare pointer (``_pointer`` in cupy/cuda/function.pyx): an ``np.int64`` for an
    ``int`` shifts every later argument, an ``np.float32`` for a ``double`` is
    read as 8 bytes, a float64 array for ``const float*`` is read as floats.
    """
    declared = cuda_kernels.kernel_parameters(name)
    assert len(args) == len(declared), f"{name}: {len(args)} arguments for {len(declared)}"
    for (ctype, pointer, _, pname), value in zip(declared, args):
        want = np.dtype(T if ctype == "T" else {"int": np.int32, "long long": np.int64}[ctype])
        if pointer:
            assert isinstance(value, np.ndarray) and value.dtype == want \
                and value.flags.c_contiguous, \
                f"{name}: {pname} must be a C-contiguous {want} array, got {value!r:.60}"
        else:
            assert type(value) is want.type, \
                f"{name}: {pname} is a {ctype}, got {type(value).__name__} {value!r}"


def _as_ctype(value):
    if isinstance(value, np.ndarray):
        return ctypes.c_void_p(value.ctypes.data)
    return {np.int32: ctypes.c_int, np.int64: ctypes.c_longlong, np.float32: ctypes.c_float,
            np.float64: ctypes.c_double}[type(value)](value)


@pytest.fixture(scope="session")
def elementwise_source():
    """``elementwise_source(name, ctype, device)``: an ElementwiseKernel spec as C (or CUDA)."""
    return elementwise_as_c


@pytest.fixture(scope="session")
def host_cupy(tmp_path_factory):
    """The stand-in, one per test session (each source is compiled once)."""
    if shutil.which("g++") is None:
        pytest.skip("g++ is not installed")
    return HostCuPy(tmp_path_factory.mktemp("kernels"))


@pytest.fixture(scope="session")
def kernels_on_host(host_cupy):
    """A context manager: inside it, the CUDA kernel wrappers run on the host."""
    @contextlib.contextmanager
    def activate():
        saved = (cuda_kernels._cupy, cuda_kernels._raw_kernels, cuda_kernels._elementwise_kernels)
        cuda_kernels._cupy = lambda: host_cupy
        cuda_kernels._raw_kernels, cuda_kernels._elementwise_kernels = {}, {}
        try:
            yield host_cupy
        finally:
            (cuda_kernels._cupy, cuda_kernels._raw_kernels,
             cuda_kernels._elementwise_kernels) = saved
    return activate
