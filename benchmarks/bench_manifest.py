"""Reading a million-row manifest: rows/s and peak memory of ``mmfast.data.Manifest`` streaming
each format (JSONL, CSV, Parquet, Arrow), beside loading the same file whole (``pyarrow``'s
``read_table``, what a data-frame reader does) as the peer.

    .venv/bin/python -m pytest benchmarks/bench_manifest.py -s

The manifest (seeded, cached under ``~/.cache/mmfast``): ``MMFAST_BENCH_MANIFEST_ROWS`` rows
(default 1,000,000) of an id, an image path, a 5-15 word caption and 1-3 labels. Each reading
runs in a fresh process, so its peak resident memory (``VmHWM``: ``ru_maxrss`` would carry the
parent's over the fork) is its own; the table gives it above the process's resident memory
before reading (Python and pyarrow loaded).
"""

import json
import os
import subprocess
import sys

import numpy as np
import pytest

from mmfast._io import cache_dir
from mmfast.data import Record, write_manifest

pa = pytest.importorskip("pyarrow")
import pyarrow.ipc  # noqa: E402
import pyarrow.parquet  # noqa: E402

ROWS = int(os.environ.get("MMFAST_BENCH_MANIFEST_ROWS", "1000000"))
FORMATS = ("jsonl", "csv", "parquet", "arrow")

# Run in a child: read the manifest, print rows, seconds and the peak RSS growth in MiB.
_READ = """
import sys, time
import pyarrow, pyarrow.parquet  # loaded before the baseline, as for every format
from mmfast.data import Manifest
path, mode = sys.argv[1], sys.argv[2]
def memory_kib(key):  # VmRSS: resident now; VmHWM: the peak of this address space
    with open("/proc/self/status") as status:
        return next(int(line.split()[1]) for line in status if line.startswith(key))
before = memory_kib("VmRSS:")
start = time.perf_counter()
if mode == "stream":
    rows = sum(1 for _ in Manifest(path))
else:
    rows = pyarrow.parquet.read_table(path).to_pylist().__len__()
seconds = time.perf_counter() - start
print(rows, seconds, (memory_kib("VmHWM:") - before) / 1024)
"""


@pytest.fixture(scope="module")
def manifests() -> dict[str, str]:
    directory = cache_dir() / f"bench-manifest-v1-{ROWS}"
    paths = {kind: directory / f"manifest.{kind}" for kind in FORMATS}
    if all(path.exists() for path in paths.values()):
        return {kind: str(path) for kind, path in paths.items()}
    directory.mkdir(parents=True, exist_ok=True)
    rng = np.random.default_rng(0)
    words = np.array([f"w{n}" for n in range(20_000)])
    labels = np.array([f"label{n}" for n in range(100)])
    lengths, counts = rng.integers(5, 16, ROWS), rng.integers(1, 4, ROWS)
    text_words = words[rng.zipf(1.3, lengths.sum()) % len(words)]
    label_picks = labels[rng.integers(0, len(labels), counts.sum())]
    text_ends, label_ends = np.cumsum(lengths), np.cumsum(counts)
    records = [Record(f"item{n:07d}", f"images/{n % 1000:03d}/item{n:07d}.jpg",
                      " ".join(text_words[text_ends[n] - lengths[n]:text_ends[n]]),
                      tuple(label_picks[label_ends[n] - counts[n]:label_ends[n]]))
               for n in range(ROWS)]
    write_manifest(paths["jsonl"], records)
    write_manifest(paths["csv"], records)
    table = pa.table({"id": [r.id for r in records], "image": [r.image for r in records],
                      "text": [r.text for r in records],
                      "labels": [list(r.labels) for r in records]})
    pyarrow.parquet.write_table(table, paths["parquet"], row_group_size=65_536)
    with pa.ipc.new_stream(paths["arrow"], table.schema) as writer:
        writer.write_table(table, max_chunksize=65_536)
    return {kind: str(path) for kind, path in paths.items()}


def _read(path: str, mode: str) -> tuple[int, float, float]:
    out = subprocess.run([sys.executable, "-c", _READ, path, mode], capture_output=True,
                         text=True, check=True).stdout.split()
    return int(out[0]), float(out[1]), float(out[2])


def test_manifest_reading_streams_in_bounded_memory(manifests):
    sizes = {kind: os.path.getsize(path) / 2**20 for kind, path in manifests.items()}
    print(f"\n{ROWS:,} rows; one process per reading, peak RSS above its start")
    print(f"{'reader':<34}{'file MiB':>9}{'rows/s':>12}{'seconds':>9}{'peak MiB':>10}")
    results = {}
    for kind in FORMATS:
        rows, seconds, peak = results[kind] = _read(manifests[kind], "stream")
        assert rows == ROWS
        print(f"{'mmfast Manifest, ' + kind:<34}{sizes[kind]:>9.0f}{rows / seconds:>12,.0f}"
              f"{seconds:>9.2f}{peak:>10.0f}")
    rows, seconds, peak = _read(manifests["parquet"], "whole")
    print(f"{'pyarrow read_table, parquet (whole)':<34}{sizes['parquet']:>9.0f}"
          f"{rows / seconds:>12,.0f}{seconds:>9.2f}{peak:>10.0f}")
    print(json.dumps({kind: {"rows_per_s": ROWS / s, "peak_mib": p}
                      for kind, (_, s, p) in results.items()}))
    # Streaming holds a batch, not the file: well under the whole file's records in memory
    # (a million short records as Python objects take ~1 GiB).
    assert all(peak < 200 for _, _, peak in results.values())
