"""``hash_text`` and ``count_words``: ``TextHasher``'s encoding and vocabulary counts in C++
(DESIGN 3.1), the same ids as the Python tokenizer of ``mmfast.reference.hash_text``.

The texts travel as one UTF-8 buffer. The kernel tokenizes as Python's
``re.findall(r"\\w+", text.lower())`` through ``fold_table``, which Python itself computes, so
the two agree on every character of the running Python's Unicode; the few characters whose
lower case is not one code point (U+0130, and the capital sigma, whose lower case depends on its
place in the word) send their text to the Python tokenizer. A CPU op: text is host data.
"""

import functools
import hashlib
import re
import sys
import unicodedata
from collections.abc import Sequence

import numpy as np
import torch

from mmfast import _backend, reference
from mmfast._io import atomic_path, cache_dir
from mmfast.reference.hash_text import text_ids, tokenize

_CODE_POINTS = 0x110000
_NOT_WORD, _NEEDS_PYTHON = -1, -2
_CAPITAL_SIGMA = 0x3A3  # lower() gives final or medial sigma by context


@functools.cache
def fold_table() -> torch.Tensor:
    """int32 [0x110000]: each code point's lower case where that is a word character (``\\w``
    after ``str.lower``), -1 where it is not, -2 where ``lower`` is not one code point for one.
    Computed once per Python build (its Unicode tables and ``re``) and kept in mmfast's cache:
    it took 0.1-0.2 s, a tenth of a classify run of 200k captions."""
    path = cache_dir() / "fold" / f"{_python_key()}.npy"
    try:
        fold = np.load(path)
        if fold.shape == (_CODE_POINTS,) and fold.dtype == np.int32:
            return torch.from_numpy(fold)
    except (OSError, ValueError):  # none yet, or not a table: computed (again)
        pass
    fold = _fold_table()
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        with atomic_path(path) as temporary, open(temporary, "wb") as out:
            np.save(out, fold)
    except OSError:  # a read-only cache: computed in each process
        pass
    return torch.from_numpy(fold)


def _python_key() -> str:
    """What the table depends on: the Python build and its Unicode database."""
    key = f"{sys.version} {sys.implementation.cache_tag} {unicodedata.unidata_version}"
    return hashlib.sha256(key.encode()).hexdigest()[:16]


def _fold_table() -> np.ndarray:
    """``fold_table`` computed with this Python."""
    every = np.arange(_CODE_POINTS, dtype=np.uint32).tobytes().decode("utf-32-le", "surrogatepass")
    expanding = [start + offset for start in range(0, _CODE_POINTS, 4096)
                 if len(every[start:start + 4096].lower()) != 4096  # few blocks: find the chars
                 for offset, char in enumerate(every[start:start + 4096]) if len(char.lower()) != 1]
    aligned = list(every)
    for code in expanding:
        aligned[code] = "\0"
    lowered = "".join(aligned).lower()
    fold = np.full(_CODE_POINTS, _NOT_WORD, dtype=np.int32)
    codes = np.frombuffer(lowered.encode("utf-32-le", "surrogatepass"), dtype=np.uint32)
    for match in re.finditer(r"\w+", lowered):
        fold[match.start():match.end()] = codes[match.start():match.end()]
    fold[expanding + [_CAPITAL_SIGMA]] = _NEEDS_PYTHON
    return fold


