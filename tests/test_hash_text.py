"""hash_text and count_words (TextHasher in C++) against the Python tokenizer and n-gram hash:
the same ids and counts on unicode-heavy text, every thread count, opcheck, bad input."""

import random

import pytest
import torch
from torch.library import opcheck

import mmfast
from mmfast import reference
from mmfast.nn import TextHasher
from mmfast.ops import PackedTexts, count_words, hash_text
from mmfast.ops.hash_text import PackedVocabulary, fold_table, pack_texts

# Characters Python's lower() and \w treat unusually: a dotted capital I (two code points lower),
# capital sigmas (final or medial by context), German sharp s, the Kelvin sign, titlecase digraphs,
# ligatures, combining marks (not \w), digits of other scripts, superscripts (\w: numeric), CJK,
# emoji, an unpaired surrogate, NUL and other controls, and word-joining underscores.
TRICKY = [
    "", "   ", "Red apple PIE", "İstanbul'da İİ", "ΟΔΟΣ ΣΊΣΥΦΟΣ σίσυφος ΣΑΣ", "Σ", "Straße STRASSE",
    "\u212a kelvin", "ǅemal ǈ", "ﬃ ﬁne", "e\u0301te\u0301 naïve", "٣٤٥ ²³ ⅷ 12_34", "日本語のテキスト",
    "🙂 smile 🙂🙂 ok", "a\ud800b", "a\0b\0\0c", "tab\tnew\nline\r", "snake_case __init__ _",
    "ÀÉÎÕÜ àéîõü", "Ǆ ǆ ǅ", "ᾈ ᾀ", "ΐ", "ﬀ", "\U0001d400\U0001d7ce", "x" * 300,
]


def _random_texts(count, seed):
    """Texts of words drawn from many scripts, with punctuation, digits and case mixed."""
    rng = random.Random(seed)
    pools = ["abcdefghijklmnopqrstuvwxyzABCDEFGHIJKLMNOPQRSTUVWXYZ", "0123456789_",
             "àéîõüÀÉÎÕÜßſİıΣσςΑΒΓαβγЖжЯя", "日本語中文한국어", "٣٤٥²³ⅷ", " .,;!?-'\"()\t\n",
             "\u0301\u0308\u200d", "🙂🚀", "ǅǈǋﬃﬁ\u212a"]
    texts = []
    for _ in range(count):
        size = rng.randrange(0, 40)
        texts.append("".join(rng.choice(rng.choice(pools)) for _ in range(size)))
    return texts


def _vocabulary(texts, drop_every=3):
    """The texts' words in reference order, every ``drop_every``-th left out (out of
    vocabulary)."""
    words = [word for word, _ in reference.count_words(texts)]
    return [word for index, word in enumerate(words) if index % drop_every]


def _word_ids(words):
    return {word: index for index, word in enumerate(words)}


def test_fold_table_is_pythons_lower_and_word_class():
    fold = fold_table()
    assert fold.dtype == torch.int32 and fold.shape == (0x110000,)
    assert fold[ord("A")] == ord("a") and fold[ord("_")] == ord("_") and fold[ord("7")] == ord("7")
    assert fold[ord(" ")] == -1 and fold[0] == -1 and fold[0x301] == -1  # a combining mark
    assert fold[0x212A] == ord("k")  # the Kelvin sign lowers to k
    assert fold[0x130] == -2 and fold[0x3A3] == -2  # left to Python
    for char in "ßΣσ日٣²ⅷ🙂\u200d":
        lowered = char.lower()
        expected = -2 if char == "Σ" else (ord(lowered) if lowered.isalnum() else -1)
        assert fold[ord(char)] == expected, char


def test_fold_table_is_cached_per_python_and_recomputed_when_unreadable(tmp_path, monkeypatch):
    import importlib

    import numpy as np

    module = importlib.import_module("mmfast.ops.hash_text")  # the module, not the op
    monkeypatch.setenv("MMFAST_CACHE", str(tmp_path))
    computed = module._fold_table()
    for content in (None, b"not a table", None):  # none, a foreign file, then the cached one
        module.fold_table.cache_clear()
        cached = tmp_path / "fold" / f"{module._python_key()}.npy"
        if content is not None:
            cached.write_bytes(content)
        assert np.array_equal(module.fold_table().numpy(), computed)
        assert np.array_equal(np.load(cached), computed)
    module.fold_table.cache_clear()


