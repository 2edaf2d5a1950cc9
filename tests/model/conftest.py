"""Model tests run single-threaded: their tensors are tiny, and on a shared 2-core machine every
intra-op parallel region can wait milliseconds for a busy second core (measured: a (1, 2, 5, 8)
SDPA call takes ~8 ms with 2 threads under load, 4 us with 1)."""

from __future__ import annotations

import pytest


@pytest.fixture(autouse=True)
def _every_model_test_single_threaded(single_thread: None) -> None:
    """(a conftest's pytestmark does not reach its folder's tests; an autouse fixture does)"""
