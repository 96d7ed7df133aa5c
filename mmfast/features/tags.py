"""Tag vectors (paper 002, DESIGN 3.3): 20-d word vectors learned from tag co-occurrence, each
item's tag list being one Word2Vec sentence; an item's feature is the mean vector of its tags,
standardized with the fit split's per-dimension mean and deviation.

The paper removes a concept's own tag from the text side before learning anything (otherwise
predicting the concept from the text is trivial): ``exclude`` drops those tags before fitting and
before every transform.
"""

from collections.abc import Iterable, Sequence

import numpy as np

from mmfast.features.text import WordVectors


def _kept(tag_lists: Sequence[Sequence[str]], exclude: frozenset[str], where: str
          ) -> list[list[str]]:
    if isinstance(tag_lists, str):
        raise TypeError(f"{where}: tag_lists must be a sequence of tag lists, got a str")
    kept = []
    for row, tags in enumerate(tag_lists):
        if isinstance(tags, str) or not all(isinstance(tag, str) for tag in tags):
            raise TypeError(f"{where}: tag_lists[{row}] must be a list of str tags, got {tags!r}")
        kept.append([tag for tag in tags if tag not in exclude])
    return kept


class TagVectors:
    """``transform(tag_lists)`` -> ``(features [N, dim], tagged [N])``.

    ``features`` is each item's mean tag vector, minus ``mean`` and divided by ``std`` (both
    [dim], measured on the fit split's tagged items). An item with no tag in the vocabulary
    (after ``exclude``) gets 0, the standardized mean: the best guess with no evidence, and the
    value the joint autoencoder fills in for a missing text. ``tagged`` is False for those
    items (``(~tagged).sum()`` counts them; it is the autoencoders' ``text_present``).
    """

    def __init__(self, vectors: WordVectors, mean: np.ndarray, std: np.ndarray,
                 exclude: Iterable[str] = ()):
        if mean.shape != (vectors.dim,) or std.shape != (vectors.dim,):
            raise ValueError(f"TagVectors: mean and std must have shape ({vectors.dim},) like "
                             f"the vectors' dim, got {mean.shape} and {std.shape}")
        if not (std > 0).all():
            raise ValueError(f"TagVectors: std must be > 0 in every dimension, got {std}")
        self.vectors, self.mean, self.std = vectors, mean, std
        self.exclude = frozenset(exclude)

    @property
    def dim(self) -> int:
        return self.vectors.dim

    @classmethod
    def fit(cls, tag_lists: Sequence[Sequence[str]], dim: int = 20, exclude: Iterable[str] = (),
            epochs: int = 50, min_count: int = 1, seed: int = 0) -> "TagVectors":
        """Word2Vec over ``tag_lists`` (one sentence per item, ``exclude`` removed) with a window
        spanning the longest list, so every pair of an item's tags is a (word, context) pair:
        tag order carries no meaning. Many epochs, because tag lists are short and few. One
        worker and ``seed`` make it reproducible."""
        exclude = frozenset(exclude)
        sentences = _kept(tag_lists, exclude, "TagVectors.fit")
        longest = max((len(tags) for tags in sentences), default=0)
        if longest == 0:
            raise ValueError(f"TagVectors.fit: tag_lists must hold at least one tag outside "
                             f"exclude, got {len(sentences)} items with none")
        vectors = WordVectors.train_sentences(sentences, dim=dim, epochs=epochs,
                                              window=max(longest - 1, 1), min_count=min_count,
                                              seed=seed, workers=1, shrink_windows=False)
        means, tagged = cls._mean_vectors(vectors, sentences)
        if not tagged.any():
            raise ValueError(f"TagVectors.fit: no item has a tag seen at least min_count="
                             f"{min_count} times")
        mean = means[tagged].mean(axis=0)
        std = means[tagged].std(axis=0)
        std[std == 0] = 1.0  # a constant dimension stays 0 instead of becoming NaN
        return cls(vectors, mean, std, exclude)

    @staticmethod
    def _mean_vectors(vectors: WordVectors, tag_lists: list[list[str]]
                      ) -> tuple[np.ndarray, np.ndarray]:
        """Raw mean vectors [N, dim] (0 for an item without a known tag) and which items have
        one [N] bool."""
        means = np.zeros((len(tag_lists), vectors.dim), dtype=np.float32)
        tagged = np.zeros(len(tag_lists), dtype=bool)
        for row, tags in enumerate(tag_lists):
            known = [vectors.index[tag] for tag in tags if tag in vectors.index]
            if known:
                means[row] = vectors.vectors[known].mean(axis=0)
                tagged[row] = True
        return means, tagged

    def transform(self, tag_lists: Sequence[Sequence[str]]) -> tuple[np.ndarray, np.ndarray]:
        """``(features [N, dim] float32, tagged [N] bool)``, see the class docstring."""
        kept = _kept(tag_lists, self.exclude, "TagVectors.transform")
        means, tagged = self._mean_vectors(self.vectors, kept)
        features = np.where(tagged[:, None], (means - self.mean) / self.std, 0.0)
        return features.astype(np.float32), tagged
