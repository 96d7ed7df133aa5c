"""Text to embedding-bag ids in plain Python: the tokenizer, the n-gram hash, and
``TextHasher``'s encoding and vocabulary counts (DESIGN 3.1), which ``mmfast.ops.hash_text`` and
``mmfast.ops.count_words`` compute in C++."""

import re
from collections import Counter
from collections.abc import Iterable, Mapping

import torch

_TOKEN = re.compile(r"\w+", re.UNICODE)
_FNV_OFFSET, _FNV_PRIME = 0x811C9DC5, 0x01000193


def tokenize(text: str) -> list[str]:
    """Lower-cased word tokens (runs of letters, digits and underscores)."""
    return _TOKEN.findall(text.lower())


def fnv1a_32(text: str) -> int:
    """32-bit FNV-1a of the UTF-8 bytes: the same bucket on every run, machine and Python
    (unlike ``hash``, which is salted per process)."""
    value = _FNV_OFFSET
    for byte in text.encode("utf-8", "surrogatepass"):
        value = ((value ^ byte) * _FNV_PRIME) & 0xFFFFFFFF
    return value


def text_ids(text: str, word_ids: Mapping[str, int], buckets: int, ngrams: int) -> list[int]:
    """The text's in-vocabulary words' ids in order, then for n = 2..ngrams each word n-gram's
    ``len(word_ids) + fnv1a_32(" ".join(ngram)) % buckets`` (out-of-vocabulary words take part)."""
    words = tokenize(text)
    ids = [word_ids[word] for word in words if word in word_ids]
    base = len(word_ids)
    for n in range(2, ngrams + 1):
        for start in range(len(words) - n + 1):
            ids.append(base + fnv1a_32(" ".join(words[start:start + n])) % buckets)
    return ids


def hash_text(texts: Iterable[str], word_ids: Mapping[str, int], buckets: int,
              ngrams: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, offsets)`` for ``nn.EmbeddingBag``: ``text_ids`` of all texts end to end, and
    where each text starts."""
    flat, offsets = [], []
    for text in texts:
        offsets.append(len(flat))
        flat.extend(text_ids(text, word_ids, buckets, ngrams))
    return torch.tensor(flat, dtype=torch.long), torch.tensor(offsets, dtype=torch.long)


def count_words(texts: Iterable[str]) -> list[tuple[str, int]]:
    """Every distinct token with its count, most frequent first, then in code-point order."""
    counts = Counter(word for text in texts for word in tokenize(text))
    return sorted(counts.items(), key=lambda item: (-item[1], item[0]))

