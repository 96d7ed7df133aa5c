"""Scaling out on this machine: ``mmfast features``, ``train`` and ``classify`` in one process
against two torchrun processes, one thread each, wall time of the whole command (process
start and torch import included, as a user sees it) and the parallel efficiency
(one process's time / (2 x two processes' time)).

    .venv/bin/python -m pytest benchmarks/bench_scaling.py -s

Inputs: the demo's 1,884 emoji images (96 px, EfficientNet-Lite0) for features; a generated
manifest of ``MMFAST_BENCH_SCALING_DOCS`` (default 200,000) 5-30-word documents of 20 labels
(seeded, cached under ``~/.cache/mmfast``) for training the text model (5 epochs, bigrams) and
the additive fusion (on the emoji, DistributedDataParallel), and for classifying with the
text model.
"""

import json
import os
import re
import subprocess
import sys
import time

import numpy as np
import pytest

from mmfast._io import cache_dir
from mmfast.data import emoji_dataset, read_manifest, write_manifest

DOCS = int(os.environ.get("MMFAST_BENCH_SCALING_DOCS", "200000"))
ENV = {**os.environ, "OMP_NUM_THREADS": "1"}


@pytest.fixture(scope="module")
def inputs(tmp_path_factory):
    directory = cache_dir() / f"bench-scaling-v1-{DOCS}"
    documents = directory / "documents.jsonl"
    if not documents.exists():
        directory.mkdir(parents=True, exist_ok=True)
        rng = np.random.default_rng(0)
        words = np.array([f"w{n}" for n in range(50_000)])
        labels = rng.integers(0, 20, DOCS)
        with open(documents.with_suffix(".tmp"), "w") as out:
            for n, label in enumerate(labels):
                size = int(rng.integers(5, 31))
                picks = rng.zipf(1.3, size) % len(words)
                picks[: size // 4] = label * 100 + rng.integers(0, 100, size // 4)  # leaning
                out.write(json.dumps({"id": f"d{n}", "text": " ".join(words[picks]),
                                      "labels": [f"c{label}"]}) + "\n")
        documents.with_suffix(".tmp").rename(documents)
    root = tmp_path_factory.mktemp("scaling")
    data = emoji_dataset("group")
    emoji = root / "emoji.jsonl"
    write_manifest(emoji, read_manifest(data.train) + read_manifest(data.heldout))
    return {"documents": str(documents), "emoji": str(emoji), "root": root}


def _run(argv: list[str], processes: int) -> float:
    command = [sys.executable, "-m", "mmfast", *argv] if processes == 1 else [
        sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc-per-node",
        str(processes), "-m", "mmfast", *argv]
    start = time.perf_counter()
    result = subprocess.run(command, capture_output=True, text=True, env=ENV)
    assert result.returncode == 0, result.stderr[-3000:]
    return time.perf_counter() - start


def test_scaling_from_one_to_two_processes(inputs):
    root = inputs["root"]
    store = str(root / "store")
    jobs = {
        "features (1,884 images)": lambda tag: [
            "features", "--manifest", inputs["emoji"], "--store", f"{store}-{tag}", "--quiet",
            "--threads", "1"],
        f"train text ({DOCS:,} docs, 5 epochs)": lambda tag: [
            "train", "--train", inputs["documents"], "--model", "text", "--epochs", "5",
            "--ngrams", "2", "--out", str(root / f"text-{tag}"), "--quiet", "--threads", "1"],
        "train additive (1,884 emoji, DDP)": lambda tag: [
            "train", "--train", inputs["emoji"], "--store", f"{store}-1", "--model", "additive",
            "--epochs", "10", "--out", str(root / f"additive-{tag}"), "--quiet",
            "--threads", "1"],
        f"classify text ({DOCS:,} docs)": lambda tag: [
            "classify", "--checkpoint", str(root / "text-1"), "--input", inputs["documents"],
            "--output", str(root / f"predictions-{tag}.jsonl"), "--quiet", "--threads", "1"],
    }
    print(f"\n{'job':<36}{'1 process s':>12}{'2 processes s':>15}{'speed-up':>10}"
          f"{'efficiency':>12}")
    results = {}
    for job, argv in jobs.items():
        one = _run(argv("1"), 1)
        two = _run(argv("2"), 2)
        results[job] = (one, two)
        print(f"{job:<36}{one:>12.1f}{two:>15.1f}{one / two:>9.2f}x{one / (2 * two):>11.0%}")
    predictions = [root / f"predictions-{tag}.jsonl" for tag in ("1", "2")]
    assert sorted(predictions[0].read_text().splitlines()) == \
        sorted(predictions[1].read_text().splitlines())
    print(json.dumps({re.sub(r" \(.*", "", job): {"one": one, "two": two}
                      for job, (one, two) in results.items()}))
