"""``mmfast classify`` end to end (read the manifest, hash, image features from a store, model,
write the predictions) with a text model and a PQ model, beside the ``fasttext`` package's
``model.predict(texts, k=1)`` on the same texts with an equivalent model it trained.

    .venv/bin/python -m pytest benchmarks/bench_classify.py -s --benchmark-enable

The corpus is ``bench_text``'s generator (seeded, cached under ``~/.cache/mmfast``): Zipf words,
20 labels, 3-30 words per caption, a quarter leaning to the label. ``MMFAST_BENCH_CLASSIFY_DOCS``
captions (default 200,000) are classified from a JSONL manifest; the models train quickly on
the corpus' 50k other captions (bench_text's recipe: dim 50, 5 epochs, lr 0.5, word bigrams in
2M buckets, every word kept), the PQ model on seeded label-dependent 128-d image features in a
feature store too. Every run pins 2 threads. Two figures per mmfast model: the whole command
(``mmfast.cli.main``: loading the checkpoint included) and the rate it prints itself (read to
write); ``fasttext`` is timed on ``predict`` alone, its texts already in memory.

Before (the code at the start of issue #17's work, measured first), 200k captions, 2 threads,
the 2-core shared development machine: text model 41.1k items/s for the whole command (4.87 s),
49.4k items/s read to write; PQ model 36.6k (5.47 s), 43.4k read to write; ``fasttext`` predict
109k items/s (1.84 s): mmfast's text model at 0.38x of it, the PQ model at 0.35x.

After (msgspec reader, batch-wise output, the model on its own thread), the same machine while
another engineer's benchmarks kept both cores busy (so every figure is lower than on an idle
machine, fasttext's 59k included): text model 55.8k items/s whole (3.58 s, of it ~1.4 s
loading the checkpoint, whose random initialization of the 2.1M-row table before the weights
are read is most of it), 91.8k read to write; PQ model 43.3k whole, 65.3k read to write;
``fasttext`` predict 58.8k: read to write, mmfast is 1.56x (text) and 1.11x (PQ) of it. The
code before and after side by side in one run under the same load (a copy of the old tree, each
in its own process): 2 threads, read to write 8.4-10.9k -> 92-96k items/s (text, 8.8-10.9x) and
6.0-10.1k -> 65-68k (PQ); but the old code's 2 OpenMP threads stall on a busy machine, and at 1
thread the same comparison gives 28.9k -> 106.8k (3.7x, text) and 25.5k -> 79.3k (3.1x, PQ).

Now (the JSONL reader and row writer in C++, classify in three stages, the PQ model's two bags),
a quiet machine, one run: text model 409k items/s for the whole command (0.49 s; 10.0x the 41.1k
before), 435k read to write; PQ model 281k whole (0.71 s; 7.7x the 36.6k), 311k read to write;
``fasttext`` predict 88k, so mmfast is 4.65x (text) and 3.06x (PQ) of it. Runs vary by a tenth
on this machine: the text model's whole command took 0.49-0.57 s over this session's runs.

Then (feature-store reads of a run of ids as one slice, pq_encode's lane reductions, hash_text's
eight-byte slot hash and kept n-gram states), three runs, the first two on a quiet machine:
text model 456k / 436k / 406k items/s for the whole command (11.1x / 10.6x / 9.9x the 41.1k);
PQ model 363k / 357k / 320k (9.9x / 9.8x / 8.7x the 36.6k), 389k / 383k / 344k read to write;
``fasttext`` predict 118-125k in the quiet runs, 79-88k in the third.

Then (the model's forward pass over each classify batch at once, not in runs of 1024), a quiet
machine, the two codes alternated twice: PQ model 364k / 349k -> 382k / 395k items/s for the
whole command, text model 431k / 411k -> 480k / 449k. A full run after it: text model 445k
(10.8x the 41.1k), PQ model 378k (10.3x the 36.6k), 410k read to write; ``fasttext`` predict
110-119k, so mmfast is 3.7-4.0x (text) and 3.2-3.4x (PQ) of it.
"""

import json
import os
import re
import sys
import time
from pathlib import Path

import numpy as np
import pytest

from mmfast import cli
from mmfast._io import cache_dir
from mmfast.data import FeatureStore

sys.path.insert(0, str(Path(__file__).parent))
from bench_text import SETTINGS, _read, _write_corpus  # noqa: E402

DOCS = int(os.environ.get("MMFAST_BENCH_CLASSIFY_DOCS", "200000"))
IMAGE_DIM = 128
THREADS = 2
GROUP = f"classify {DOCS // 1000}k captions"


