"""Paper 004's AnANet as systems (``ananet`` and its ablations): image-text relevance
classification of records whose label says how the text relates to the image. The image is
read as regions [Kr, D] from the store (``mmfast features --regions grid``), the text as its
first ``num_words`` words' Word2Vec vectors (trained on the training texts, saved with the
checkpoint); ``AnANetTrainer`` trains the model, the best validation epoch is kept."""

import os
from collections.abc import Sequence
from pathlib import Path

import numpy as np
import torch

from mmfast._io import load_tensors
from mmfast.data import Record
from mmfast.defaults import AnANetRecipe
from mmfast.features.text_features import TextFeatures
from mmfast.nn.ananet import AnANet
from mmfast.systems.base import Fitted, Inputs, read_header, stage, targets
from mmfast.train.ananet import AnANetTrainer, ananet_inputs
from mmfast.train.checkpoint import load_checkpoint
from mmfast.train.distributed import gather_objects, gather_rows, global_sum
from mmfast.train.fasttext import SCORE_NAMES, score
from mmfast.train.resume import Resumable
from mmfast.train.selection import TRAIN_SAMPLE, select_epochs

WORDS = "words.safetensors"  # the Word2Vec vectors the texts are read with
VARIANT = {"ananet": "full", "ananet_alignment": "alignment",
           "ananet_association": "association", "ananet_concat": "concat"}


class TrainedAnANet(Fitted):
    def __init__(self, model: AnANet, words: TextFeatures, labels: Sequence[str],
                 recipe: AnANetRecipe, stats: dict):
        self.model, self.words, self.labels = model, words, tuple(labels)
        self.multilabel, self.recipe, self.stats = False, recipe, stats

    def features(self, records: Sequence[Record], image: np.ndarray,
                 with_targets: bool = False) -> dict[str, torch.Tensor]:
        """AnANet's inputs (``mmfast.train.ananet``'s feature mapping) of ``records``."""
        if image is None or np.ndim(image) != 3 or len(image) != len(records):
            raise ValueError(f"the {self.system} system needs region features [{len(records)}, "
                             f"Kr, D], got {None if image is None else np.shape(image)}")
        features = ananet_inputs(image, [record.text for record in records], self.words.vectors,
                                 self.recipe.num_words)
        if with_targets:
            features["labels"] = targets(records, self.labels, False)
        return features

    def _logits(self, records: Sequence[Record], image: np.ndarray | None) -> torch.Tensor:
        # log-probabilities: the same order and softmax as the fused logits
        return AnANetTrainer(self.model).predict(self.features(records, image)).log()

    def save(self, directory: str | os.PathLike, extractor: dict | None = None) -> None:
        self.save_with(directory, extractor, WORDS, self.words.tensors(),
                       words=self.words.config())


def load(directory: str | os.PathLike) -> TrainedAnANet:
    model, config = load_checkpoint(directory)
    labels, _, recipe = read_header(directory, config, model.config()["num_classes"],
                                    AnANetRecipe, ("words",))
    words = TextFeatures.from_state(config["words"], load_tensors(Path(directory) / WORDS))
    return TrainedAnANet(model, words, labels, recipe, {})


def fit(recipe: AnANetRecipe, train: Inputs, labels: Sequence[str], multilabel: bool,
        valid: Inputs | None = None, progress: bool = False, state=None,
        device: torch.device | str | None = None) -> TrainedAnANet:
    """AnANet trained on ``train`` (on ``device``; None: the CPU; the batches move there), the
    best epoch on ``valid`` kept."""
    records, image = train
    if multilabel:
        raise ValueError(f"the {recipe.model} system classifies each image-text pair into one "
                         "relevance class: expected single-label records, got multi-label ones")
    # on the whole split's texts: every rank's share gathered when the ranks hold shares
    words = TextFeatures.fit("word2vec", gather_objects([record.text for record in records]),
                             recipe.text_dim, seed=recipe.seed)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(recipe.seed)
        model = AnANet(num_classes=len(labels), num_regions=image.shape[1],
                       num_words=recipe.num_words, region_dim=image.shape[2],
                       word_dim=words.dim, context_dim=0, hidden_dim=recipe.dim,
                       inv_dim=recipe.dim // 2, variant=VARIANT[recipe.model])
    model.to(device or "cpu")
    trained = TrainedAnANet(model, words, labels, recipe, {})
    features = trained.features(records, image, with_targets=True)
    known = features["labels"] >= 0
    features = {key: value[known] for key, value in features.items()}
    trainer = AnANetTrainer(model, torch.optim.Adam(model.parameters(), lr=recipe.lr),
                            recipe.batch_size, distributed=True)
    generator = torch.Generator().manual_seed(recipe.seed)

    def epochs(done: int):  # the shuffles go on from the generator's (restored) state
        while True:
            yield trainer.fit(features, 1, generator)[0]

    sample = {key: value[:TRAIN_SAMPLE] for key, value in features.items()}

    def scored(split: dict) -> float:  # of the whole split: the ranks' shares gathered
        return score(gather_rows(trainer.predict(split)), gather_rows(split["labels"]),
                     "softmax")

    valid_score = None
    if valid is not None:
        valid_features = trained.features(*valid, with_targets=True)
        valid_score = lambda: scored(valid_features)  # noqa: E731
    trained.stats = select_epochs(
        model, epochs, recipe.epochs, SCORE_NAMES["softmax"], lambda: scored(sample),
        valid_score, recipe.patience, int(global_sum(known.sum())), recipe.lr, progress,
        desc=f"train {recipe.model}",
        resumable=Resumable(stage(state, recipe), model, [trainer.optimizer],
                            {"shuffle": generator}), stop_epoch=recipe.stop_epoch)
    return trained