@pytest.mark.parametrize("ngrams", [1, 2, 3])
@pytest.mark.parametrize("texts", [TRICKY, _random_texts(700, seed=0)], ids=["tricky", "random"])
def test_ids_match_the_python_tokenizer(texts, ngrams):
    words = _vocabulary(texts)
    ids, offsets = hash_text(texts, PackedVocabulary(words), 1000, ngrams)
    expected_ids, expected_offsets = reference.hash_text(texts, _word_ids(words), 1000, ngrams)
    assert torch.equal(offsets, expected_offsets)
    assert torch.equal(ids, expected_ids)


@pytest.mark.parametrize("buckets", [1, 7, 2_000_000, 2**31 - 1, 2**32 - 1, 2**32, 2**40])
def test_every_bucket_count_takes_the_hash_modulo_it(buckets):
    """The kernel's remainder by multiplication is exact for every 32-bit divisor; from 2^32
    on the hash is its own bucket."""
    texts = _random_texts(300, seed=2)
    words = _vocabulary(texts)[:50]  # most words out of the vocabulary: all n-grams hashed
    ids, _ = hash_text(texts, PackedVocabulary(words), buckets, 3)
    expected, _ = reference.hash_text(texts, _word_ids(words), buckets, 3)
    assert torch.equal(ids, expected)


def test_every_thread_count_gives_the_same_ids():
    texts = _random_texts(2000, seed=1)  # several blocks of texts per thread
    vocabulary = PackedVocabulary(_vocabulary(texts))
    threads = torch.get_num_threads()
    try:
        results = []
        for count in (1, 2, 3):
            torch.set_num_threads(count)
            results.append(hash_text(texts, vocabulary, 50, 2))
    finally:
        torch.set_num_threads(threads)
    for ids, offsets in results[1:]:
        assert torch.equal(ids, results[0][0]) and torch.equal(offsets, results[0][1])


@pytest.mark.parametrize("texts", [TRICKY, _random_texts(1500, seed=2)], ids=["tricky", "random"])
def test_counts_match_the_python_counter(texts):
    assert count_words(texts) == reference.count_words(texts)


def test_text_hasher_builds_and_encodes_as_the_reference():
    texts = _random_texts(300, seed=3) + TRICKY
    hasher = TextHasher.build(texts, min_count=2, buckets=97, ngrams=2)
    counted = reference.count_words(texts)
    assert hasher.vocabulary == [word for word, count in counted if count >= 2]
    ids, offsets = hasher.encode(texts)
    expected = reference.hash_text(texts, hasher.word_ids, 97, 2)
    assert torch.equal(ids, expected[0]) and torch.equal(offsets, expected[1])
    with mmfast.backend("reference"):
        assert all(torch.equal(a, b) for a, b in zip(hasher.encode(texts), (ids, offsets)))
        assert TextHasher.build(texts, 2, 97, 2).vocabulary == hasher.vocabulary


def test_packed_texts_count_and_encode_as_the_texts_themselves():
    """``PackedTexts``: one UTF-8 buffer that count_words, hash_text and TextHasher read as the
    list they wrap (the texts left to the Python tokenizer, e.g. a dotted capital I, included);
    with the reference backend it is that list."""
    texts = _random_texts(200, seed=4) + TRICKY
    packed = PackedTexts(texts)
    assert len(packed) == len(texts) and packed[3] == texts[3] and list(packed) == texts
    assert count_words(packed) == count_words(texts)
    hasher = TextHasher.build(packed, buckets=97, ngrams=2)
    assert hasher.vocabulary == TextHasher.build(texts, buckets=97, ngrams=2).vocabulary
    assert all(torch.equal(a, b) for a, b in zip(hasher.encode(packed), hasher.encode(texts)))
    with mmfast.backend("reference"):
        assert all(torch.equal(a, b) for a, b in zip(hasher.encode(packed),
                                                     hasher.encode(texts)))
    assert PackedTexts(text for text in ["a b", "c"])[1] == "c"  # an iterable is listed
    with pytest.raises(TypeError, match="texts must be a sequence of strings, got str"):
        PackedTexts("a b")
    with pytest.raises(TypeError, match="texts must be strings, got int at index 1"):
        PackedTexts(["a", 3])


