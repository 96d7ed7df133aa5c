"""Paper 002's autoencoders as systems (``joint_ae``, ``crossmodal_ae_i``,
``crossmodal_ae_ii``): ``DenseInputs`` (image features PCA-whitened, text vectors, both
standardized) train the autoencoder without labels; its hidden units are the item's features,
and one L2-regularized logistic regression per label on them (paper 002's concept detectors)
scores the labels. Single-label tasks fit the probes one-vs-rest and predict the top score.
The joint model reads image and text; the cross-modal ones learn from the text but read only
the image when they predict."""

import os
import time
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

import numpy as np
import torch

from mmfast._io import load_tensors
from mmfast.data import Record
from mmfast.defaults import AUTO_TEXT_FEATURES, PROBE_L2, AutoencoderRecipe
from mmfast.devices import model_device
from mmfast.nn import CrossModalAutoencoder, JointAutoencoder
from mmfast.systems.base import (Fitted, Inputs, choose_on_validation, one_hot, read_header,
                                 stage, targets)
from mmfast.systems.dense_inputs import DenseInputs
from mmfast.train.autoencoder import AutoencoderTrainer
from mmfast.train.checkpoint import load_checkpoint
from mmfast.train.distributed import gather_rows
from mmfast.train.fasttext import SCORE_NAMES, score
from mmfast.train.logistic import LogisticRegression
from mmfast.train.resume import Resumable

INPUTS = "inputs.safetensors"  # the fitted PCA, text vectors, standardization and probes
# A label that every (or no) training item has gets no regression: a constant logit this large.
_CONSTANT_LOGIT = 20.0


class Probes:
    """Per-label logistic regressions on standardized features: ``probes(x)`` -> logits
    [N, K] = ``((x - mean) / scale) @ weight.T + bias``."""

    def __init__(self, weight: torch.Tensor, bias: torch.Tensor, mean: torch.Tensor,
                 scale: torch.Tensor):
        self.weight, self.bias, self.mean, self.scale = weight, bias, mean, scale

    @classmethod
    def fit(cls, features: torch.Tensor, truth: torch.Tensor, l2: float) -> "Probes":
        """``truth`` {0,1} [N, K]; the labels with both classes among the N rows are fitted
        together (``LogisticRegression``), the others get a constant logit."""
        positives = truth.sum(0)
        fitted = ((positives > 0) & (positives < len(truth))).nonzero().flatten()
        weight = torch.zeros(truth.shape[1], features.shape[1], dtype=torch.float64)
        bias = torch.where(positives > 0, _CONSTANT_LOGIT, -_CONSTANT_LOGIT).double()
        regression = LogisticRegression(l2).fit(features, truth[:, fitted]) if len(fitted) else None
        if regression is None:
            mean, scale = features.double().mean(0), features.double().std(0, correction=0)
            scale[scale == 0] = 1.0
        else:
            weight[fitted], bias[fitted] = regression.weight, regression.bias
            mean, scale = regression.mean, regression.scale
        return cls(weight, bias, mean, scale)

    def __call__(self, features: torch.Tensor) -> torch.Tensor:
        x = (features.double() - self.mean) / self.scale
        return torch.addmm(self.bias, x, self.weight.t()).float()

    def tensors(self) -> dict[str, torch.Tensor]:
        return {"probe_weight": self.weight, "probe_bias": self.bias, "probe_mean": self.mean,
                "probe_scale": self.scale}

    @classmethod
    def from_tensors(cls, tensors: dict[str, torch.Tensor]) -> "Probes":
        return cls(*(tensors[f"probe_{name}"] for name in ("weight", "bias", "mean", "scale")))


class TrainedAutoencoder(Fitted):
    def __init__(self, model: JointAutoencoder | CrossModalAutoencoder, inputs: DenseInputs,
                 probes: Probes | None, labels: Sequence[str], multilabel: bool,
                 recipe: AutoencoderRecipe, stats: dict):
        self.model, self.inputs, self.probes = model, inputs, probes
        self.labels, self.multilabel = tuple(labels), multilabel
        self.recipe, self.stats = recipe, stats

    @torch.no_grad()
    def encode(self, records: Sequence[Record], image: np.ndarray) -> torch.Tensor:
        """The autoencoder's hidden units [N, hidden] on the CPU: the items' learned
        features."""
        device = model_device(self.model)
        v, tau = (None if x is None else x.to(device) for x in self.inputs(records, image))
        self.model.eval()
        hidden = self.model.encode(v, tau) if self.recipe.model == "joint_ae" else \
            self.model.encode(v)
        return hidden.cpu()

    def _logits(self, records: Sequence[Record], image: np.ndarray | None) -> torch.Tensor:
        return self.probes(self.encode(records, image))

    def save(self, directory: str | os.PathLike, extractor: dict | None = None) -> None:
        self.save_with(directory, extractor, INPUTS,
                       {**self.inputs.tensors(), **self.probes.tensors()},
                       inputs=self.inputs.config())


