"""fastText-style text classification (Joulin et al.; Kiela et al., paper 003).

Text becomes a bag of ids: in-vocabulary words plus hashed word n-grams (n = 2..ngrams) in
``buckets`` extra rows, as fastText does. The model averages their embeddings (``U x_t``) and
applies a linear classifier ``W``.
"""

import functools
from collections.abc import Iterable, Sequence

import torch
from torch import nn

from mmfast.ops._checks import check_ids
from mmfast.ops.hash_text import PackedVocabulary, count_words, hash_text
from mmfast.reference.hash_text import fnv1a_32, tokenize  # noqa: F401  (this module's API too)


class TextHasher:
    """Maps text to embedding-bag ids: vocabulary words to ``[0, len(vocabulary))``, word
    n-grams to ``len(vocabulary) + fnv1a_32(" ".join(ngram)) % buckets``. Out-of-vocabulary
    words are dropped (they still take part in n-grams), as in fastText."""

    def __init__(self, vocabulary: Sequence[str], buckets: int = 200_000, ngrams: int = 2):
        if buckets < 0 or (ngrams > 1 and buckets == 0):
            raise ValueError(f"TextHasher: buckets must be > 0 when ngrams > 1, got {buckets}")
        if ngrams < 1:
            raise ValueError(f"TextHasher: ngrams must be >= 1, got {ngrams}")
        self.vocabulary = list(vocabulary)
        if len(set(self.vocabulary)) != len(self.vocabulary):
            raise ValueError("TextHasher: vocabulary has repeated words")
        self.buckets = buckets if ngrams > 1 else 0
        self.ngrams = ngrams

    @classmethod
    def build(cls, texts: Iterable[str], min_count: int = 1, buckets: int = 200_000,
              ngrams: int = 2) -> "TextHasher":
        """Vocabulary of the words seen at least ``min_count`` times, most frequent first (then
        in code-point order), counted by ``mmfast.ops.count_words``."""
        texts = texts if isinstance(texts, Sequence) else list(texts)
        return cls.from_counts(count_words(texts), min_count, buckets, ngrams)

    @classmethod
    def from_counts(cls, counts: Iterable[tuple[str, int]], min_count: int = 1,
                    buckets: int = 200_000, ngrams: int = 2) -> "TextHasher":
        """``build``'s hasher from ``(word, count)`` pairs in ``count_words``' order (e.g. the
        ranks' counts merged)."""
        return cls([word for word, count in counts if count >= min_count], buckets, ngrams)

    @property
    def num_embeddings(self) -> int:
        return len(self.vocabulary) + self.buckets

    @functools.cached_property
    def packed(self) -> PackedVocabulary:
        """The vocabulary as ``mmfast.ops.hash_text`` reads it, built on first use."""
        return PackedVocabulary(self.vocabulary)

    @property
    def word_ids(self) -> dict[str, int]:
        """word -> id."""
        return self.packed.word_ids

    def ids(self, text: str) -> list[int]:
        return self.encode([text])[0].tolist()

    def encode(self, texts: Iterable[str]) -> tuple[torch.Tensor, torch.Tensor]:
        """``(ids, offsets)`` for ``nn.EmbeddingBag``: ids of all texts end to end, and where
        each text starts (``mmfast.ops.hash_text``)."""
        texts = texts if isinstance(texts, Sequence) else list(texts)
        return hash_text(texts, self.packed, self.buckets, self.ngrams)

    def config(self) -> dict:
        return {"vocabulary": self.vocabulary, "buckets": self.buckets, "ngrams": self.ngrams}

    @classmethod
    def from_config(cls, config: dict) -> "TextHasher":
        return cls(config["vocabulary"], config["buckets"], config["ngrams"])


# Blocks of a table initialized in parallel, each from its own generator: a fixed count, so the
# values depend on the seed alone, not on the threads.
_INIT_BLOCKS = 16


