"""Paper 002's Table 2 on the demo data's ``tags`` task: the mean held-out ROC AUC over the most
frequent concepts of an L2-regularized logistic regression per concept, for each feature
representation:

=========================  ===========================================================
row                        features
=========================  ===========================================================
Raw Tags                   binary bag of words over the train split's tags
SIFT                       the visual words histograms (the paper's BoVW of SIFT)
Raw Tags + SIFT            both, concatenated
Semantic Word Vectors      standardized mean tag vectors (``TagVectors``, 20-d)
Joint Features             ``JointAutoencoder`` hidden units on [whitened histogram, tags]
Cross-Modal I, II          ``CrossModalAutoencoder`` hidden units on the histogram alone
=========================  ===========================================================

An item's tags are the words of its text. The histograms are PCA-whitened to ``pca_dim``
(capped by the train split's size and the histogram width) before the autoencoders. Everything
unsupervised (vocabulary, Word2Vec, standardization, PCA, autoencoders) is fitted on the train
split, the logistic regressions too; the AUC is measured on the held-out split.

As in the paper, a concept's own tag is removed from the text side before anything is learned
for it (otherwise the text gives the answer away). Concepts whose tag no item has share one set
of features and models instead of retraining identical ones: on the demo that is all of them,
because the emoji texts already have every label word removed.

Shared by the Table 2 benchmark and ``tests/test_autoencoders.py``.
"""

import time
from collections import Counter
from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch

from mmfast import metrics
from mmfast.data import Record
from mmfast.experiments import ordering
from mmfast.features import PCA, TagVectors
from mmfast.nn import CrossModalAutoencoder, JointAutoencoder, tokenize
from mmfast.train.autoencoder import AutoencoderTrainer
from mmfast.systems.base import targets as multilabel_targets
from mmfast.train.logistic import LogisticRegression

ROWS = ("Raw Tags", "SIFT", "Raw Tags + SIFT", "Semantic Word Vectors", "Joint Features",
        "Cross-Modal I", "Cross-Modal II")
OPTIMIZERS = ("sgd", "adam")


@dataclass(frozen=True)
class Training:
    """How the autoencoders are trained: ``optimizer`` "sgd" (the paper's; with momentum 0.9)
    or "adam", ``lr``, ``epochs`` of shuffled ``batch_size`` batches, ``seed`` for the initial
    weights and the batch order."""

    epochs: int = 30
    batch_size: int = 32
    lr: float = 1e-3
    optimizer: str = "sgd"
    seed: int = 0

    def __post_init__(self):
        if self.optimizer not in OPTIMIZERS:
            raise ValueError(f"optimizer must be one of {OPTIMIZERS}, got {self.optimizer!r}")

    def build_optimizer(self, model: torch.nn.Module) -> torch.optim.Optimizer:
        if self.optimizer == "sgd":
            return torch.optim.SGD(model.parameters(), lr=self.lr, momentum=0.9)
        return torch.optim.Adam(model.parameters(), lr=self.lr)


@dataclass
class Split:
    """One split's inputs: each item's tags, visual words histogram [N, W] and its whitened
    projection [N, pca_dim]."""

    tags: list[list[str]]
    histograms: np.ndarray
    visual: np.ndarray


@dataclass
class Table2:
    concepts: tuple[str, ...]
    """The most frequent labels of the train split, most frequent first."""
    auc: dict[str, metrics.PerLabelScore]
    """By row (``ROWS`` order): mean held-out AUC over the concepts and each concept's
    (``per_label``, in ``concepts`` order; NaN where the held-out split has one class)."""
    removed: tuple[str, ...]
    """The concepts whose tag (``concept_tag``) some item has: features and models learned anew
    without it."""
    untagged: dict[str, tuple[int, int]]
    """Train and held-out items left without a known tag, by removed tag ("" for none); no ""
    entry when every concept's tag was removed."""
    visual_dim: int
    """The whitened histogram's dimension."""


def tag_lists(records: Sequence[Record]) -> list[list[str]]:
    """Each record's distinct words, in order: its tags."""
    return [list(dict.fromkeys(tokenize(record.text))) for record in records]


def concept_tag(concept: str) -> str:
    """The tag a concept label stands for in the texts: its one token, as ``tag_lists``
    tokenizes them ("Sky" -> "sky")."""
    tokens = tokenize(concept)
    if len(tokens) != 1:
        raise ValueError(f"concept {concept!r} must tokenize to exactly one tag (its own tag is "
                         f"removed from the text side), got {tokens}")
    return tokens[0]


def top_concepts(records: Sequence[Record], labels: Sequence[str], num_concepts: int
                 ) -> tuple[str, ...]:
    """The ``num_concepts`` labels most frequent in ``records`` (ties by name)."""
    known = set(labels)
    counts = Counter(label for record in records for label in record.labels if label in known)
    if not 1 <= num_concepts <= len(counts):
        raise ValueError(f"num_concepts must be in [1, {len(counts)}] (labels that occur in the "
                         f"train split), got {num_concepts}")
    return tuple(sorted(counts, key=lambda label: (-counts[label], label))[:num_concepts])


