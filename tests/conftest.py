"""Shared test settings: hypothesis profiles and the device parameter.

Profiles: ``ci`` (bounded, the default and what .ci/run uses) and ``dev``
(many more examples): ``python -m pytest --hypothesis-profile=dev``.
"""
import os

import numpy as np
import pytest
from hypothesis import HealthCheck, settings

settings.register_profile(
    "ci", max_examples=25, deadline=None, derandomize=True,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.register_profile(
    "dev", max_examples=300, deadline=None,
    suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large])
settings.load_profile(os.environ.get("TINYGNET_HYPOTHESIS_PROFILE", "ci"))


@pytest.fixture
def rng():
    """A seeded NumPy generator: every test's randomness is reproducible."""
    return np.random.default_rng(1234)
