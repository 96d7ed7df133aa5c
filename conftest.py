"""Fixtures shared by tests/ and benchmarks/: torch's intra-op thread count, pinned for one test
and restored after it, failed or not."""

import pytest
import torch


def _pinned_threads(count: int):
    """The body of a fixture that sets torch's intra-op thread count to ``count`` for one test
    (pytest resumes it after the test, and the count is restored)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    yield count
    torch.set_num_threads(previous)


@pytest.fixture
def intra_op_threads(request):
    """The count given by indirect parametrization:
    ``@pytest.mark.parametrize("intra_op_threads", [1, 2], indirect=True)``."""
    yield from _pinned_threads(request.param)


@pytest.fixture(params=[1, 2], ids=lambda t: f"{t}thr")
def threads(request):
    """Runs the test at 1 and at 2 intra-op threads."""
    yield from _pinned_threads(request.param)


@pytest.fixture
def one_thread():
    yield from _pinned_threads(1)


@pytest.fixture
def two_threads():
    yield from _pinned_threads(2)
