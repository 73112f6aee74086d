"""CUDA kernels for the GPU fast paths: im2col/col2im, max pooling, LRN, the
ReLU gradient and softmax cross-entropy.

CuPy has no cuDNN, and these are the spots where generic CuPy array code is
slow (many small kernels, big temporaries). ``kernels/cuda.py`` wraps them
into the ops that replace the references on the GPU; each kernel computes
what the reference op computes (the tests compare them on the same inputs).
The notation is the ops': x is (N, C, H, W), a window KH x KW with strides
SH, SW and paddings PH, PW, outputs OH x OW.

How the kernels are written:

* one CUDA thread per output element, in a grid-stride loop (a thread
  handles elements i, i + stride, ... so any size fits any grid);
* *gather, never scatter*: a backward kernel runs one thread per input
  element and sums what reaches it (col2im, pooling). No atomics, so the
  result is deterministic and the sums run in a fixed order;
* the source is plain CUDA C with a type ``T`` (``float`` or ``double``),
  compiled by CuPy on first use and cached per dtype;
* every launch makes each argument what the kernel's signature declares
  (``_launch``): CuPy passes a raw kernel's arguments by their own type;
* outputs come from ``cupy.empty``, i.e. CuPy's memory pool: after the
  first training step, the arrays of a step reuse the pool's blocks instead
  of calling cudaMalloc.

CuPy is never imported at module import time (``backend.cupy_or_none()``
inside the functions), so the CPU path does not need it.
"""
from __future__ import annotations

import re

import numpy as np

from .. import backend

__all__ = ["im2col", "col2im", "max_pool2d_forward", "max_pool2d_backward",
           "lrn_forward", "lrn_backward", "relu_backward",
           "cross_entropy_forward", "cross_entropy_backward",
           "RAW_SOURCES", "ELEMENTWISE_SOURCES"]

_THREADS = 256  # threads per block
_LOOP = ("for (long long i = blockIdx.x * (long long)blockDim.x + threadIdx.x; "
         "i < total; i += (long long)blockDim.x * gridDim.x)")

