"""Shared benchmark plumbing: after the run, print each group's timings as ratios to mmfast's.

Each benchmark names its implementation with ``record(benchmark, group, impl)``; the summary
then reads ``min`` times from the same run, so ratios never mix machines or sessions.
"""

import pytest

_TIMINGS: dict[str, dict[str, float]] = {}


@pytest.fixture
def record():
    def _record(benchmark, group: str, impl: str) -> None:
        benchmark.group = group
        benchmark.name = impl
        benchmark.extra_info["impl"] = impl
        _TIMINGS.setdefault(group, {})[impl] = benchmark

    return _record


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