def bag_of_words(tags: Sequence[Sequence[str]], vocabulary: Sequence[str]) -> np.ndarray:
    """Binary [N, V]: 1 where the item has the vocabulary's tag; other tags are ignored."""
    index = {tag: column for column, tag in enumerate(vocabulary)}
    out = np.zeros((len(tags), len(vocabulary)), dtype=np.float32)
    for row, item_tags in enumerate(tags):
        out[row, [index[tag] for tag in item_tags if tag in index]] = 1.0
    return out


def train_autoencoder(model: JointAutoencoder | CrossModalAutoencoder, visual: torch.Tensor,
                      text: torch.Tensor, tagged: torch.Tensor, training: Training,
                      progress: bool = False) -> list[dict]:
    """Train ``model`` in place on the rows that have tags for their text term (an item
    without tags has no text to reconstruct); returns the epoch history."""
    trainer = AutoencoderTrainer(model, training.build_optimizer(model))
    return trainer.fit(visual, text, training.epochs, training.batch_size, training.seed,
                       text_present=tagged, progress=progress)


def representations(train: Split, heldout: Split, removed: tuple[str, ...], tag_dim: int,
                    training: Training, progress: bool = False, device="cpu"
                    ) -> tuple[dict[str, tuple[np.ndarray, np.ndarray]], tuple[int, int]]:
    """Every row's (train, held-out) features with the ``removed`` tags dropped from the text
    side, and how many train and held-out items are left without a known tag; the
    autoencoders train on ``device``."""
    vocabulary = sorted({tag for tags in train.tags for tag in tags} - set(removed))
    raw_tags = bag_of_words(train.tags, vocabulary), bag_of_words(heldout.tags, vocabulary)
    tag_vectors = TagVectors.fit(train.tags, tag_dim, exclude=removed, seed=training.seed)
    (train_text, train_tagged), (heldout_text, heldout_tagged) = (
        tag_vectors.transform(train.tags), tag_vectors.transform(heldout.tags))
    visual = torch.from_numpy(train.visual).to(device), torch.from_numpy(heldout.visual).to(device)
    text = torch.from_numpy(train_text).to(device), torch.from_numpy(heldout_text).to(device)

    visual_dim = train.visual.shape[1]
    with torch.random.fork_rng(devices=[]):  # seed the initial weights, not the caller's RNG
        torch.manual_seed(training.seed)
        joint = JointAutoencoder(visual_dim, tag_dim)
        cross = {}
        for mode in ("I", "II"):
            torch.manual_seed(training.seed)
            cross[mode] = CrossModalAutoencoder(visual_dim, tag_dim, mode)
    for model in (joint, *cross.values()):
        train_autoencoder(model.to(device), visual[0], text[0],
                          torch.from_numpy(train_tagged).to(device), training, progress)
    with torch.no_grad():
        joint_features = tuple(joint.eval().encode(v, tau).cpu().numpy()
                               for v, tau in zip(visual, text))
        cross_features = {mode: tuple(model.eval().encode(v).cpu().numpy() for v in visual)
                          for mode, model in cross.items()}
    features = {
        "Raw Tags": raw_tags,
        "SIFT": (train.histograms, heldout.histograms),
        "Raw Tags + SIFT": (np.hstack([raw_tags[0], train.histograms]),
                            np.hstack([raw_tags[1], heldout.histograms])),
        "Semantic Word Vectors": (train_text, heldout_text),
        "Joint Features": joint_features,
        "Cross-Modal I": cross_features["I"],
        "Cross-Modal II": cross_features["II"],
    }
    return features, (int((~train_tagged).sum()), int((~heldout_tagged).sum()))


def _check_histograms(name: str, histograms, records: Sequence[Record]) -> np.ndarray:
    histograms = np.asarray(histograms, dtype=np.float32)
    if histograms.ndim != 2 or histograms.shape[0] != len(records):
        raise ValueError(f"{name} must have shape [{len(records)}, W] (one row per record), "
                         f"got {histograms.shape}")
    if not np.isfinite(histograms).all():
        raise ValueError(f"{name} must be finite")
    return histograms