def test_empty_inputs():
    ids, offsets = hash_text([], PackedVocabulary(["a"]), 10, 2)
    assert ids.shape == (0,) and offsets.shape == (0,)
    ids, offsets = hash_text(["", "..."], PackedVocabulary([]), 10, 2)
    assert ids.shape == (0,) and offsets.tolist() == [0, 0]
    assert count_words([]) == [] and count_words([" ", ""]) == []


def test_words_with_nuls_and_spaces_in_a_given_vocabulary():
    """A vocabulary a user passes may hold strings no token can equal; they are never found."""
    words = ["a b", "x\0y", "b", "a"]
    ids, _ = hash_text(["a b x y"], PackedVocabulary(words), 10, 1)
    assert ids.tolist() == [3, 2]


def test_opcheck():
    texts = ["Red apple", "İstanbul ΣΑΣ", "apple pie pie"]
    vocabulary = PackedVocabulary(["apple", "pie", "red"])
    text, offsets = pack_texts(texts)
    opcheck(torch.ops.mmfast._text_vocabulary_table.default,
            (vocabulary.bytes, vocabulary.offsets))
    opcheck(torch.ops.mmfast.hash_text.default,
            (text, offsets, fold_table(), vocabulary.bytes, vocabulary.offsets, vocabulary.table,
             100, 2), test_utils=("test_schema", "test_autograd_registration"))
    opcheck(torch.ops.mmfast.count_words.default, (text, offsets, fold_table()),
            test_utils=("test_schema", "test_autograd_registration"))


def test_fake_kernels_give_data_dependent_sizes():
    from torch._subclasses.fake_tensor import FakeTensorMode
    from torch.fx.experimental.symbolic_shapes import ShapeEnv

    text, offsets = pack_texts(["a b", "c"])
    vocabulary = PackedVocabulary(["a"])
    with FakeTensorMode(shape_env=ShapeEnv()) as mode:
        args = [mode.from_tensor(t) for t in (text, offsets, fold_table(), vocabulary.bytes,
                                              vocabulary.offsets, vocabulary.table)]
        ids, starts, fallback = torch.ops.mmfast.hash_text(*args, 10, 2)
        assert starts.shape == (2,) and fallback.dtype == torch.bool
        assert isinstance(ids.shape[0], torch.SymInt)
        table = torch.ops.mmfast._text_vocabulary_table(args[3], args[4])
        assert table.shape == vocabulary.table.shape


def test_bad_inputs_are_clear():
    vocabulary = PackedVocabulary(["a"])
    with pytest.raises(TypeError, match="texts must be strings, got int at index 1"):
        hash_text(["a", 3], vocabulary, 10, 1)
    with pytest.raises(TypeError, match="texts must be a sequence of strings, got str"):
        hash_text("a b", vocabulary, 10, 1)
    with pytest.raises(TypeError, match="vocabulary must be a PackedVocabulary, got list"):
        hash_text(["a"], ["a"], 10, 1)
    with pytest.raises(ValueError, match="ngrams must be an integer >= 1, got 0"):
        hash_text(["a"], vocabulary, 10, 0)
    with pytest.raises(ValueError, match="buckets must be >= 1 when ngrams > 1, got 0"):
        hash_text(["a"], vocabulary, 0, 2)
    with pytest.raises(ValueError, match="vocabulary must not repeat a word"):
        PackedVocabulary(["a", "b", "a"])
    text, offsets = pack_texts(["a b"])
    args = (fold_table(), vocabulary.bytes, vocabulary.offsets, vocabulary.table, 10, 1)
    with pytest.raises(ValueError, match="text_offsets must run from 0 to 4"):
        torch.ops.mmfast.hash_text(text, offsets + 1, *args)
    with pytest.raises(TypeError, match="text must be uint8"):
        torch.ops.mmfast.hash_text(text.long(), offsets, *args)
    with pytest.raises(ValueError, match=r"fold must have shape \[1114112\]"):
        torch.ops.mmfast.hash_text(text, offsets, fold_table()[:10], *args[1:])