def _uniform_in_blocks_(table: torch.Tensor, bound: float) -> None:
    """``table`` filled uniform in [-bound, bound], its blocks on ``torch.get_num_threads()``
    threads, each block's generator seeded from torch's global one (``torch.manual_seed``
    still decides the values). CPU ``uniform_`` runs on one thread: 0.29 s for a 2M x 50 table
    here, against 0.15 s on two threads so."""
    table = table.detach()  # filled in place, outside autograd, on any thread
    if table.device.type != "cpu" or table.numel() < 1 << 20:
        table.uniform_(-bound, bound)
        return
    from concurrent.futures import ThreadPoolExecutor

    seeds = torch.randint(0, 2**62, (_INIT_BLOCKS,)).tolist()
    blocks = table.view(-1).tensor_split(_INIT_BLOCKS)

    def fill(index: int) -> None:
        blocks[index].uniform_(-bound, bound,
                               generator=torch.Generator().manual_seed(seeds[index]))

    with ThreadPoolExecutor(torch.get_num_threads()) as pool:
        list(pool.map(fill, range(_INIT_BLOCKS)))


class FastText(nn.Module):
    """Text only: ``W U x_t`` with ``x_t`` the normalized bag of word and n-gram ids.

    ``forward(words, offsets, image=None)`` takes the ``TextHasher.encode`` pair; ``image`` is
    accepted and ignored so every paper-003 model has one call signature. Initialized as
    fastText: ``U`` uniform in ``[-1/dim, 1/dim]``, ``W`` zero.
    """

    def __init__(self, num_embeddings: int, dim: int, num_classes: int):
        super().__init__()
        for name, value in (("num_embeddings", num_embeddings), ("dim", dim),
                            ("num_classes", num_classes)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"{type(self).__name__}: {name} must be an integer >= 1, "
                                 f"got {value!r}")
        self.num_embeddings, self.dim, self.num_classes = num_embeddings, dim, num_classes
        # sparse: an SGD step touches only the rows a batch used, as fastText's updates do. The
        # table is given uninitialized: EmbeddingBag's own normal init, overwritten just below,
        # cost 0.5 s of a 2M-row table.
        self.embedding = nn.EmbeddingBag(num_embeddings, dim, mode="mean", sparse=True,
                                         _weight=torch.empty(num_embeddings, dim))
        self.classifier = nn.Linear(dim, num_classes)
        _uniform_in_blocks_(self.embedding.weight, 1.0 / dim)
        nn.init.zeros_(self.classifier.weight)
        nn.init.zeros_(self.classifier.bias)

    def text_hidden(self, words: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """``U x_t`` [B, dim]; an empty text gives zeros."""
        check_bags(type(self).__name__, words, offsets, self.num_embeddings)
        return self.embedding(words, offsets)

    def bags(self, words: torch.Tensor, offsets: torch.Tensor, image: torch.Tensor | None = None
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor | None]:
        """The embedding-bag inputs of the hidden layer, checked: ``(ids, offsets,
        per_sample_weights)``, the weights None for the bag mean. The fused trainer
        (``mmfast.ops.fasttext_sgd_``) feeds the model through these."""
        check_bags(type(self).__name__, words, offsets, self.num_embeddings)
        return words, offsets, None

    def forward(self, words: torch.Tensor, offsets: torch.Tensor,
                image: torch.Tensor | None = None) -> torch.Tensor:
        return self.classifier(self.text_hidden(words, offsets))

    def config(self) -> dict:
        return {"num_embeddings": self.num_embeddings, "dim": self.dim,
                "num_classes": self.num_classes}


def check_bags(name: str, words, offsets, num_embeddings: int) -> None:
    """Embedding-bag inputs: 1-d int64 ids in range, 1-d int64 offsets starting at 0."""
    for arg, value in (("words", words), ("offsets", offsets)):
        if not isinstance(value, torch.Tensor) or value.dim() != 1 or value.dtype != torch.long:
            got = (f"{value.dtype} tensor of shape {tuple(value.shape)}"
                   if isinstance(value, torch.Tensor) else type(value).__name__)
            raise TypeError(f"{name}: {arg} must be a 1-d int64 tensor, got {got}")
    if offsets.numel() and int(offsets[0]) != 0:
        raise ValueError(f"{name}: offsets must start at 0, got {int(offsets[0])}")
    check_ids(name, "words must be ids", words, num_embeddings)