def pack_texts(texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    """``(text, offsets)``: the texts' UTF-8 bytes end to end (uint8) and the [n + 1] offsets
    where each starts, the last the byte count. Each text keeps a NUL after it (a non-word
    character, so its tokens are unchanged): one join makes them all."""
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        _check_texts(texts)
    if not texts:
        return torch.empty(0, dtype=torch.uint8), torch.zeros(1, dtype=torch.long)
    try:
        joined = "\0".join(texts) + "\0"
    except TypeError:  # not all strings: say which
        _check_texts(texts)
        raise
    encoded = joined.encode("utf-8", "surrogatepass")
    text = torch.frombuffer(bytearray(encoded), dtype=torch.uint8)
    if len(encoded) == len(joined):  # ASCII: a text's bytes are its characters
        lengths = np.fromiter(map(len, texts), dtype=np.int64, count=len(texts)) + 1
    else:  # the NULs end the texts, unless a text holds NULs itself: then measure each one
        ends = np.flatnonzero(np.frombuffer(encoded, dtype=np.uint8) == 0) + 1
        lengths = (np.diff(ends, prepend=0) if len(ends) == len(texts) else np.array(
            [len(t.encode("utf-8", "surrogatepass")) + 1 for t in texts], dtype=np.int64))
    offsets = np.zeros(len(texts) + 1, dtype=np.int64)
    np.cumsum(lengths, out=offsets[1:])
    return text, torch.from_numpy(offsets)


class PackedTexts(Sequence):
    """Texts with their UTF-8 buffer (``pack_texts``) made once: a sequence of the same strings
    that ``count_words``, ``hash_text`` (and ``TextHasher.build`` and ``encode``) read without
    packing them again. Counting a corpus' words and then encoding it packs it once instead of
    twice (a third of a second per million captions)."""

    def __init__(self, texts: Sequence[str]):
        self.texts = texts if isinstance(texts, Sequence) else list(texts)
        self.bytes, self.offsets = pack_texts(self.texts)  # a TypeError for a str or non-str

    def __len__(self) -> int:
        return len(self.texts)

    def __getitem__(self, index):
        return self.texts[index]


def _packed(texts: Sequence[str]) -> tuple[torch.Tensor, torch.Tensor]:
    return (texts.bytes, texts.offsets) if isinstance(texts, PackedTexts) else pack_texts(texts)


def _check_texts(texts) -> None:
    if isinstance(texts, str) or not isinstance(texts, Sequence):
        raise TypeError(f"hash_text: texts must be a sequence of strings, got "
                        f"{type(texts).__name__}")
    for index, text in enumerate(texts):
        if not isinstance(text, str):
            raise TypeError(f"hash_text: texts must be strings, got {type(text).__name__} at "
                            f"index {index}")


class PackedVocabulary:
    """A vocabulary's words as the kernel reads them: UTF-8 end to end, offsets, and the
    open-addressing table it probes. Build once per vocabulary; ``hash_text`` takes it as is."""

    def __init__(self, words: Sequence[str]):
        self.words = list(words)
        self.bytes, self.offsets = pack_texts(self.words)
        # pack_texts keeps a NUL after each word: drop them, so a word is its bytes alone
        keep = torch.ones(len(self.bytes), dtype=torch.bool)
        keep[self.offsets[1:] - 1] = False
        self.bytes = self.bytes[keep]
        self.offsets = self.offsets - torch.arange(len(self.offsets))
        self.table = torch.ops.mmfast._text_vocabulary_table(self.bytes, self.offsets)

    def __len__(self) -> int:
        return len(self.words)

    @functools.cached_property
    def word_ids(self) -> dict[str, int]:
        """word -> index, for the Python tokenizer's texts."""
        return {word: i for i, word in enumerate(self.words)}


def hash_text(texts: Sequence[str], vocabulary: PackedVocabulary, buckets: int,
              ngrams: int) -> tuple[torch.Tensor, torch.Tensor]:
    """``(ids, offsets)`` of ``texts`` for ``nn.EmbeddingBag``, as
    ``mmfast.reference.hash_text.hash_text`` gives them: each text's in-vocabulary words' ids
    (their index in ``vocabulary``) in order, then for n = 2..``ngrams`` every word n-gram's
    ``len(vocabulary) + fnv1a_32(" ".join(ngram)) % buckets``; ``offsets`` [n] is where each
    text's ids start. Multi-threaded over the texts (``torch.get_num_threads()``)."""
    if not isinstance(vocabulary, PackedVocabulary):
        raise TypeError(f"hash_text: vocabulary must be a PackedVocabulary, got "
                        f"{type(vocabulary).__name__}")
    for name, value, low in (("ngrams", ngrams, 1), ("buckets", buckets, 0)):
        if isinstance(value, bool) or not isinstance(value, int) or value < low:
            raise ValueError(f"hash_text: {name} must be an integer >= {low}, got {value!r}")
    if ngrams > 1 and buckets < 1:
        raise ValueError(f"hash_text: buckets must be >= 1 when ngrams > 1, got {buckets}")
    if _backend.use_reference():
        _check_texts(texts)
        return reference.hash_text(texts, vocabulary.word_ids, buckets, ngrams)
    text, text_offsets = _packed(texts)
    ids, offsets, fallback = torch.ops.mmfast.hash_text(
        text, text_offsets, fold_table(), vocabulary.bytes, vocabulary.offsets, vocabulary.table,
        buckets, ngrams)
    if bool(fallback.any()):
        ids, offsets = _with_python_texts(texts, ids, offsets, fallback, vocabulary, buckets,
                                          ngrams)
    return ids, offsets


def _with_python_texts(texts, ids, offsets, fallback, vocabulary, buckets, ngrams):
    """The kernel's output with the ids of the texts it left to Python (``fallback``) put in."""
    per_text = list(torch.tensor_split(ids, offsets[1:]))
    for index in torch.nonzero(fallback).flatten().tolist():
        per_text[index] = torch.tensor(
            text_ids(texts[index], vocabulary.word_ids, buckets, ngrams), dtype=torch.long)
    sizes = torch.tensor([len(part) for part in per_text], dtype=torch.long)
    return torch.cat(per_text), torch.cumsum(sizes, 0) - sizes


def count_words(texts: Sequence[str]) -> list[tuple[str, int]]:
    """Every distinct token of ``texts`` with its count, most frequent first, then in
    code-point order (``mmfast.reference.hash_text.count_words``)."""
    if _backend.use_reference():
        _check_texts(texts)
        return reference.count_words(texts)
    text, text_offsets = _packed(texts)
    words, word_offsets, counts, fallback = torch.ops.mmfast.count_words(text, text_offsets,
                                                                         fold_table())
    raw, bounds = words.numpy().tobytes(), word_offsets.tolist()
    counted = [(raw[bounds[i]:bounds[i + 1]].decode("utf-8", "surrogatepass"), n)
               for i, n in enumerate(counts.tolist())]
    if bool(fallback.any()):
        totals = dict(counted)
        for index in torch.nonzero(fallback).flatten().tolist():
            for word in tokenize(texts[index]):
                totals[word] = totals.get(word, 0) + 1
        counted = sorted(totals.items(), key=lambda item: (-item[1], item[0]))
    return counted


@torch.library.register_fake("mmfast::hash_text")
def _(text, text_offsets, fold, vocabulary, vocabulary_offsets, vocabulary_table, buckets, ngrams):
    count = text_offsets.shape[0] - 1
    nnz = torch.library.get_ctx().new_dynamic_size()
    return (text_offsets.new_empty((nnz,)), text_offsets.new_empty((count,)),
            text_offsets.new_empty((count,), dtype=torch.bool))


@torch.library.register_fake("mmfast::_text_vocabulary_table")
def _(vocabulary, vocabulary_offsets):
    slots = 2
    while slots < 2 * (vocabulary_offsets.shape[0] - 1):
        slots *= 2
    return vocabulary_offsets.new_empty((slots,))


@torch.library.register_fake("mmfast::count_words")
def _(text, text_offsets, fold):
    ctx = torch.library.get_ctx()
    size, distinct = ctx.new_dynamic_size(), ctx.new_dynamic_size()
    return (text.new_empty((size,)), text_offsets.new_empty((distinct + 1,)),
            text_offsets.new_empty((distinct,)),
            text_offsets.new_empty((text_offsets.shape[0] - 1,), dtype=torch.bool))
