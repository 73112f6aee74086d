"""Shared test settings: hypothesis profiles and the device parameter.

Profiles: ``ci`` (bounded, the default and what .ci/run uses) and ``dev``
(many more examples): ``python -m pytest --hypothesis-profile=dev``.

Devices: a test that takes the ``device`` fixture runs twice, with "cpu" and
"cuda"; the cuda case is skipped where CuPy or a GPU is missing, and carries
the ``cuda`` mark (``pytest -m cuda`` runs only the GPU cases). The ``cuda``
fixture is the GPU alone, for tests that compare it with the CPU.
"""
import os

# The suite runs in parallel workers (pytest -n 2 on 2 cores). BLAS threads on
# top of that oversubscribe the cores, and OpenBLAS's spinning threads then
# slow everything down many times over: one BLAS thread per worker. This must
# run before NumPy is imported.
for _var in ("OPENBLAS_NUM_THREADS", "OMP_NUM_THREADS", "MKL_NUM_THREADS"):
    os.environ.setdefault(_var, "1")

import numpy as np  # noqa: E402
import pytest  # noqa: E402
from hypothesis import HealthCheck, settings

import tinygnet  # noqa: E402

# Likewise tinygnet's own CPU threads: one per worker. Tests of the threaded
# paths ask for more with the ``threads`` fixture.
tinygnet.set_num_threads(1)

settings.register_profile(
    "ci", max_examples=25, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "dev", max_examples=300, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("TINYGNET_HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def threads():
    """A function that sets tinygnet's CPU thread count; the test's end restores it."""
    before = tinygnet.get_num_threads()
    yield tinygnet.set_num_threads
    tinygnet.set_num_threads(before)


@pytest.fixture
def rng():
    """A seeded NumPy generator: every test's randomness is reproducible."""
    return np.random.default_rng(1234)


def pytest_configure(config):
    config.addinivalue_line("markers", "cuda: runs on an NVIDIA GPU through CuPy "
                                       "(skipped where there is none)")


def _skip_without_cuda():
    from tinygnet.backend import is_cuda_available   # imports CuPy only here
    if not is_cuda_available():
        pytest.skip("no CUDA device (CuPy is not installed or sees no GPU)")


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request):
    """"cpu", then "cuda" (skipped without a GPU)."""
    if request.param == "cuda":
        _skip_without_cuda()
    return request.param


@pytest.fixture(params=[pytest.param("cuda", marks=pytest.mark.cuda)])
def cuda(request):
    """"cuda", for GPU-against-CPU tests (skipped without a GPU)."""
    _skip_without_cuda()
    return request.param