def table2(train_records: Sequence[Record], heldout_records: Sequence[Record],
           train_histograms: np.ndarray, heldout_histograms: np.ndarray, labels: Sequence[str],
           num_concepts: int = 10, pca_dim: int = 200, tag_dim: int = 20,
           training: Training = Training(), l2: float = 1.0, progress: bool = False,
           device="cpu") -> Table2:
    """Paper 002's Table 2 (see the module docstring). ``train_histograms`` [N, W] and
    ``heldout_histograms`` [M, W] are the records' visual words histograms, row by row;
    ``l2`` is the logistic regressions' 1/C. Each concept's tag is its label's one token
    (``concept_tag``): a label of several words raises ValueError."""
    train_histograms = _check_histograms("train_histograms", train_histograms, train_records)
    heldout_histograms = _check_histograms("heldout_histograms", heldout_histograms,
                                           heldout_records)
    if heldout_histograms.shape[1] != train_histograms.shape[1]:
        raise ValueError(f"heldout_histograms must have {train_histograms.shape[1]} columns like "
                         f"train_histograms, got {heldout_histograms.shape[1]}")
    concepts = top_concepts(train_records, labels, num_concepts)
    train_targets = multilabel_targets(train_records, concepts, True)
    heldout_targets = multilabel_targets(heldout_records, concepts, True)
    pca = PCA.fit(train_histograms, min(pca_dim, *train_histograms.shape), whiten=True)
    train = Split(tag_lists(train_records), train_histograms, pca(train_histograms))
    heldout = Split(tag_lists(heldout_records), heldout_histograms, pca(heldout_histograms))

    # Concepts that need the same removal share one set of features: () when no item has the
    # concept's tag, so removing it would change nothing.
    groups: dict[tuple[str, ...], list[int]] = {}
    for column, tag in enumerate(concept_tag(concept) for concept in concepts):
        has_tag = any(tag in tags for tags in train.tags + heldout.tags)
        groups.setdefault((tag,) if has_tag else (), []).append(column)

    scores = {row: torch.empty(len(heldout_records), len(concepts), dtype=torch.float64)
              for row in ROWS}
    untagged = {}
    for removed, columns in groups.items():
        features, untagged["".join(removed)] = representations(train, heldout, removed, tag_dim,
                                                               training, progress, device)
        for row in ROWS:
            train_features, heldout_features = features[row]
            model = LogisticRegression(l2).fit(train_features, train_targets[:, columns])
            scores[row][:, columns] = model.decision_function(heldout_features)
    auc = {row: metrics.mean_roc_auc(scores[row], heldout_targets, return_per_label=True)
           for row in ROWS}
    removed = tuple(concepts[column] for key, columns in groups.items() if key
                    for column in columns)
    return Table2(concepts, auc, removed, untagged, pca.dim)


# Paper 002's Table 2 (NUS-WIDE, 10 concepts, 50k/50k items), for the printout.
PAPER_TABLE2 = {"Raw Tags": 0.850, "SIFT": 0.755, "Raw Tags + SIFT": 0.824,
                "Semantic Word Vectors": 0.821, "Joint Features": 0.861,
                "Cross-Modal I": 0.762, "Cross-Modal II": 0.773}


def run(num_words: int = 1000, patch_size: int = 16, stride: int = 8, device="cpu") -> Table2:
    """Print Table 2 on the demo's tags task: visual words (``BagOfVisualWords``, the codebook
    fitted on the train split's images) of every image, then ``table2``, on ``device``;
    returns it."""
    from mmfast.data import emoji_dataset, read_manifest
    from mmfast.features import BagOfVisualWords

    start = time.perf_counter()
    data = emoji_dataset("tags")
    train, heldout = read_manifest(data.train), read_manifest(data.heldout)
    bovw = BagOfVisualWords(num_words, patch_size, stride, device=device)
    bovw.fit([record.image for record in train], progress=False)
    train_histograms = bovw.transform([r.image for r in train], progress=False).numpy()
    heldout_histograms = bovw.transform([r.image for r in heldout], progress=False).numpy()
    bovw_seconds = time.perf_counter() - start
    table = table2(train, heldout, train_histograms, heldout_histograms, data.labels,
                   device=device)
    # one entry per removed tag ("" for none): no "" entry when every concept's tag was removed
    untagged = ", ".join(f"{heldout_count}" + (f" once '{tag}' is removed" if tag else "")
                         for tag, (_, heldout_count) in table.untagged.items())
    print(f"paper 002 (autoencoders) on the emoji tags: {len(train)} train / {len(heldout)} "
          f"held-out items; concepts {', '.join(table.concepts)}; visual words "
          f"{bovw_seconds:.1f} s; histograms whitened to {table.visual_dim}; held-out items "
          f"without a known tag: {untagged}")
    print(f"{'features':<24}{'mean AUC':>10}{'paper 002':>11}")
    for row in ROWS:
        print(f"{row:<24}{table.auc[row].mean:>10.3f}{PAPER_TABLE2[row]:>11.3f}")
    print(f"({time.perf_counter() - start:.1f} s; paper: NUS-WIDE, 10 concepts)")
    auc = {row: table.auc[row].mean for row in ROWS}
    print(ordering("the joint features beat every other representation",
                   max(auc, key=auc.get) == "Joint Features"))
    print(ordering("the cross-modal features (I, II) beat the visual words (SIFT) alone",
                   min(auc["Cross-Modal I"], auc["Cross-Modal II"]) > auc["SIFT"]))
    return table
