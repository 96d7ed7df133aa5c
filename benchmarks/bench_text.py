"""Text end to end: ``hash_text`` against ``TextHasher``'s Python encoding, and training a
fastText model from its text file (read + vocabulary + hash + train) against the ``fasttext``
package, on a generated corpus of a million documents; held-out accuracy beside each.

    .venv/bin/python -m pytest benchmarks/bench_text.py -s

The corpus (seeded, cached under ``~/.cache/mmfast``): a Zipf vocabulary of 100k made-up words,
20 labels with a skewed prior, and 3-30 words per document, a quarter of them drawn from 200
words that lean to the document's label. Both sides train the same model: dim 50, 5 epochs,
lr 0.5 decaying linearly, word bigrams in 2M hash buckets, every word kept, 2 threads.
``MMFAST_BENCH_TEXT_DOCS`` sets the corpus size (default 1,000,000).

Measured on the 2-core development machine, idle, two runs: mmfast 9.17 s and 9.23 s (held-out
accuracy 0.9260, 0.9262) against the ``fasttext`` package's 18.81 s and 18.58 s (0.9269,
0.9266): 2.05x and 2.01x. Of mmfast's ~9 s: reading the file 0.5 s, packing the texts 0.3 s,
counting the words 0.5 s, hashing 0.6 s, building the model 0.2 s, training 6.6 s (Hogwild SGD
1.3 s an epoch). Before the bag blocks, the masked row tails, the aminmax divergence check and
the single table init, the same run took 13.5 s (1.36x).
"""

import os
import time

import numpy as np
import pytest
import torch

from mmfast import reference
from mmfast._io import cache_dir
from mmfast.nn import FastText, TextHasher
from mmfast.ops import PackedTexts
from mmfast.train.fasttext import Examples, predict, train

DOCS = int(os.environ.get("MMFAST_BENCH_TEXT_DOCS", "1000000"))
TEST_DOCS = 50_000
LABELS, VOCABULARY, LEANING_WORDS = 20, 100_000, 200
SETTINGS = {"dim": 50, "epochs": 5, "lr": 0.5, "ngrams": 2, "buckets": 2_000_000}
THREADS = 2


def _words(rng: np.random.Generator, count: int) -> np.ndarray:
    """``count`` distinct made-up lower-case words of 2-4 syllables."""
    syllables = np.array([c + v for c in "bcdfghjklmnprstvz" for v in "aeiou"] + ["qu", "th"])
    words: dict[str, None] = {}
    while len(words) < count:
        sizes = rng.integers(2, 5, count)
        picks = rng.integers(0, len(syllables), (count, 4))
        for size, row in zip(sizes, picks):
            words.setdefault("".join(syllables[row[:size]]), None)
    return np.array(list(words)[:count])


def _write_corpus(directory, docs: int, seed: int = 0) -> None:
    rng = np.random.default_rng(seed)
    words = _words(rng, VOCABULARY)
    zipf = 1.0 / np.arange(1, VOCABULARY + 1) ** 1.07
    zipf /= zipf.sum()
    prior = 1.0 / np.arange(1, LABELS + 1) ** 0.8
    prior /= prior.sum()
    leaning = rng.integers(100, 20_000, (LABELS, LEANING_WORDS))  # mid-frequency words
    for name, count in (("train.txt", docs), ("test.txt", TEST_DOCS)):
        labels = rng.choice(LABELS, count, p=prior)
        lengths = rng.integers(3, 31, count)
        total = int(lengths.sum())
        common = rng.choice(VOCABULARY, total, p=zipf)
        owner = np.repeat(labels, lengths)
        leaned = leaning[owner, rng.integers(0, LEANING_WORDS, total)]
        tokens = words[np.where(rng.random(total) < 0.25, leaned, common)]
        ends = np.cumsum(lengths)
        lines = [f"__label__{label} " + " ".join(tokens[end - size:end])
                 for label, size, end in zip(labels, lengths, ends)]
        with open(directory / name, "w", encoding="utf-8") as out:
            out.write("\n".join(lines) + "\n")


@pytest.fixture(scope="module")
def corpus():
    directory = cache_dir() / f"bench-text-v1-{DOCS}"
    if not (directory / "test.txt").exists():
        directory.mkdir(parents=True, exist_ok=True)
        _write_corpus(directory, DOCS)
    return directory


def _read(path) -> tuple[list[str], list[str]]:
    """(labels, texts) of a fastText-format file: one ``__label__X text`` per line."""
    with open(path, encoding="utf-8") as source:
        lines = source.read().splitlines()
    labels, texts = [], []
    for line in lines:
        label, _, text = line.partition(" ")
        labels.append(label)
        texts.append(text)
    return labels, texts


