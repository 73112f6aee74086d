"""The array-module switch, devices and their errors on a machine without a GPU."""
import subprocess
import sys

import numpy as np
import pytest

import tinygnet as tg
from tinygnet import backend


def test_parse_device():
    assert backend.parse_device("cpu") == "cpu"
    assert backend.parse_device(None) == "cpu"
    assert backend.parse_device("cuda") == "cuda:0"
    assert backend.parse_device("CUDA:1") == "cuda:1"
    with pytest.raises(ValueError, match="'tpu'"):
        backend.parse_device("tpu")
    with pytest.raises(TypeError):
        backend.parse_device(0)


def test_numpy_arrays_use_numpy():
    assert backend.get_array_module(np.zeros(2)) is np
    assert backend.get_array_module(1.0) is np


def test_cpu_path_never_imports_cupy():
    code = (
        "import sys, numpy as np, tinygnet as tg\n"
        "x = tg.tensor(np.ones((2, 3)), requires_grad=True)\n"
        "(x * x).sum().backward()\n"
        "assert 'cupy' not in sys.modules, 'cupy was imported'\n"
    )
    subprocess.run([sys.executable, "-c", code], check=True)


@pytest.mark.skipif(tg.is_cuda_available(), reason="this machine has a GPU")
def test_cuda_without_a_gpu_says_what_is_missing(monkeypatch):
    with pytest.raises(RuntimeError, match="cuda") as info:
        tg.tensor([1.0], device="cuda")
    message = str(info.value)
    assert "CuPy" in message and ("not installed" in message or "no usable NVIDIA GPU" in message)


def test_cuda_error_when_cupy_is_absent(monkeypatch):
    monkeypatch.setattr(backend, "_cupy", False)
    monkeypatch.setattr(backend, "_cupy_error", ImportError("No module named 'cupy'"))
    with pytest.raises(RuntimeError, match=r"needs CuPy, which is not installed.*tinygnet\[gpu\]"):
        tg.tensor([1.0], device="cuda")
    assert not tg.is_cuda_available()


def test_rng_state_without_a_gpu_stream_has_no_cuda_entries():
    tg.manual_seed(0)
    state = backend.get_rng_state()
    assert state["cuda"] == {}
    expected = backend.default_generator().random(3)
    backend.set_rng_state(state)
    np.testing.assert_array_equal(backend.default_generator().random(3), expected)


@pytest.mark.skipif(tg.is_cuda_available(), reason="this machine has a GPU")
def test_gpu_rng_state_is_dropped_on_a_machine_without_that_gpu():
    tg.manual_seed(0)
    state = backend.get_rng_state()
    expected = backend.default_generator().random(3)
    state["cuda"] = {0: np.zeros(16, dtype=np.int8)}       # as saved on a GPU machine
    backend.set_rng_state(state)                            # resumes the host stream exactly
    np.testing.assert_array_equal(backend.default_generator().random(3), expected)


# --------------------------------------------------------------------------
# CPU threads
# --------------------------------------------------------------------------
def test_parallel_for_covers_the_range_once_in_disjoint_chunks(threads):
    import threading
    import time
    threads(3)
    calls = []
    lock = threading.Lock()

    def body(start, stop):
        with lock:
            calls.append((start, stop, threading.current_thread().name))
        time.sleep(0.02)      # every chunk busy at once: each needs its own thread

    backend.parallel_for(100, body)
    spans = sorted((start, stop) for start, stop, _ in calls)
    assert len(spans) == 3
    assert spans[0][0] == 0 and spans[-1][1] == 100
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))     # no gap, no overlap
    assert len({name for _, _, name in calls}) == 3                 # three threads


def test_parallel_for_keeps_small_work_on_the_calling_thread(threads):
    import threading
    threads(4)
    calls = []
    backend.parallel_for(10, lambda a, b: calls.append((a, b, threading.current_thread())),
                         min_chunk=6)
    assert calls == [(0, 10, threading.current_thread())]
    calls.clear()
    backend.parallel_for(12, lambda a, b: calls.append((a, b)), min_chunk=6)
    assert sorted(calls) == [(0, 6), (6, 12)]