# --------------------------------------------------------------------------
# Kernel sources. ``T`` is defined in front of each (``typedef float T;``).
# --------------------------------------------------------------------------
RAW_SOURCES = {
    # cols[n, c, kh, kw, oh, ow] = x[n, c, oh*SH - PH + kh, ow*SW - PW + kw], 0 outside x.
    # The zero padding is read, not stored: no padded copy of x.
    "im2col": """
extern "C" __global__ void im2col(const T* x, T* cols, long long total, int C, int H, int W,
        int KH, int KW, int SH, int SW, int PH, int PW, int OH, int OW) {
    LOOP {
        int ow = i % OW;  long long r = i / OW;
        int oh = r % OH;  r /= OH;
        int kw = r % KW;  r /= KW;
        int kh = r % KH;  long long nc = r / KH;          // n * C + c
        int h = oh * SH - PH + kh, w = ow * SW - PW + kw;
        cols[i] = (0 <= h && h < H && 0 <= w && w < W) ? x[(nc * H + h) * W + w] : (T)0;
    }
}
""",
    # The adjoint: gx[n, c, h, w] = sum of gcols[n, c, kh, kw, oh, ow] over every
    # (kh, kw, oh, ow) with oh*SH - PH + kh = h and ow*SW - PW + kw = w.
    "col2im": """
extern "C" __global__ void col2im(const T* gcols, T* gx, long long total, int C, int H, int W,
        int KH, int KW, int SH, int SW, int PH, int PW, int OH, int OW) {
    LOOP {
        int w = i % W;  long long r = i / W;
        int h = r % H;  long long nc = r / H;
        T sum = 0;
        for (int kh = 0; kh < KH; ++kh) {
            int hs = h + PH - kh;                        // = oh * SH
            if (hs < 0 || hs % SH != 0 || hs / SH >= OH) continue;
            for (int kw = 0; kw < KW; ++kw) {
                int ws = w + PW - kw;                    // = ow * SW
                if (ws < 0 || ws % SW != 0 || ws / SW >= OW) continue;
                sum += gcols[(((nc * KH + kh) * KW + kw) * OH + hs / SH) * OW + ws / SW];
            }
        }
        gx[i] = sum;
    }
}
""",
    # y = max of the window clipped to the input (padding never wins);
    # argmax = h * W + w of the row-major first maximum (ties: first, as PyTorch).
    "max_pool_forward": """
extern "C" __global__ void max_pool_forward(const T* x, T* y, int* argmax, long long total,
        int H, int W, int KH, int KW, int SH, int SW, int PH, int PW, int OH, int OW) {
    LOOP {
        int ow = i % OW;  long long r = i / OW;
        int oh = r % OH;  long long nc = r / OH;
        int h0 = max(oh * SH - PH, 0), h1 = min(oh * SH - PH + KH, H);
        int w0 = max(ow * SW - PW, 0), w1 = min(ow * SW - PW + KW, W);
        const T* plane = x + nc * H * W;
        int best = h0 * W + w0;
        for (int h = h0; h < h1; ++h)
            for (int w = w0; w < w1; ++w)
                if (plane[h * W + w] > plane[best]) best = h * W + w;
        y[i] = plane[best];
        argmax[i] = best;
    }
}
""",
    # gx[n, c, h, w] = sum of gy over the windows that contain (h, w) and chose it.
    # Window oh covers rows oh*SH - PH ... oh*SH - PH + KH - 1.
    "max_pool_backward": """
extern "C" __global__ void max_pool_backward(const T* gy, const int* argmax, T* gx,
        long long total, int H, int W, int KH, int KW, int SH, int SW, int PH, int PW,
        int OH, int OW) {
    LOOP {
        int w = i % W;  long long r = i / W;
        int h = r % H;  long long nc = r / H;
        int oh0 = h + PH - KH + 1, ow0 = w + PW - KW + 1;
        oh0 = oh0 <= 0 ? 0 : (oh0 + SH - 1) / SH;       // first window reaching h
        ow0 = ow0 <= 0 ? 0 : (ow0 + SW - 1) / SW;
        int oh1 = min((h + PH) / SH, OH - 1), ow1 = min((w + PW) / SW, OW - 1);
        long long base = nc * OH * OW;
        int me = h * W + w;
        T sum = 0;
        for (int oh = oh0; oh <= oh1; ++oh)
            for (int ow = ow0; ow <= ow1; ++ow)
                if (argmax[base + oh * OW + ow] == me) sum += gy[base + oh * OW + ow];
        gx[i] = sum;
    }
}
""",
    # x is (N, C, L). S_c = k + alpha/size * sum of x_c'^2, c' = c - before ... c + after;
    # y = x * S^(-beta). S is kept for backward.
    "lrn_forward": """
extern "C" __global__ void lrn_forward(const T* x, T* y, T* scale, long long total, int C,
        long long L, int before, int after, T alpha_over_size, T beta, T k) {
    LOOP {
        long long l = i % L, r = i / L;
        int c = r % C;
        const T* column = x + (r - c) * L + l;           // x[n, :, l]
        T s = 0;
        for (int d = max(c - before, 0); d <= min(c + after, C - 1); ++d)
            s += column[d * L] * column[d * L];
        s = k + alpha_over_size * s;
        scale[i] = s;
        y[i] = x[i] * pow(s, -beta);
    }
}
""",
    # gx_j = gy_j S_j^(-beta) - coeff * x_j * sum of gy_c x_c S_c^(-beta-1) over the
    # channels c whose window holds j: c = j - after ... j + before (coeff = 2 alpha beta / size).
    "lrn_backward": """
extern "C" __global__ void lrn_backward(const T* x, const T* scale, const T* gy, T* gx,
        long long total, int C, long long L, int before, int after, T coeff, T beta) {
    LOOP {
        long long l = i % L, r = i / L;
        int c = r % C;
        long long first = (r - c) * L + l;               // index of [n, 0, l]
        T t = 0;
        for (int d = max(c - after, 0); d <= min(c + before, C - 1); ++d) {
            long long j = first + d * L;
            t += gy[j] * x[j] * pow(scale[j], -beta - 1);
        }
        gx[i] = gy[i] * pow(scale[i], -beta) - coeff * x[i] * t;
    }
}
""",
    # One thread per row of the (N, K) logits: z = x - max, lse = log(sum(exp(z))),
    # loss = (1 - eps) (lse - z_t) + eps (lse - mean z); p = softmax, written if keep_p.
    "cross_entropy_forward": """
extern "C" __global__ void cross_entropy_forward(const T* x, const long long* targets,
        T* loss, T* p, long long total, int K, T eps, int keep_p) {
    LOOP {
        const T* row = x + i * K;
        T m = row[0];
        for (int k = 1; k < K; ++k) m = row[k] > m ? row[k] : m;
        T sum_exp = 0, sum_z = 0;
        for (int k = 0; k < K; ++k) {
            T z = row[k] - m;
            sum_exp += exp(z);
            sum_z += z;
        }
        T lse = log(sum_exp);
        T nll = lse - (row[targets[i]] - m);
        loss[i] = eps > 0 ? (1 - eps) * nll + eps * (lse - sum_z / K) : nll;
        if (keep_p)
            for (int k = 0; k < K; ++k) p[i * K + k] = exp(row[k] - m) / sum_exp;
    }
}
""",
}

