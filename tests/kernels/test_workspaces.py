"""Workspaces: scratch arrays the fast CPU paths reuse from call to call."""
import numpy as np
import pytest

from tinygnet.kernels import workspaces


def test_workspace_reuses_one_buffer_per_name_and_thread():
    import threading
    a = workspaces.workspace("test.a", (4, 5), np.float32)
    assert a.shape == (4, 5) and a.dtype == np.float32 and a.flags.c_contiguous
    again = workspaces.workspace("test.a", (2, 3), np.float64)         # smaller: same memory
    assert np.shares_memory(a, again)
    other = workspaces.workspace("test.b", (4, 5), np.float32)         # another name: its own
    assert not np.shares_memory(a, other)
    bigger = workspaces.workspace("test.a", (100, 100), np.float32)    # grown: new memory
    assert bigger.shape == (100, 100)
    assert np.shares_memory(bigger, workspaces.workspace("test.a", (100, 100), np.float32))
    seen = []
    thread = threading.Thread(target=lambda: seen.append(
        workspaces.workspace("test.a", (100, 100), np.float32)))
    thread.start()
    thread.join()
    assert not np.shares_memory(bigger, seen[0])                    # per thread
    workspaces.release_workspaces()
    assert not np.shares_memory(bigger, workspaces.workspace("test.a", (100, 100), np.float32))
    workspaces.release_workspaces()


def test_lent_memory_goes_back_to_the_pool_when_the_loan_is_let_go(monkeypatch):
    import gc
    monkeypatch.setattr(workspaces, "_pool", {"lent": 0, "free": []})
    monkeypatch.setattr(workspaces, "LEND_BUDGET_BYTES", 1000)
    a = workspaces.lend((10, 10), np.float32)                       # 400 bytes
    assert a.array.shape == (10, 10) and a.array.dtype == np.float32
    assert a.array.flags.c_contiguous
    b = workspaces.lend((5, 10), np.float64)                        # 400 more: 800 lent
    assert not np.shares_memory(a.array, b.array)
    assert workspaces.lend((60,), np.float32) is None               # 240 more: over the budget
    address = a.array.__array_interface__["data"][0]
    del a
    gc.collect()
    assert workspaces._pool["lent"] == 400
    again = workspaces.lend((20, 5), np.float32)                    # fits: the same memory
    assert again.array.__array_interface__["data"][0] == address
    del b, again
    gc.collect()
    assert workspaces._pool["lent"] == 0
    assert sum(buffer.nbytes for buffer in workspaces._pool["free"]) <= 1000


def test_a_convolution_keeps_its_columns_only_within_the_budget(monkeypatch):
    """Kept or rebuilt, the same columns: the same gradients, bit for bit, and a second
    backward (retain_graph) still works."""
    from tinygnet.functional.conv import Conv2d
    from tinygnet.kernels.cpu_conv import Conv2dOneGemm
    from tinygnet.tensor import Tensor
    rng = np.random.default_rng(0)
    x = Tensor(rng.standard_normal((2, 3, 6, 6)), requires_grad=True)
    w = Tensor(rng.standard_normal((4, 3, 3, 3)), requires_grad=True)
    gy = rng.standard_normal((2, 4, 6, 6))
    grads = {}
    for budget in (1 << 20, 0):
        monkeypatch.setattr(workspaces, "LEND_BUDGET_BYTES", budget)
        y = Conv2d.apply(x, w, None, stride=(1, 1), padding=(1, 1))
        op = y._ctx
        assert type(op) is Conv2dOneGemm
        assert (op.cols is not None, op.x is None) == (bool(budget), bool(budget))
        y.backward(gy, retain_graph=True)
        y.backward(gy)                                  # gradients add up: twice the first
        grads[budget] = (x.grad.numpy().copy(), w.grad.numpy().copy())
        assert getattr(op, "cols", None) is None        # let go after the last backward
        x.grad = w.grad = None
    for kept, rebuilt in zip(grads[1 << 20], grads[0]):
        np.testing.assert_array_equal(kept, rebuilt)


FAULTS = """
import resource, sys
import numpy as np
import pytest
from tinygnet.kernels.workspaces import keep_freed_memory

if sys.argv[1] == "keep" and not keep_freed_memory():
    print("unsupported")
    raise SystemExit


def allocate_and_free():             # 32 MiB in arrays of 1 MiB, as a step's temporaries
    arrays = [np.ones(1 << 18, np.float32) for _ in range(32)]
    del arrays


allocate_and_free()
allocate_and_free()
before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt
allocate_and_free()
print(resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before)
"""


def test_keep_freed_memory_spares_the_next_arrays_their_page_faults(tmp_path):
    """glibc as it starts gives the freed arrays back to the OS, and the same arrays allocated
    again fault their 8,192 pages in again; kept, they fault none."""
    import os
    import subprocess
    import sys
    script = tmp_path / "faults.py"
    script.write_text(FAULTS)
    repo = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
    faults = {}
    for setting in ("default", "keep"):
        done = subprocess.run([sys.executable, str(script), setting], capture_output=True,
                              text=True, timeout=60, check=True, env=dict(os.environ, PYTHONPATH=repo))
        faults[setting] = done.stdout.strip()
    if faults["keep"] == "unsupported":
        pytest.skip("not glibc: no mallopt")
    assert int(faults["default"]) > 4000            # 32 MiB of 4 KiB pages: 8,192
    assert int(faults["keep"]) < 100