def load(directory: str | os.PathLike) -> TrainedAutoencoder:
    model, config = load_checkpoint(directory)
    tensors = load_tensors(Path(directory) / INPUTS)
    if "probe_weight" not in tensors:
        raise ValueError(f"{Path(directory) / INPUTS}: expected the label probes of an "
                         "autoencoder system, got none")
    probes = Probes.from_tensors(tensors)
    labels, multilabel, recipe = read_header(directory, config, len(probes.bias),
                                             AutoencoderRecipe, ("inputs",))
    inputs = DenseInputs.from_state(config["inputs"], tensors)
    return TrainedAutoencoder(model, inputs, probes, labels, multilabel, recipe, {})


def build_model(recipe: AutoencoderRecipe, visual_dim: int, text_dim: int):
    if recipe.model == "joint_ae":
        return JointAutoencoder(visual_dim, text_dim, mu=recipe.mu)
    if recipe.model == "crossmodal_ae_i":
        return CrossModalAutoencoder(visual_dim, text_dim, "I")
    return CrossModalAutoencoder(visual_dim, text_dim, "II", mu=recipe.mu)


def fit(recipe: AutoencoderRecipe, train: Inputs, labels: Sequence[str], multilabel: bool,
        valid: Inputs | None = None, progress: bool = False, state=None,
        device: torch.device | str | None = None) -> TrainedAutoencoder:
    """The autoencoder trained on ``train`` (labels unused; on ``device``, None: the CPU),
    then the probes on its features (on the CPU); with ``recipe.l2`` None, the probes' penalty
    is the one of ``PROBE_L2`` that scores best on ``valid`` (1 without it), and
    ``text_features`` "auto" trains with each of ``AUTO_TEXT_FEATURES`` and keeps the better;
    the returned recipe names the choices."""
    return choose_on_validation(
        lambda run: _fit_once(run, train, labels, multilabel, valid, progress, state, device),
        recipe, "text_features", AUTO_TEXT_FEATURES, valid)


def _fit_once(recipe: AutoencoderRecipe, train: Inputs, labels: Sequence[str],
              multilabel: bool, valid: Inputs | None, progress: bool, state=None,
              device=None) -> TrainedAutoencoder:
    records, image = train
    start = time.perf_counter()
    inputs = DenseInputs.fit(records, image, recipe.image_dim, True, recipe.text_features,
                             recipe.text_dim, recipe.ngrams, recipe.seed)
    device = torch.device(device or "cpu")
    v, tau = (None if x is None else x.to(device) for x in inputs(records, image))
    with torch.random.fork_rng(devices=[]):  # seed the initial weights, not the caller's RNG
        torch.manual_seed(recipe.seed)
        model = build_model(recipe, inputs.image_dim, inputs.text_dim).to(device)
    parameters = model.parameters()
    optimizer = (torch.optim.SGD(parameters, lr=recipe.lr, momentum=0.9)
                 if recipe.optimizer == "sgd" else torch.optim.Adam(parameters, lr=recipe.lr))
    trainer = AutoencoderTrainer(model, optimizer, distributed=True)
    resumable = Resumable(stage(state, recipe), model, [optimizer])
    restored = resumable.restore()
    if restored is not None:
        trainer.load_state(restored[0]["trainer"])
    # the trainer replays the shuffles of the epochs done: it trains up to each saved epoch
    every = recipe.epochs if resumable.stage is None else resumable.stage.state.every
    while trainer.epoch < recipe.epochs:
        trainer.fit(v, tau, min((trainer.epoch // every + 1) * every, recipe.epochs),
                    recipe.batch_size, recipe.seed, progress=progress, desc=f"train {recipe.model}")
        resumable.save(trainer.epoch, trainer.epoch == recipe.epochs, trainer=trainer.state())
    history = trainer.history
    trained = TrainedAutoencoder(model, inputs, None, labels, multilabel, recipe, {})
    # the probes are fitted, and scored, on the whole split: the ranks' shares gathered
    features = gather_rows(trained.encode(records, image))
    truth = gather_rows(targets(records, labels, multilabel))
    binary = truth if multilabel else one_hot(truth, len(labels))
    loss = "ova" if multilabel else "softmax"
    metric = SCORE_NAMES[loss]
    row = {"epoch": recipe.epochs, "loss": history[-1]["loss"]}
    penalties = (recipe.l2,) if recipe.l2 is not None else PROBE_L2 if valid else (1.0,)
    best = None
    valid_features = None if valid is None else gather_rows(trained.encode(*valid))
    for l2 in penalties:
        probes = Probes.fit(features, binary, l2)
        candidate = {"l2": l2, "probes": probes}
        if valid is not None:
            candidate["valid"] = score(probes(valid_features), gather_rows(
                targets(valid[0], labels, multilabel)), loss)
        if best is None or candidate.get("valid", 0) > best.get("valid", 0):
            best = candidate
    trained.probes, trained.recipe = best["probes"], replace(recipe, l2=best["l2"])
    row[f"train_{metric}"] = score(trained.probes(features), truth, loss)
    seconds = time.perf_counter() - start
    trained.stats = {"seconds": seconds, "items_per_s": recipe.epochs * len(features) / seconds,
                     "final_loss": row["loss"], "history": [row], "metric": metric}
    if valid is not None:
        row[f"valid_{metric}"] = best["valid"]
        trained.stats.update(best_epoch=recipe.epochs, valid_score=best["valid"])
    return trained