# ElementwiseKernel (in_params, out_params, operation): CuPy writes the loop;
# ``i`` is the element's flat index, ``raw`` arrays are indexed by hand.
ELEMENTWISE_SOURCES = {
    # gx = gy where y > 0, else 0 (one pass, no boolean mask array).
    "relu_backward": ("T gy, T y", "T gx", "gx = y > 0 ? gy : (T)0;"),
    # gx = (p - q) * gy_row * scale, q = eps/K + (1 - eps) onehot(target); gy_step is 1
    # for per-row gy (reduction="none") and 0 for a scalar gy.
    "cross_entropy_backward": (
        "T p, raw int64 targets, raw T gy, int64 K, T eps, T scale, int64 gy_step", "T gx",
        "long long row = i / K;"
        "T q = eps / K + (i % K == targets[row] ? 1 - eps : (T)0);"
        "gx = (p - q) * gy[row * gy_step] * scale;"),
}

_C_TYPES = {np.dtype(np.float32): "float", np.dtype(np.float64): "double"}


def raw_source(name: str, dtype) -> str:
    """The complete CUDA source of RAW_SOURCES[name] for ``dtype`` (float32 or float64)."""
    if np.dtype(dtype) not in _C_TYPES:
        raise TypeError(f"tinygnet's CUDA kernels are compiled for float32 and float64, "
                        f"not {np.dtype(dtype)}")
    return (f"typedef {_C_TYPES[np.dtype(dtype)]} T;\n"
            + RAW_SOURCES[name].replace("LOOP", _LOOP))


# --------------------------------------------------------------------------
# Building and launching (compiled once per dtype, on first use)
# --------------------------------------------------------------------------
_raw_kernels: dict = {}
_elementwise_kernels: dict = {}


def _cupy():
    cupy = backend.cupy_or_none()
    if cupy is None:
        raise RuntimeError("tinygnet's CUDA kernels need CuPy (pip install 'tinygnet[gpu13]' "
                           "for CUDA 13, 'tinygnet[gpu12]' for CUDA 12)")
    return cupy


