"""tests/functional checks the reference implementations, the ops a learner reads.

Every test here runs with the fast paths off (``tinygnet.use_fast(False)``):
the ops are compared with plain loops and their gradients with finite
differences. Each fast path is compared with its reference in
tests/kernels/test_fast_paths.py.
"""
import pytest

import tinygnet


@pytest.fixture(autouse=True)
def reference_ops_only():
    with tinygnet.use_fast(False):
        yield
