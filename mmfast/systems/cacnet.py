"""Paper 000's CACNet as a system: ``DenseInputs`` (PCA-reduced image features, text vectors,
both standardized) -> ``CACNet`` trained by ``CACNetTrainer``'s two phases with the gamma
schedule, the best validation epoch kept. Single-label tasks train on one-hot targets (CACNet's
loss is per-label binary cross-entropy) and predict the top-scored label."""

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mmfast._io import load_tensors
from mmfast.data import Record
from mmfast.defaults import AUTO_TEXT_FEATURES, CACNetRecipe
from mmfast.devices import model_device
from mmfast.nn import CACNet
from mmfast.systems.base import (Fitted, Inputs, choose_on_validation, one_hot, read_header,
                                 stage, targets)
from mmfast.systems.dense_inputs import DenseInputs
from mmfast.train.cacnet import CACNetTrainer, GammaSchedule, ShuffledBatches
from mmfast.train.checkpoint import load_checkpoint
from mmfast.train.distributed import gather_rows, global_sum, process_group
from mmfast.train.fasttext import SCORE_NAMES, score
from mmfast.train.resume import Resumable
from mmfast.train.selection import TRAIN_SAMPLE, select_epochs

INPUTS = "inputs.safetensors"  # the fitted PCA, text vectors and standardization


class TrainedCACNet(Fitted):
    def __init__(self, model: CACNet, inputs: DenseInputs, labels: Sequence[str],
                 multilabel: bool, recipe: CACNetRecipe, stats: dict):
        self.model, self.inputs, self.labels = model, inputs, tuple(labels)
        self.multilabel, self.recipe, self.stats = multilabel, recipe, stats

    @torch.no_grad()
    def _logits(self, records: Sequence[Record], image: np.ndarray | None) -> torch.Tensor:
        self.model.eval()
        device = model_device(self.model)
        return self.model(*(x.to(device) for x in self.inputs(records, image))).cpu()

    def save(self, directory: str | os.PathLike, extractor: dict | None = None) -> None:
        self.save_with(directory, extractor, INPUTS, self.inputs.tensors(),
                       inputs=self.inputs.config())


def load(directory: str | os.PathLike) -> TrainedCACNet:
    model, config = load_checkpoint(directory)
    labels, multilabel, recipe = read_header(directory, config, model.num_classes,
                                             CACNetRecipe, ("inputs",))
    inputs = DenseInputs.from_state(config["inputs"], load_tensors(Path(directory) / INPUTS))
    return TrainedCACNet(model, inputs, labels, multilabel, recipe, {})


def fit(recipe: CACNetRecipe, train: Inputs, labels: Sequence[str], multilabel: bool,
        valid: Inputs | None = None, progress: bool = False, state=None,
        device: torch.device | str | None = None) -> TrainedCACNet:
    """CACNet trained on ``train`` (on ``device``; None: the CPU), the best epoch on ``valid``
    kept; ``text_features`` "auto" trains with each of ``AUTO_TEXT_FEATURES`` and keeps the
    one that validates better. The inputs are fitted on the CPU."""
    return choose_on_validation(
        lambda run: _fit_once(run, train, labels, multilabel, valid, progress, state, device),
        recipe, "text_features", AUTO_TEXT_FEATURES, valid)


def _fit_once(recipe: CACNetRecipe, train: Inputs, labels: Sequence[str], multilabel: bool,
              valid: Inputs | None, progress: bool, state=None,
              device=None) -> TrainedCACNet:
    records, image = train
    torch.manual_seed(recipe.seed)
    inputs = DenseInputs.fit(records, image, recipe.image_dim, False, recipe.text_features,
                             recipe.text_dim, recipe.ngrams, recipe.seed)
    device = torch.device(device or "cpu")
    model = CACNet(inputs.image_dim, inputs.text_dim, recipe.dim, len(labels)).to(device)
    trained = TrainedCACNet(model, inputs, labels, multilabel, recipe, {})
    # the reduced inputs are small: they move to the device whole, the batches are their rows
    x_img, x_txt = (x.to(device) for x in inputs(records, image))
    truth = targets(records, labels, multilabel).to(device)
    y = truth if multilabel else one_hot(truth, len(labels))
    # under torchrun, this rank's rows of every step (the trainer keeps the ranks one model)
    batches = ShuffledBatches(x_img, x_txt, y, recipe.batch_size, recipe.seed,
                              part=process_group())
    # CACNet's loss averages its per-label binary cross-entropies (DESIGN 2.4), so a label's
    # gradient shrinks with the label count: the recipe's lr is a step on their sum, as
    # fastText's one-vs-all takes it, and one value suits 9 classes and 113 tags alike.
    lr = recipe.lr * len(labels)
    trainer = CACNetTrainer(model, torch.optim.SGD(model.parameters(), lr=lr),
                            gamma_schedule=GammaSchedule(recipe.gamma, recipe.gamma_end,
                                                         ramp_epochs=max(recipe.epochs // 5, 1)),
                            distributed=True)

    cases = {"1": 0, "2": 0}  # steps that took each of the two cases of phase 2

    def epochs(done: int):  # the trainer's epochs one at a time, for select_epochs to score
        trainer.epoch = done
        for epoch in range(done + 1, recipe.epochs + 1):
            summary = trainer.fit(batches, epoch, progress=False)[-1]
            cases["1"] += summary["case1_steps"]
            cases["2"] += summary["case2_steps"]
            yield summary["loss"]

    loss = "ova" if multilabel else "softmax"
    sample = torch.randperm(len(y), generator=torch.Generator().manual_seed(recipe.seed))[
        :TRAIN_SAMPLE]

    @torch.no_grad()
    def scored(x_img, x_txt, truth) -> float:  # of the whole split: the ranks' shares gathered
        return score(gather_rows(model(x_img, x_txt)), gather_rows(truth), loss)

    valid_score = None
    if valid is not None:
        valid_inputs = [x.to(device) for x in inputs(*valid)]
        valid_truth = targets(valid[0], labels, multilabel).to(device)
        valid_score = lambda: scored(*valid_inputs, valid_truth)  # noqa: E731
    trained.stats = select_epochs(model, epochs, recipe.epochs, SCORE_NAMES[loss],
                                  lambda: scored(x_img[sample], x_txt[sample], truth[sample]),
                                  valid_score, recipe.patience, int(global_sum(torch.tensor(
                                      len(y)))), lr, progress,
                                  desc="train cacnet", resumable=Resumable(
                                      stage(state, recipe), model, [trainer.optimizer],
                                      {"shuffle": batches.generator}, counters=cases),
                                  stop_epoch=recipe.stop_epoch)
    trained.stats["case_steps"] = cases
    return trained