def _launch(name, dtype, arrays, total, *scalars):
    """Run RAW_SOURCES[name] over ``total`` elements: ``kernel(*arrays, total, *scalars)``.

    CuPy passes a raw kernel's arguments by their own type, not the
    parameter's: a NumPy scalar as its own bytes (an ``np.float32`` reaching a
    ``double`` is 4 bytes read as 8), a Python int as 64 bits, a float as a
    double, and an array as a bare pointer. So every argument is made what the
    kernel's signature declares (``kernel_parameters``) here: scalars are
    converted, input arrays cast to their element type (a float64 ``gy`` for a
    float32 kernel would be read as float32) and made C-contiguous; an output
    array of the wrong type is a bug in the caller and raises.
    """
    cupy = _cupy()
    dtype = np.dtype(dtype)
    key = (name, dtype)
    if key not in _raw_kernels:
        _raw_kernels[key] = cupy.RawKernel(raw_source(name, dtype), name)
    if total == 0:
        return
    args = []
    for (ctype, pointer, const, pname), value in zip(kernel_parameters(name),
                                                     (*arrays, total, *scalars), strict=True):
        element = dtype if ctype == "T" else _INTEGER_TYPES[ctype]
        if not pointer:
            args.append(element.type(value))
        elif const:
            args.append(cupy.ascontiguousarray(value, dtype=element))
        elif value.dtype != element or not value.flags.c_contiguous:
            raise TypeError(f"{name}: output {pname} must be a C-contiguous {element} array, "
                            f"got {value.dtype}")
        else:
            args.append(value)
    blocks = min((total + _THREADS - 1) // _THREADS, 1 << 20)   # grid-stride beyond that
    _raw_kernels[key]((blocks,), (_THREADS,), tuple(args))


_INTEGER_TYPES = {"int": np.dtype(np.int32), "long long": np.dtype(np.int64)}
_parameters: dict = {}


def kernel_parameters(name: str) -> list:
    """[(C type, is a pointer, is const, name)] of RAW_SOURCES[name]'s parameters, in order.

    ``const T* x`` is ``("T", True, True, "x")``, ``long long total`` is
    ``("long long", False, False, "total")``.
    """
    if name not in _parameters:
        signature = re.search(rf"void {name}\((.*?)\)", RAW_SOURCES[name], re.S).group(1)
        parsed = []
        for spec in signature.split(","):
            words = spec.replace("*", " * ").split()
            const = words[0] == "const"
            words = words[1:] if const else words
            pointer = "*" in words
            words = [w for w in words if w != "*"]
            parsed.append((" ".join(words[:-1]), pointer, const, words[-1]))
        _parameters[name] = parsed
    return _parameters[name]


def _elementwise(name):
    if name not in _elementwise_kernels:
        in_params, out_params, operation = ELEMENTWISE_SOURCES[name]
        _elementwise_kernels[name] = _cupy().ElementwiseKernel(
            in_params, out_params, operation, f"tinygnet_{name}")
    return _elementwise_kernels[name]


# --------------------------------------------------------------------------
# The functions the ops call (CuPy arrays in, CuPy arrays out)
# --------------------------------------------------------------------------
def im2col(x, KH, KW, SH, SW, PH, PW, OH, OW):
    """cols (N, C*KH*KW, OH*OW) of a C-contiguous x (N, C, H, W), padding included."""
    cupy = _cupy()
    N, C, H, W = x.shape
    x = cupy.ascontiguousarray(x)
    cols = cupy.empty((N, C * KH * KW, OH * OW), dtype=x.dtype)
    _launch("im2col", x.dtype, (x, cols), cols.size, C, H, W, KH, KW, SH, SW, PH, PW, OH, OW)
    return cols


def col2im(gcols, x_shape, KH, KW, SH, SW, PH, PW, OH, OW):
    """gx (N, C, H, W) from gcols (N, C*KH*KW, OH*OW): the adjoint of im2col."""
    cupy = _cupy()
    N, C, H, W = x_shape
    gcols = cupy.ascontiguousarray(gcols)
    gx = cupy.empty(x_shape, dtype=gcols.dtype)
    _launch("col2im", gx.dtype, (gcols, gx), gx.size, C, H, W, KH, KW, SH, SW, PH, PW, OH, OW)
    return gx


def max_pool2d_forward(x, KH, KW, SH, SW, PH, PW, OH, OW):
    """y (N, C, OH, OW) and argmax (int32, the winner's h * W + w in its plane)."""
    cupy = _cupy()
    N, C, H, W = x.shape
    x = cupy.ascontiguousarray(x)
    y = cupy.empty((N, C, OH, OW), dtype=x.dtype)
    argmax = cupy.empty((N, C, OH, OW), dtype=cupy.int32)
    _launch("max_pool_forward", x.dtype, (x, y, argmax), y.size,
            H, W, KH, KW, SH, SW, PH, PW, OH, OW)
    return y, argmax


def max_pool2d_backward(gy, argmax, x_shape, KH, KW, SH, SW, PH, PW, OH, OW, *, dtype):
    """gx (N, C, H, W) of ``dtype`` (x's): each gy goes to its window's argmax."""
    cupy = _cupy()
    H, W = x_shape[2:]
    gx = cupy.empty(x_shape, dtype=dtype)
    _launch("max_pool_backward", dtype, (gy, argmax, gx), gx.size,
            H, W, KH, KW, SH, SW, PH, PW, OH, OW)
    return gx


def lrn_forward(x, size, alpha, beta, k):
    """y and the scale S (both x's shape) of local response normalisation."""
    cupy = _cupy()
    x = cupy.ascontiguousarray(x)
    C, L = x.shape[1], int(np.prod(x.shape[2:]))
    y, scale = cupy.empty_like(x), cupy.empty_like(x)
    _launch("lrn_forward", x.dtype, (x, y, scale), x.size, C, np.int64(L),
            size // 2, (size - 1) // 2, alpha / size, beta, k)
    return y, scale


def lrn_backward(x, scale, gy, size, alpha, beta):
    """gx of local response normalisation, from x and the forward's scale S."""
    cupy = _cupy()
    x = cupy.ascontiguousarray(x)       # gy and scale: cast to x's dtype by _launch
    C, L = x.shape[1], int(np.prod(x.shape[2:]))
    gx = cupy.empty_like(x)
    _launch("lrn_backward", x.dtype, (x, scale, gy, gx), x.size, C, np.int64(L),
            size // 2, (size - 1) // 2, 2.0 * alpha * beta / size, beta)
    return gx


def relu_backward(gy, y):
    """gy where y > 0, else 0 (of y's dtype: CuPy refuses a T kernel on two dtypes)."""
    return _elementwise("relu_backward")(gy.astype(y.dtype, copy=False), y)


def cross_entropy_forward(x, targets, label_smoothing, keep_softmax):
    """Per-row losses (N,) and, if ``keep_softmax``, softmax(x) (N, K) (else None)."""
    cupy = _cupy()
    N, K = x.shape
    x = cupy.ascontiguousarray(x)
    targets = cupy.ascontiguousarray(targets, dtype=cupy.int64)
    loss = cupy.empty(N, dtype=x.dtype)
    p = cupy.empty_like(x) if keep_softmax else loss     # not written unless kept
    _launch("cross_entropy_forward", x.dtype, (x, targets, loss, p), N,
            K, label_smoothing, int(keep_softmax))
    return loss, (p if keep_softmax else None)


def cross_entropy_backward(p, targets, gy, label_smoothing, reduction):
    """gx = (p - q) * gy, divided by N for the mean (q: the smoothed one-hot targets)."""
    cupy = _cupy()
    N, K = p.shape
    dtype = p.dtype.type
    scale = 1.0 / N if reduction == "mean" else 1.0
    gy_step = 1 if reduction == "none" else 0
    return _elementwise("cross_entropy_backward")(
        p, cupy.ascontiguousarray(targets, dtype=cupy.int64),
        cupy.ascontiguousarray(gy, dtype=p.dtype),
        np.int64(K), dtype(label_smoothing), dtype(scale), np.int64(gy_step))
