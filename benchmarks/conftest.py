"""Shared benchmark plumbing: after the run, print each group's timings as ratios to mmfast's.

Each benchmark names its implementation with ``record(benchmark, group, impl)``; the summary
then reads ``min`` times from the same run, so ratios never mix machines or sessions.
"""

import pytest
import torch

_TIMINGS: dict[str, dict[str, float]] = {}


@pytest.fixture
def record():
    def _record(benchmark, group: str, impl: str) -> None:
        benchmark.group = group
        benchmark.name = impl
        benchmark.extra_info["impl"] = impl
        _TIMINGS.setdefault(group, {})[impl] = benchmark

    return _record


def _pinned_threads(count: int):
    """The body of a fixture that sets torch's intra-op thread count to ``count`` for one test
    (pytest resumes it after the test, failed or not, and the count is restored)."""
    previous = torch.get_num_threads()
    torch.set_num_threads(count)
    yield count
    torch.set_num_threads(previous)


@pytest.fixture(params=[1, 2], ids=lambda t: f"{t}thr")
def threads(request):
    """Runs the benchmark at 1 and at 2 intra-op threads."""
    yield from _pinned_threads(request.param)


@pytest.fixture
def one_thread():
    yield from _pinned_threads(1)


@pytest.fixture
def two_threads():
    yield from _pinned_threads(2)


def pytest_terminal_summary(terminalreporter):
    rows = []
    for group, impls in _TIMINGS.items():
        times = {name: b.stats.stats.min for name, b in impls.items() if b.stats is not None}
        if "mmfast" not in times:
            continue
        base = times["mmfast"]
        others = ", ".join(
            f"{name} {seconds / base:.2f}x" for name, seconds in times.items() if name != "mmfast"
        )
        rows.append(f"{group:<40} mmfast {base * 1e3:9.2f} ms | {others}")
    if rows:
        terminalreporter.section("time of each peer / time of mmfast (higher: mmfast faster)")
        for row in rows:
            terminalreporter.write_line(row)
