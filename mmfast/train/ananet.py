"""Training AnANet (paper 004) from precomputed features, with safetensors + JSON checkpoints.

Features are a mapping of tensors (in memory, or a safetensors feature store on disk):
``regions`` [S, Kr, region_dim], ``word_vectors`` [S, N, d_G], ``context_vectors`` [S, N, d_B],
``t_lengths`` [S] int64 and, to train or evaluate, ``labels`` [S] int64.
"""

import os
from collections.abc import Mapping, Sequence
from pathlib import Path

import numpy as np
import torch
from safetensors.torch import load_file

from mmfast import metrics
from mmfast.data import FeatureStore, Pair
from mmfast.features import WordVectors, token_vectors
from mmfast.nn.ananet import AnANet
from mmfast.train import checkpoint
from mmfast.train.distributed import average_gradients, epoch_batches, process_group
from mmfast.features.store import store_features

FEATURE_KEYS = ("regions", "word_vectors", "context_vectors", "t_lengths")


def load_features(path: str | os.PathLike) -> dict[str, torch.Tensor]:
    """A safetensors feature store, checked to hold every input AnANet needs."""
    features = load_file(str(path))
    _check_features(features, need_labels=False, source=str(path))
    return features


def ananet_inputs(regions: np.ndarray, texts: Sequence[str], vectors: WordVectors,
                  num_words: int) -> dict[str, torch.Tensor]:
    """AnANet's inputs without labels: image ``regions`` [B, Kr, d], the texts' word vectors
    padded to ``num_words``, and no contextual vectors (width 0: ``AnANet(context_dim=0)``)."""
    words, lengths, _ = token_vectors(list(texts), vectors, num_words)
    return {
        "regions": torch.from_numpy(np.asarray(regions, np.float32)),
        "word_vectors": torch.from_numpy(words),
        "context_vectors": torch.zeros(len(texts), num_words, 0),
        "t_lengths": torch.from_numpy(lengths),
    }


def relevance_features(pairs: Sequence[Pair], regions: FeatureStore, vectors: WordVectors,
                       num_words: int) -> dict[str, torch.Tensor]:
    """``ananet_inputs`` of image-text ``pairs`` (``mmfast.data.relevance_pairs``), each pair's
    image regions taken from the store's ``image`` feature [items, Kr, d], with their labels."""
    image = store_features(regions, [pair.image for pair in pairs])
    return {**ananet_inputs(image, [pair.caption.text for pair in pairs], vectors, num_words),
            "labels": torch.tensor([pair.label for pair in pairs], dtype=torch.long)}


def _check_features(features: Mapping[str, torch.Tensor], need_labels: bool, source: str) -> int:
    keys = FEATURE_KEYS + (("labels",) if need_labels else ())
    missing = [key for key in keys if key not in features]
    if missing:
        raise KeyError(f"AnANet features ({source}): missing {missing}, have {sorted(features)}")
    sizes = {key: features[key].shape[0] for key in keys}
    if len(set(sizes.values())) != 1:
        raise ValueError(f"AnANet features ({source}): every tensor must have the same number "
                         f"of samples, got {sizes}")
    return next(iter(sizes.values()))


class AnANetTrainer:
    """Mini-batch training of ``AnANet`` on its combined loss (Adam, lr 1e-3, batch 64 as in
    the paper), evaluation with accuracy and F1, and checkpoints."""

    def __init__(self, model: AnANet, optimizer: torch.optim.Optimizer | None = None,
                 batch_size: int = 64, distributed: bool = False):
        self.model = model
        self.optimizer = optimizer or torch.optim.Adam(model.parameters(), lr=1e-3)
        self.batch_size = batch_size
        self.steps = 0
        # in a process group (torchrun): each rank steps on its part of every batch, the
        # gradients averaged over the ranks (mmfast.train.distributed)
        self.rank, self.world = process_group() if distributed else (0, 1)

    def _batch(self, features, index, keys=FEATURE_KEYS):
        device = next(self.model.parameters()).device
        return [features[key][index].to(device) for key in keys]

    def step(self, regions, word_vectors, context_vectors, t_lengths, labels) -> dict[str, float]:
        """One optimizer step on one mini-batch; returns the loss and its parts."""
        self.model.train()
        output = self.model(regions, word_vectors, context_vectors, t_lengths)
        loss = self.model.loss(output, labels)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        average_gradients(self.model.parameters(), self.world, len(labels))
        self.optimizer.step()
        self.steps += 1
        return {"loss": loss.item(), "invariant_loss": output.invariant_loss.item(),
                "orthogonality_loss": output.orthogonality_loss.item()}

    def fit(self, features: Mapping[str, torch.Tensor], epochs: int = 1,
            generator: torch.Generator | None = None) -> list[float]:
        """Shuffled epochs over ``features``; returns each epoch's mean loss."""
        num_samples = _check_features(features, need_labels=True, source="fit")
        keys, history = FEATURE_KEYS + ("labels",), []
        for _ in range(epochs):
            batches = epoch_batches(num_samples, self.batch_size, generator,
                                    (self.rank, self.world))
            losses = [self.step(*self._batch(features, index, keys))["loss"] for index in batches]
            history.append(sum(losses) / max(len(losses), 1))
        return history

    @torch.no_grad()
    def predict(self, features: Mapping[str, torch.Tensor]) -> torch.Tensor:
        """Class probabilities [S, C] on the CPU (softmax of the fused logits)."""
        num_samples = _check_features(features, need_labels=False, source="predict")
        if num_samples == 0:  # e.g. a rank's empty share of a small validation split
            return torch.empty(0, self.model.config()["num_classes"])
        self.model.eval()
        chunks = [
            self.model(*self._batch(features, slice(start, start + self.batch_size))).logits
            for start in range(0, num_samples, self.batch_size)
        ]
        return torch.cat(chunks).softmax(dim=1).cpu()

    def evaluate(self, features: Mapping[str, torch.Tensor]) -> dict:
        """Accuracy, weighted F1 and per-class F1 (the paper's Tables III-V)."""
        _check_features(features, need_labels=True, source="evaluate")
        probabilities, labels = self.predict(features), features["labels"].cpu()
        num_classes = probabilities.shape[1]
        return {
            "accuracy": metrics.accuracy(probabilities, labels),
            "f1_weighted": metrics.f1_score(probabilities.argmax(1), labels,
                                            num_classes=num_classes, average="weighted"),
            "f1_per_class": metrics.f1_score(probabilities.argmax(1), labels,
                                             num_classes=num_classes, average=None).tolist(),
        }

    def save_checkpoint(self, directory: str | os.PathLike) -> None:
        """``mmfast.train.save_checkpoint`` of the model, with the step count."""
        checkpoint.save_checkpoint(directory, self.model, {"steps": self.steps})

    @classmethod
    def load_checkpoint(cls, directory: str | os.PathLike, **trainer_kwargs) -> "AnANetTrainer":
        """A trainer around the checkpointed model (weights loaded without unpickling)."""
        model, config = checkpoint.load_checkpoint(directory)
        if not isinstance(model, AnANet):
            raise ValueError(f"{Path(directory) / checkpoint.CONFIG}: expected an AnANet "
                             f"checkpoint, got model {config['model']!r}")
        trainer = cls(model.train(), **trainer_kwargs)
        trainer.steps = config["steps"]
        return trainer
