"""tinygnet's CPU threads: blocks of work, blocked matrix products, BLAS kept to one thread."""
import numpy as np
import pytest

from tinygnet.kernels import threads as threads_module


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

    threads_module.parallel_for(100, body)
    spans = sorted((start, stop) for start, stop, _ in calls)
    assert len(spans) == 3
    assert spans[0][0] == 0 and spans[-1][1] == 100
    assert all(a[1] == b[0] for a, b in zip(spans, spans[1:]))     # no gap, no overlap
    assert len({name for _, _, name in calls}) == 3                 # three threads


def test_parallel_for_keeps_small_work_on_the_calling_thread(threads):
    import threading
    threads(4)
    calls = []
    threads_module.parallel_for(10, lambda a, b: calls.append((a, b, threading.current_thread())),
                         min_chunk=6)
    assert calls == [(0, 10, threading.current_thread())]
    calls.clear()
    threads_module.parallel_for(12, lambda a, b: calls.append((a, b)), min_chunk=6)
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
        threads_module.parallel_for(2, body)
    assert finished == [1]


@pytest.mark.parametrize("over", ["ignore", "raise"])
def test_every_chunk_keeps_the_callers_floating_point_error_handling(threads, over):
    """A diverging run silences overflow (it says so itself): no chunk may warn regardless."""
    import warnings
    threads(2)
    big = np.full(2, 1e300)

    def body(start, stop):
        if start > 0:                              # a chunk on a worker thread
            big[start:stop] * big[start:stop]      # overflows

    with warnings.catch_warnings():
        warnings.simplefilter("error")             # a RuntimeWarning would fail the test
        with np.errstate(over=over):
            if over == "raise":
                with pytest.raises(FloatingPointError):
                    threads_module.parallel_for(2, body)
            else:
                threads_module.parallel_for(2, body)


def test_nested_parallel_for_runs_inline(threads):
    threads(2)
    inner = []
    threads_module.parallel_for(2, lambda a, b: threads_module.parallel_for(
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
    monkeypatch.setattr(threads_module, "_MIN_CHUNK_FLOPS", 1)      # cut even small products
    cuts = []
    parallel_for = threads_module.parallel_for

    def recording_parallel_for(total, body, min_chunk=1):
        cuts.append(min(3, total // min_chunk))         # how many blocks it makes
        parallel_for(total, body, min_chunk)

    monkeypatch.setattr(threads_module, "parallel_for", recording_parallel_for)
    a = rng.standard_normal(a_shape).astype(np.float32)
    b = rng.standard_normal(b_shape).astype(np.float32)
    expected = np.matmul(a, b)
    np.testing.assert_allclose(threads_module.parallel_matmul(a, b), expected, rtol=1e-5, atol=1e-4)
    assert cuts == [3], "the product was not cut into blocks"
    # the same operands as transposed views of other arrays, as conv's backward passes them
    a_t = np.ascontiguousarray(np.swapaxes(a, -1, -2)).swapaxes(-1, -2)
    b_t = np.ascontiguousarray(np.swapaxes(b, -1, -2)).swapaxes(-1, -2)
    np.testing.assert_allclose(threads_module.parallel_matmul(a_t, b_t), expected, rtol=1e-5, atol=1e-4)


def blas_held_by_two_threads(threads):
    """BLAS's thread count getter, after BLAS was set to 2 threads and tinygnet started its
    own 2 (which hold BLAS to one). Skips where NumPy's OpenBLAS cannot be found."""
    blas = threads_module._openblas()
    if blas is None:
        pytest.skip("NumPy's BLAS is not an OpenBLAS tinygnet can find")
    setter, getter = blas
    threads(1)
    setter(2)
    threads(2)
    return getter


def test_tinygnet_threads_keep_blas_to_one_thread_and_give_it_back(threads):
    """Where NumPy's OpenBLAS is found, tinygnet's threads take its place (one BLAS
    thread), and set_num_threads(1) restores the count BLAS had."""
    getter = blas_held_by_two_threads(threads)
    threads_module.parallel_for(2, lambda a, b: None)
    assert getter() == 1
    threads(1)
    assert getter() == 2


def test_use_fast_false_gives_blas_its_threads_back(threads):
    """The reference ops run their products on BLAS's own threads, as plain NumPy would:
    turning the fast paths off restores BLAS's count, turning them on takes it to one again."""
    import tinygnet
    getter = blas_held_by_two_threads(threads)
    threads_module.parallel_for(2, lambda a, b: None)        # tinygnet's threads start
    assert getter() == 1
    with tinygnet.use_fast(False):
        assert getter() == 2
        with tinygnet.use_fast(False):                        # no change, nothing to give back
            assert getter() == 2
        assert getter() == 2
    assert getter() == 1
    tinygnet.use_fast(False)
    try:
        assert getter() == 2
    finally:
        tinygnet.use_fast(True)
    assert getter() == 1


def test_use_one_core_holds_tinygnet_and_blas_to_one_thread_whatever_blas_had(threads):
    """A worker process beside others: a script that asked BLAS for two threads through the
    environment (benchmarks/cpu_bench.py does) must not leave two in each worker."""
    getter = blas_held_by_two_threads(threads)
    threads(1)                                  # BLAS back to its two
    assert getter() == 2
    threads_module.use_one_core()
    assert threads_module.get_num_threads() == 1 and getter() == 1