def test_parallel_for_raises_a_chunks_error_after_all_chunks_finish(threads):
    import time
    threads(2)
    finished = []

    def body(start, stop):
        if start == 0:
            raise ValueError("chunk 0 failed")
        time.sleep(0.05)
        finished.append(start)

    with pytest.raises(ValueError, match="chunk 0 failed"):
        backend.parallel_for(2, body)
    assert finished == [1]


def test_nested_parallel_for_runs_inline(threads):
    threads(2)
    inner = []
    backend.parallel_for(2, lambda a, b: backend.parallel_for(
        4, lambda c, d: inner.append((c, d))))
    assert sorted(inner) == [(0, 4), (0, 4)]


@pytest.mark.parametrize("bad", [0, -1, 1.5, True, "2"])
def test_set_num_threads_rejects_bad_counts(bad, threads):
    with pytest.raises(ValueError, match="positive integer"):
        threads(bad)


@pytest.mark.parametrize("a_shape, b_shape", [
    ((7, 30), (30, 5000)),          # wide: split over columns
    ((5000, 30), (30, 7)),          # tall: split over rows
    ((64, 20, 30), (64, 30, 40)),   # batched: split over the batch
    ((20, 30), (64, 30, 40)),       # a 2-D weight times a batch (1x1 convolution)
])
def test_parallel_matmul_equals_matmul(rng, threads, a_shape, b_shape, monkeypatch):
    threads(3)
    monkeypatch.setattr(backend, "_MIN_CHUNK_FLOPS", 1)      # cut even small products
    cuts = []
    parallel_for = backend.parallel_for

    def recording_parallel_for(total, body, min_chunk=1):
        cuts.append(min(3, total // min_chunk))         # how many blocks it makes
        parallel_for(total, body, min_chunk)

    monkeypatch.setattr(backend, "parallel_for", recording_parallel_for)
    a = rng.standard_normal(a_shape).astype(np.float32)
    b = rng.standard_normal(b_shape).astype(np.float32)
    expected = np.matmul(a, b)
    np.testing.assert_allclose(backend.parallel_matmul(a, b), expected, rtol=1e-5, atol=1e-4)
    assert cuts == [3], "the product was not cut into blocks"
    # the same operands as transposed views of other arrays, as conv's backward passes them
    a_t = np.ascontiguousarray(np.swapaxes(a, -1, -2)).swapaxes(-1, -2)
    b_t = np.ascontiguousarray(np.swapaxes(b, -1, -2)).swapaxes(-1, -2)
    np.testing.assert_allclose(backend.parallel_matmul(a_t, b_t), expected, rtol=1e-5, atol=1e-4)


def test_tinygnet_threads_keep_blas_to_one_thread_and_give_it_back(threads):
    """Where NumPy's OpenBLAS is found, tinygnet's threads take its place (one BLAS
    thread), and set_num_threads(1) restores the count BLAS had."""
    blas = backend._openblas()
    if blas is None:
        pytest.skip("NumPy's BLAS is not an OpenBLAS tinygnet can find")
    setter, getter = blas
    threads(1)
    setter(2)
    threads(2)
    backend.parallel_for(2, lambda a, b: None)
    assert getter() == 1
    threads(1)
    assert getter() == 2


def test_workspace_reuses_one_buffer_per_name_and_thread():
    import threading
    a = backend.workspace("test.a", (4, 5), np.float32)
    assert a.shape == (4, 5) and a.dtype == np.float32 and a.flags.c_contiguous
    again = backend.workspace("test.a", (2, 3), np.float64)         # smaller: same memory
    assert np.shares_memory(a, again)
    other = backend.workspace("test.b", (4, 5), np.float32)         # another name: its own
    assert not np.shares_memory(a, other)
    bigger = backend.workspace("test.a", (100, 100), np.float32)    # grown: new memory
    assert bigger.shape == (100, 100)
    assert np.shares_memory(bigger, backend.workspace("test.a", (100, 100), np.float32))
    seen = []
    thread = threading.Thread(target=lambda: seen.append(
        backend.workspace("test.a", (100, 100), np.float32)))
    thread.start()
    thread.join()
    assert not np.shares_memory(bigger, seen[0])                    # per thread
    backend.release_workspaces()
    assert not np.shares_memory(bigger, backend.workspace("test.a", (100, 100), np.float32))
    backend.release_workspaces()
