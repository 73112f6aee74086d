"""Workspaces: scratch arrays the fast CPU paths reuse from call to call."""
import numpy as np

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
