"""Shared fixtures: float64 scoped to the tests that check identities."""

import jax
import pytest


@pytest.fixture
def x64():
    """Runs the test body with 64-bit floats enabled."""
    with jax.enable_x64(True):
        yield
