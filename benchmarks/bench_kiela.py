"""Paper 003 on the embedded emoji data: train time and held-out accuracy of every model in one
run (table + plot), and PQ-model training throughput against the ``fasttext`` package with the
image tokens as special words, on equal threads.

    .venv/bin/python -m pytest benchmarks/bench_kiela.py -s
"""

import os
import tempfile
import time

import numpy as np
import pytest
import torch

from mmfast.train import predict
from mmfast.train.kiela import MODELS, Recipe, demo_features, fit


@pytest.fixture(scope="module")
def emoji():
    return demo_features("group")


def _held_out_accuracy(model, examples) -> float:
    """The fraction of ``examples`` whose arg max is their target. An item whose target is -100
    (no label among the model's) counts as a miss: mmfast.metrics.accuracy refuses it."""
    return float((predict(model, examples).argmax(1) == examples.targets).float().mean())


def test_models_trade_off(emoji, two_threads, tmp_path):
    data, train, heldout, train_image, heldout_image = emoji
    rows = []
    for name in MODELS:
        trained = fit(Recipe.default(name), train, train_image, data.labels,
                      False)
        examples = trained.examples(heldout, heldout_image)
        accuracy = _held_out_accuracy(trained.model, examples)
        rows.append((name, trained.stats["seconds"], accuracy))
    print(f"\n{'model':<15} {'train s':>8} {'held-out acc':>13}")
    for name, seconds, accuracy in rows:
        print(f"{name:<15} {seconds:>8.2f} {accuracy:>13.3f}")
    import matplotlib

    matplotlib.use("Agg")
    from matplotlib import pyplot

    figure, axes = pyplot.subplots(figsize=(6, 4))
    for name, seconds, accuracy in rows:
        axes.scatter(seconds, accuracy)
        axes.annotate(name, (seconds, accuracy))
    axes.set_xlabel(f"train seconds ({two_threads} threads)")
    axes.set_ylabel("held-out accuracy (emoji group)")
    out = os.environ.get("MMFAST_BENCH_PLOT", str(tmp_path / "bench_kiela.png"))
    figure.savefig(out, dpi=120)
    print(f"plot: {out}")


def _fasttext_label(label: str) -> str:
    """A label as one fastText word."""
    return label.replace(" ", "_")


def _fasttext_lines(records, tokens):
    """fastText's input format, the image tokens as special words."""
    for record, row in zip(records, tokens):
        label = _fasttext_label(record.labels[0]) if record.labels else "none"
        yield f"__label__{label} {record.text} {' '.join(f'img{t}' for t in row)}"


def test_pq_training_throughput_vs_fasttext(emoji, threads):
    fasttext = pytest.importorskip("fasttext")
    data, train, heldout, train_image, heldout_image = emoji
    recipe = Recipe.default("pq")
    trained = fit(recipe, train, train_image, data.labels, False)
    ours = recipe.epochs * len(train) / trained.stats["seconds"]
    examples = trained.examples(heldout, heldout_image)
    our_accuracy = _held_out_accuracy(trained.model, examples)

    def tokens(image):
        return trained.quantizer.tokens(torch.from_numpy(image)).tolist()

    with tempfile.NamedTemporaryFile("w", suffix=".txt", delete=False) as handle:
        handle.write("\n".join(_fasttext_lines(train, tokens(train_image))) + "\n")
    start = time.perf_counter()
    model = fasttext.train_supervised(handle.name, dim=recipe.dim, epoch=recipe.epochs,
                                      lr=recipe.lr, wordNgrams=recipe.ngrams,
                                      bucket=recipe.buckets, thread=threads, verbose=0)
    theirs = recipe.epochs * len(train) / (time.perf_counter() - start)
    os.unlink(handle.name)
    lines = [line.split(" ", 1)[1] for line in _fasttext_lines(heldout, tokens(heldout_image))]
    predicted = [labels[0].removeprefix("__label__") for labels in model.predict(lines)[0]]
    their_accuracy = float(np.mean([bool(r.labels) and p == _fasttext_label(r.labels[0])
                                    for p, r in zip(predicted, heldout)]))
    print(f"\nPQ model training on {threads} thread(s), items/s (held-out accuracy): "
          f"mmfast {ours:,.0f} ({our_accuracy:.3f}), fasttext {theirs:,.0f} "
          f"({their_accuracy:.3f}); mmfast / fasttext = {ours / theirs:.2f}x")
