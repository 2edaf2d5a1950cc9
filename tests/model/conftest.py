"""Model tests run single-threaded: their tensors are tiny, and on a shared 2-core machine every
intra-op parallel region can wait milliseconds for a busy second core (measured: a (1, 2, 5, 8)
SDPA call takes ~8 ms with 2 threads under load, 4 us with 1)."""

from __future__ import annotations

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture(autouse=True)
def single_thread() -> Iterator[None]:
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