def _targets(labels: list[str], names: dict[str, int]) -> torch.Tensor:
    return torch.tensor([names.get(label, -100) for label in labels], dtype=torch.long)


def _train_mmfast(path) -> tuple:
    """What a user's end-to-end run does: read the file, build the vocabulary, hash, train."""
    labels, texts = _read(path)
    texts = PackedTexts(texts)  # one UTF-8 buffer, counted and then encoded
    hasher = TextHasher.build(texts, buckets=SETTINGS["buckets"], ngrams=SETTINGS["ngrams"])
    names = {label: index for index, label in enumerate(sorted(set(labels)))}
    words, offsets = hasher.encode(texts)
    model = FastText(hasher.num_embeddings, SETTINGS["dim"], len(names))
    train(model, Examples(words, offsets, None, _targets(labels, names)),
          epochs=SETTINGS["epochs"], lr=SETTINGS["lr"])
    return model, hasher, names


def _mmfast_accuracy(trained, path) -> float:
    model, hasher, names = trained
    labels, texts = _read(path)
    words, offsets = hasher.encode(texts)
    predicted = predict(model, Examples(words, offsets, None)).argmax(1)
    return float((predicted == _targets(labels, names)).float().mean())


def _train_fasttext(path):
    import fasttext

    return fasttext.train_supervised(
        input=str(path), dim=SETTINGS["dim"], epoch=SETTINGS["epochs"], lr=SETTINGS["lr"],
        wordNgrams=SETTINGS["ngrams"], bucket=SETTINGS["buckets"], minCount=1,
        thread=THREADS, verbose=0, seed=0)


def _fasttext_accuracy(model, path) -> float:
    labels, texts = _read(path)
    predicted, _ = model.predict(texts, k=1)
    return float(np.mean([p[0] == label for p, label in zip(predicted, labels)]))


@pytest.mark.parametrize("impl", ["mmfast", "fasttext"])
def test_train_from_the_text_file(benchmark, record, corpus, two_threads, impl):
    """Read + vocabulary + hash + train on the corpus, once (a run takes seconds)."""
    if impl == "fasttext":
        pytest.importorskip("fasttext")
    run, score = ((_train_mmfast, _mmfast_accuracy) if impl == "mmfast"
                  else (_train_fasttext, _fasttext_accuracy))
    record(benchmark, f"train from text {DOCS // 1000}k docs", impl)
    start = time.perf_counter()
    trained = benchmark.pedantic(run, (corpus / "train.txt",), rounds=1, iterations=1)
    print(f"\n{impl}: {DOCS:,} documents x {SETTINGS['epochs']} epochs in "
          f"{time.perf_counter() - start:.2f} s, held-out accuracy "
          f"{score(trained, corpus / 'test.txt'):.4f}")


HASH_DOCS = 100_000


@pytest.fixture(scope="module")
def hash_problem(corpus):
    _, texts = _read(corpus / "test.txt")
    texts = (texts * (HASH_DOCS // len(texts) + 1))[:HASH_DOCS]
    return texts, TextHasher.build(texts, buckets=SETTINGS["buckets"], ngrams=SETTINGS["ngrams"])


def test_hash_text(benchmark, record, hash_problem, two_threads):
    texts, hasher = hash_problem
    record(benchmark, f"encode {HASH_DOCS // 1000}k docs, bigrams", "mmfast")
    benchmark(hasher.encode, texts)


def test_hash_text_reference(benchmark, record, hash_problem, two_threads):
    texts, hasher = hash_problem
    record(benchmark, f"encode {HASH_DOCS // 1000}k docs, bigrams", "reference")
    benchmark.pedantic(reference.hash_text, (texts, hasher.word_ids, hasher.buckets,
                                             hasher.ngrams), rounds=2, iterations=1)


def test_count_words(benchmark, record, hash_problem, two_threads):
    texts, _ = hash_problem
    record(benchmark, f"vocabulary of {HASH_DOCS // 1000}k docs", "mmfast")
    benchmark(TextHasher.build, texts, 1, SETTINGS["buckets"], SETTINGS["ngrams"])


def test_count_words_reference(benchmark, record, hash_problem, two_threads):
    texts, _ = hash_problem
    record(benchmark, f"vocabulary of {HASH_DOCS // 1000}k docs", "reference")
    benchmark.pedantic(reference.count_words, (texts,), rounds=2, iterations=1)
