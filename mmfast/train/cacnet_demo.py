"""Paper 000's Table 4 on the demo data's multi-label ``tags`` task: CACNet, CACNet(gamma=1) (the
paper's ablation: case 2 never taken) and a plain MLP of the same size, trained on the same
features and mini-batches, scored by P@1, R@5, Acc@1, Acc@3, Acc@5 on the held-out split.

Features (DESIGN 3.2): image features reduced to ``dim`` by a PCA fitted on the train split;
text as the a/(a+p(w)) weighted average of gensim Word2Vec vectors trained on the train split's
text (out-of-vocabulary words skipped and counted). Each modality is then standardized with the
train split's per-dimension mean and deviation: Word2Vec trained on a few thousand short texts
gives averages ~50x smaller than the image components, and SGD would otherwise ignore the text.

Shared by ``benchmarks/bench_cacnet_demo.py`` and ``tests/test_cacnet_demo.py``.
"""

from collections.abc import Sequence
from dataclasses import dataclass

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from mmfast import metrics
from mmfast.data import Record
from mmfast.features import PCA, WordVectors, weighted_average, word_probabilities
from mmfast.nn import CACNet
from mmfast.train.cacnet import CACNetTrainer, GammaSchedule, ShuffledBatches
from mmfast.systems.base import targets as multilabel_targets

# (column, metric, K) in the order of paper 000's Tables 3 and 4.
HASHTAG_METRICS = (
    ("P@1", metrics.precision_at_k, 1), ("R@5", metrics.recall_at_k, 5),
    ("Acc@1", metrics.accuracy_at_k, 1), ("Acc@3", metrics.accuracy_at_k, 3),
    ("Acc@5", metrics.accuracy_at_k, 5),
)


@dataclass
class Split:
    """One split's CACNet inputs: image [N, dim], text [N, dim] and {0,1} targets [N, C]."""

    image: torch.Tensor
    text: torch.Tensor
    targets: torch.Tensor

    def __len__(self) -> int:
        return self.targets.shape[0]


@dataclass
class Features:
    train: Split
    heldout: Split
    heldout_oov: int  # held-out word occurrences missing from the train split's Word2Vec


def cacnet_features(
    train_records: Sequence[Record], heldout_records: Sequence[Record],
    train_image: np.ndarray, heldout_image: np.ndarray, labels: Sequence[str],
    dim: int = 300, seed: int = 0,
) -> Features:
    """Both splits' inputs; the PCA, Word2Vec and word frequencies see the train split only."""
    pca = PCA.fit(train_image, dim)
    train_texts = [record.text for record in train_records]
    vectors = WordVectors.train(train_texts, dim=dim, kind="word2vec", seed=seed)
    probabilities = word_probabilities(train_texts)

    train_text, _ = weighted_average(train_texts, vectors, probabilities)
    heldout_text, heldout_oov = weighted_average([r.text for r in heldout_records], vectors,
                                                 probabilities)
    train_image, heldout_image = _standardize(pca(train_image), pca(heldout_image))
    train_text, heldout_text = _standardize(train_text, heldout_text)
    return Features(
        Split(train_image, train_text, multilabel_targets(train_records, labels, True)),
        Split(heldout_image, heldout_text, multilabel_targets(heldout_records, labels, True)),
        heldout_oov,
    )


def _standardize(train: np.ndarray, heldout: np.ndarray) -> tuple[torch.Tensor, torch.Tensor]:
    """Both splits scaled by the train split's per-dimension mean and deviation."""
    mean, std = train.mean(axis=0), train.std(axis=0)
    std[std == 0] = 1.0  # a constant dimension stays 0 instead of becoming NaN
    return torch.from_numpy((train - mean) / std), torch.from_numpy((heldout - mean) / std)


def dense_mlp(input_dim: int, hidden: int, num_classes: int) -> nn.Sequential:
    """The baseline: CACNet's layer sizes, every unit connected to both modalities."""
    return nn.Sequential(
        nn.Linear(input_dim, hidden), nn.ReLU(),
        nn.Linear(hidden, hidden), nn.ReLU(),
        nn.Linear(hidden, num_classes),
    )


def train_cacnet(train: Split, gamma, epochs: int, hidden: int = 600, batch_size: int = 20,
                 lr: float = 0.1, seed: int = 0) -> tuple[CACNet, list[dict]]:
    """CACNet trained by SGD with the two-phase trainer; ``gamma`` as ``CACNetTrainer``'s
    ``gamma_schedule``. Returns the model and the per-epoch history (with the case counts)."""
    torch.manual_seed(seed)
    model = CACNet(train.image.shape[1], train.text.shape[1], hidden, train.targets.shape[1])
    trainer = CACNetTrainer(model, torch.optim.SGD(model.parameters(), lr=lr),
                            gamma_schedule=gamma)
    batches = ShuffledBatches(train.image, train.text, train.targets, batch_size, seed)
    history = trainer.fit(batches, epochs, progress=False)
    return model, history


def train_mlp(train: Split, epochs: int, hidden: int = 600, batch_size: int = 20,
              lr: float = 0.1, seed: int = 0) -> nn.Sequential:
    """The dense MLP on the concatenated inputs, sigmoid outputs and BCE, by SGD."""
    torch.manual_seed(seed)
    model = dense_mlp(train.image.shape[1] + train.text.shape[1], hidden, train.targets.shape[1])
    optimizer = torch.optim.SGD(model.parameters(), lr=lr)
    batches = ShuffledBatches(train.image, train.text, train.targets, batch_size, seed)
    for _ in range(epochs):
        for image, text, targets in batches:
            optimizer.zero_grad(set_to_none=True)
            logits = model(torch.cat([image, text], dim=1))
            F.binary_cross_entropy_with_logits(logits, targets).backward()
            optimizer.step()
    return model


def hashtag_metrics(scores: torch.Tensor, targets: torch.Tensor) -> dict[str, float]:
    return {name: metric(scores, targets, k) for name, metric, k in HASHTAG_METRICS}


def table4(features: Features, epochs: int, hidden: int = 600, batch_size: int = 20,
           lr: float = 0.1, seed: int = 0) -> dict[str, dict]:
    """Held-out metrics of each model, keyed by model name. CACNet's gamma follows the paper's
    schedule scaled to ``epochs`` (0.4, then up to 0.8 over the last fifth: 100 of 500); its
    rows also hold ``case2_steps`` of ``steps``."""
    train, heldout = features.train, features.heldout
    settings = {"hidden": hidden, "batch_size": batch_size, "lr": lr, "seed": seed}
    rows = {}
    for name, gamma in (("CACNet", GammaSchedule(0.4, 0.8, ramp_epochs=max(epochs // 5, 1))),
                        ("CACNet(gamma=1)", 1.0)):
        model, history = train_cacnet(train, gamma, epochs, **settings)
        with torch.no_grad():
            scores = model(heldout.image, heldout.text)
        rows[name] = {**hashtag_metrics(scores, heldout.targets),
                      "case2_steps": sum(epoch["case2_steps"] for epoch in history),
                      "steps": sum(epoch["case1_steps"] + epoch["case2_steps"]
                                   for epoch in history)}
    mlp = train_mlp(train, epochs, **settings)
    with torch.no_grad():
        scores = mlp(torch.cat([heldout.image, heldout.text], dim=1))
    rows["MLP"] = hashtag_metrics(scores, heldout.targets)
    return rows
