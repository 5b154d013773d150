"""Fixtures of the node core's unit tests; their helpers are in tests/coresim.py."""

from __future__ import annotations

import pytest
from coresim import cluster_of


@pytest.fixture
def cluster():
    """Three seeds on the simulated network, converged on one ring."""
    return cluster_of(3)
