"""Fixtures shared by every test folder."""

from collections.abc import Iterator

import pytest
import torch


@pytest.fixture
def single_thread() -> Iterator[None]:
    """One torch thread for tiny models: a second thread only waits on the busy shared core
    (measured 30x slower with 2 threads on a loaded 2-core machine). Use with
    ``pytestmark = pytest.mark.usefixtures("single_thread")``."""
    before = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(before)