def _write_inputs(directory: Path) -> None:
    """The corpus as manifests (the captions to classify; the 50k training ones) and a feature
    store of their image features: one seeded centre per label plus noise."""
    _write_corpus(directory, DOCS)  # train.txt: DOCS captions; test.txt: 50k
    rng = np.random.default_rng(1)
    centres = rng.normal(size=(64, IMAGE_DIM)).astype(np.float32)
    ids, rows = [], []
    for source, manifest in (("train.txt", "classify.jsonl"), ("test.txt", "fit.jsonl")):
        labels, texts = _read(directory / source)
        prefix = manifest[0]
        with open(directory / manifest, "w", encoding="utf-8") as out:
            for number, (label, text) in enumerate(zip(labels, texts)):
                item = f"{prefix}{number}"
                out.write(json.dumps({"id": item, "image": f"images/{item}.jpg", "text": text,
                                      "labels": [label.removeprefix("__label__")]}) + "\n")
                ids.append(item)
        classes = np.array([int(label.removeprefix("__label__")) for label in labels])
        rows.append(centres[classes] + rng.normal(size=(len(classes), IMAGE_DIM)).astype(
            np.float32) * 1.5)
    FeatureStore.write(directory / "store", ids, {"image": np.concatenate(rows)})


def _run(*argv: str) -> str:
    """``mmfast ARGV`` in this process; its standard output."""
    import contextlib
    import io

    printed = io.StringIO()
    with contextlib.redirect_stdout(printed):
        status = cli.main(list(argv))
    assert status == 0, printed.getvalue()
    return printed.getvalue()


@pytest.fixture(scope="module")
def inputs() -> Path:
    directory = cache_dir() / f"bench-classify-v1-{DOCS}"
    if not (directory / "store" / "index.json").exists():
        directory.mkdir(parents=True, exist_ok=True)
        _write_inputs(directory)
    for model in ("text", "pq"):
        if not (directory / model / "config.json").exists():
            _run("train", "--model", model, "--train", str(directory / "fit.jsonl"),
                 "--store", str(directory / "store"), "--out", str(directory / model),
                 "--valid-fraction", "0", "--quiet", "--dim", str(SETTINGS["dim"]),
                 "--epochs", str(SETTINGS["epochs"]), "--lr", str(SETTINGS["lr"]),
                 "--ngrams", str(SETTINGS["ngrams"]), "--buckets", str(SETTINGS["buckets"]))
    return directory


_RATE = re.compile(r"classified (\d+) items in [\d.]+ s \(([\d,]+) items/s\)")


@pytest.mark.parametrize("model", ["text", "pq"])
def test_classify(benchmark, record, inputs, tmp_path, two_threads, model):
    """The whole command, three runs; the best run's own read-to-write rate printed."""
    record(benchmark, f"{GROUP}, {model} model", "mmfast")
    output = tmp_path / "predictions.jsonl"
    argv = ["classify", "--checkpoint", str(inputs / model), "--input",
            str(inputs / "classify.jsonl"), "--output", str(output), "--quiet", "--threads",
            str(THREADS)]
    if model == "pq":
        argv += ["--store", str(inputs / "store")]
    rates = []

    def classify():
        rates.append(_RATE.search(_run(*argv)))

    benchmark.pedantic(classify, rounds=3, iterations=1)
    count, rate = int(rates[0][1]), max(int(match[2].replace(",", "")) for match in rates)
    assert count == DOCS
    seconds = benchmark.stats.stats.min
    print(f"\nmmfast classify, {model} model: {DOCS / seconds:,.0f} items/s for the whole "
          f"command ({seconds:.2f} s), {rate:,} items/s read to write")
    benchmark.extra_info["items_per_s"] = DOCS / seconds
    benchmark.extra_info["items_per_s_read_to_write"] = rate


@pytest.fixture(scope="module")
def fasttext_model(inputs):
    fasttext = pytest.importorskip("fasttext")
    return fasttext.train_supervised(
        input=str(inputs / "test.txt"), dim=SETTINGS["dim"], epoch=SETTINGS["epochs"],
        lr=SETTINGS["lr"], wordNgrams=SETTINGS["ngrams"], bucket=SETTINGS["buckets"],
        minCount=1, thread=THREADS, verbose=0, seed=0)


@pytest.mark.parametrize("model", ["text", "pq"])
def test_fasttext_predict(benchmark, record, inputs, fasttext_model, two_threads, model):
    """``predict`` on the same captions (the peer of both groups: fastText reads no image)."""
    _, texts = _read(inputs / "train.txt")
    record(benchmark, f"{GROUP}, {model} model", "fasttext")
    start = time.perf_counter()
    benchmark.pedantic(fasttext_model.predict, (texts,), {"k": 1}, rounds=3, iterations=1)
    seconds = benchmark.stats.stats.min
    print(f"\nfasttext predict: {DOCS / seconds:,.0f} items/s ({seconds:.2f} s; three runs in "
          f"{time.perf_counter() - start:.1f} s)")
    benchmark.extra_info["items_per_s"] = DOCS / seconds
