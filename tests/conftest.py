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
    from tinygnet.backend import gpu_problem   # imports CuPy only here
    if gpu_problem():
        pytest.skip(f"no usable GPU: {gpu_problem()}")


@pytest.fixture(params=["cpu", pytest.param("cuda", marks=pytest.mark.cuda)])
def device(request):
    """"cpu", then "cuda" (skipped without a GPU)."""
    if request.param == "cuda":
        _skip_without_cuda()
    return request.param


# Session-scoped: hypothesis refuses a @given test that takes a function-scoped
# fixture (its function_scoped_fixture health check), and it checks only after
# the fixture ran, so without a GPU the skip came first and hid the failure.
@pytest.fixture(scope="session", params=[pytest.param("cuda", marks=pytest.mark.cuda)])
def cuda(request):
    """"cuda", for GPU-against-CPU tests (skipped without a GPU)."""
    _skip_without_cuda()
    return request.param


# --------------------------------------------------------------------------
# Two rules every test obeys, checked when the tests are collected, so that a
# breach fails on a machine without a GPU too (where the GPU cases skip):
# * a case on a CUDA device carries the ``cuda`` mark (benchmarks/gpu_check.sh
#   runs ``-m cuda`` alone on the GPU and the rest in parallel CPU workers);
# * a @given test takes no function-scoped fixture (hypothesis would fail it
#   with its function_scoped_fixture health check, but only once the fixture
#   has run, i.e. only where there is a GPU).
# A test that breaks one fails at its setup, saying which rule.
# --------------------------------------------------------------------------
_SUITE_RULE = pytest.StashKey[str]()


def _suite_rule_broken(item):
    params = getattr(getattr(item, "callspec", None), "params", {})
    for name in ("device", "cuda"):
        value = params.get(name)
        if isinstance(value, str) and value.startswith("cuda") \
                and item.get_closest_marker("cuda") is None:
            return (f"its {name}={value!r} case has no cuda mark: use the device or cuda "
                    f"fixture of tests/conftest.py, or mark it with pytest.mark.cuda")
    suppressed = getattr(getattr(item.obj, "_hypothesis_internal_use_settings", None),
                         "suppress_health_check", ())
    if getattr(item.obj, "is_hypothesis_test", False) \
            and HealthCheck.function_scoped_fixture not in suppressed:
        # Fixtures as hypothesis sees them (without parametrize's pseudo-fixtures).
        info = item.session._fixturemanager.getfixtureinfo(
            node=item, func=item.function, cls=None)
        for name in item._fixtureinfo.argnames:
            definitions = info.name2fixturedefs.get(name)
            if definitions and definitions[-1].scope == "function":
                return (f"it is a @given test that takes the function-scoped fixture "
                        f"{name!r}, which hypothesis refuses (function_scoped_fixture); "
                        f"make the fixture session-scoped or use a context manager")
    return None


def pytest_collection_modifyitems(config, items):
    for item in items:
        problem = _suite_rule_broken(item)
        if problem:
            item.stash[_SUITE_RULE] = problem


@pytest.hookimpl(tryfirst=True)
def pytest_runtest_setup(item):
    if _SUITE_RULE in item.stash:
        pytest.fail(f"{item.nodeid}: {item.stash[_SUITE_RULE]}", pytrace=False)
