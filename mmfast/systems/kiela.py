"""Paper 003's models (Kiela et al.) and the early-fusion MLP baseline as systems: records with
their image features -> fastText-style hashed text + image vectors or PQ/RSPQ tokens -> the
trained model (``fit``), its checkpoint (``Trained.save``, ``load``).
"""

import os
from collections.abc import Sequence
from dataclasses import dataclass, replace
from pathlib import Path

import numpy as np
import torch

from mmfast.data import Record
from mmfast.defaults import FASTTEXT_MODELS, GATED_MODELS, GATES, TEXT_LR_SCALES, Recipe
from mmfast.nn import (ContinuousFusion, DiscretizedFastText, EarlyFusionMLP, FastText,
                       TextHasher)
from mmfast.ops.hash_text import PackedTexts, count_words
from mmfast.quant import RSPQ, ProductQuantizer
from mmfast.systems.base import (Fitted, Inputs, choose_on_validation, read_header, stage,
                                 targets)
from mmfast.train.checkpoint import load_checkpoint, save_checkpoint
from mmfast.train.distributed import (data_sharded, gather_rows, merged_counts,
                                      process_group, share_total)
from mmfast.train.fasttext import Examples, predict, train

_FUSION = {"continuous": "image", "additive": "additive", "max": "max", "gated": "gated",
           "bilinear": "bilinear", "bilinear_gated": "bilinear_gated"}


def examples(records: Sequence[Record], hasher: TextHasher, image: np.ndarray | None,
             quantizer: ProductQuantizer | None = None, labels: Sequence[str] | None = None,
             multilabel: bool = False, texts: Sequence[str] | None = None) -> Examples:
    """Encode records: text bags, image vectors (or their tokens), targets when ``labels``.
    ``texts``: the records' texts when the caller has them (``PackedTexts``: packed once)."""
    words, offsets = hasher.encode(texts if texts is not None else
                                   [record.text for record in records])
    image_tensor = None if image is None else torch.from_numpy(np.asarray(image, np.float32))
    if quantizer is not None and image_tensor is not None:
        image_tensor = quantizer.tokens(image_tensor)
    target = None if labels is None else targets(records, labels, multilabel)
    return Examples(words, offsets, image_tensor, target)


def build_model(recipe: Recipe, hasher: TextHasher, image_dim: int, num_classes: int,
                quantizer: ProductQuantizer | None):
    _check_table_fits(recipe, hasher.num_embeddings)
    if recipe.model == "text":
        return FastText(hasher.num_embeddings, recipe.dim, num_classes)
    if recipe.model in ("pq", "rspq"):
        return DiscretizedFastText(hasher.num_embeddings, quantizer.num_tokens, recipe.dim,
                                   num_classes, alpha=recipe.alpha)
    if recipe.model == "mlp":
        return EarlyFusionMLP(hasher.num_embeddings, image_dim, recipe.dim, num_classes,
                              dropout=recipe.dropout)
    return ContinuousFusion(hasher.num_embeddings, image_dim, recipe.dim, num_classes,
                            fusion=_FUSION[recipe.model], gate=recipe.gate)


def _check_table_fits(recipe: Recipe, rows: int) -> None:
    """A ValueError, before anything is allocated, when the embedding table (rows x dim floats,
    three times that under Adam's two moments) would take more than half the machine's memory:
    the mlp at dim 2048 with 2M buckets asks for 48 GB, which the allocator refuses with a
    RuntimeError deep inside the model (and autotune, whose failed trials are ValueErrors,
    stopped there)."""
    copies = 3 if recipe.optimizer == "adam" and recipe.model == "mlp" else 1
    needed = rows * recipe.dim * 4 * copies
    memory = os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES")
    if needed > memory // 2:
        raise ValueError(f"the {recipe.model!r} model's embedding table ({rows:,} rows = "
                         f"vocabulary + buckets {recipe.buckets:,}, x dim {recipe.dim}) needs "
                         f"{needed / 2**30:.1f} GiB, more than half this machine's "
                         f"{memory / 2**30:.1f} GiB: lower --buckets or --dim")


def build_quantizer(recipe: Recipe, train_image: np.ndarray) -> ProductQuantizer | None:
    if recipe.model not in ("pq", "rspq"):
        return None
    dim = train_image.shape[1]
    if recipe.model == "pq":
        quantizer = ProductQuantizer(dim, recipe.subvectors, recipe.centroids, seed=recipe.seed)
    else:
        quantizer = RSPQ(dim, recipe.subvectors, recipe.centroids, recipe.repetitions,
                         seed=recipe.seed)
    return quantizer.fit(torch.from_numpy(np.asarray(train_image, np.float32)), iters=15)


# k-means rows of a quantizer fitted on a split the ranks hold in shares: a seeded sample of
# each rank's, all gathered (faiss, too, trains its quantizers on a sample)
QUANTIZER_SAMPLE = 65_536


def _quantizer_sample(image: np.ndarray, seed: int) -> np.ndarray:
    """Up to ``QUANTIZER_SAMPLE`` rows of the whole split: this rank's seeded share of them
    with every other rank's, the same on every rank."""
    rows = torch.from_numpy(np.asarray(image, np.float32))
    generator = torch.Generator().manual_seed(seed)
    keep = torch.randperm(len(rows), generator=generator)[:QUANTIZER_SAMPLE // process_group()[1]]
    return gather_rows(rows[keep.sort().values]).numpy()


@dataclass
class Trained(Fitted):
    model: torch.nn.Module
    hasher: TextHasher
    quantizer: ProductQuantizer | None
    labels: tuple[str, ...]
    multilabel: bool
    recipe: Recipe
    stats: dict

    def examples(self, records: Sequence[Record], image: np.ndarray | None,
                 with_targets: bool = True) -> Examples:
        return examples(records, self.hasher, image, self.quantizer,
                        self.labels if with_targets else None, self.multilabel)

    def _logits(self, records: Sequence[Record], image: np.ndarray | None) -> torch.Tensor:
        return predict(self.model, self.prepare(records, image))

    def prepare(self, records: Sequence[Record], image: np.ndarray | None) -> Examples:
        return self.examples(records, image, with_targets=False)

    def probabilities_of(self, prepared: Examples) -> torch.Tensor:
        return self._activated(predict(self.model, prepared))

    def save(self, directory: str | os.PathLike, extractor: dict | None = None) -> None:
        directory = Path(directory)
        if self.quantizer is not None:
            self.quantizer.save(directory / "quantizer")
        save_checkpoint(directory, self.model, {
            **self.header(extractor), "text": self.hasher.config(),
            "quantizer": self.quantizer is not None})


def load(directory: str | os.PathLike) -> Trained:
    """The model ``Trained.save`` wrote; a hand-edited config is a ValueError naming what is
    wrong."""
    model, config = load_checkpoint(directory)
    labels, multilabel, recipe = read_header(directory, config, model.num_classes, Recipe,
                                             ("text", "quantizer"))
    try:
        hasher = TextHasher.from_config(config["text"])
        quantizer = (ProductQuantizer.load(Path(directory) / "quantizer")
                     if config["quantizer"] else None)
    except (TypeError, KeyError) as error:
        raise ValueError(f"{Path(directory) / 'config.json'}: text hasher or quantizer not as "
                         f"mmfast train writes them ({error})") from None
    return Trained(model, hasher, quantizer, labels, multilabel, recipe, {})


def fit(recipe: Recipe, train_inputs: Inputs, labels: Sequence[str], multilabel: bool,
        valid: Inputs | None = None, progress: bool = False, state=None,
        device: torch.device | str | None = None) -> Trained:
    """Train ``recipe.model`` on ``train_inputs`` = (records, image features [N, D], None for
    the text model). With ``valid`` = (records, image features), the model is scored on them
    after every epoch and keeps its best epoch's weights; ``recipe.patience`` epochs without
    progress end the run.

    ``recipe.gate`` "auto" trains a gated model once per gating modality and returns the one
    with the better validation score (the text gate on ties, or without ``valid``); its
    recipe names the modality chosen. ``recipe.text_lr_scale`` "auto" does the same with each
    of ``TEXT_LR_SCALES`` (the first on ties or without ``valid``); fastText's models, whose
    one table holds the text and the image tokens, step it at ``lr`` whatever it says.

    ``device``: where the autograd-trained models train (None: the CPU); fastText's models
    (text, pq, rspq) train by Hogwild SGD on the CPU whatever it says, one example a step
    leaving a GPU idle. The trained model stays there (``Trained.to`` moves it)."""
    if recipe.model not in GATED_MODELS and recipe.gate == "auto":
        recipe = replace(recipe, gate="text")  # read by no other model
    if recipe.model in FASTTEXT_MODELS:
        recipe = replace(recipe, text_lr_scale=1.0)

    def fit_gates(run: Recipe) -> Trained:
        return choose_on_validation(
            lambda gated: _fit_once(gated, *train_inputs, labels, multilabel, progress, valid,
                                    state, device),
            run, "gate", GATES, valid)
    return choose_on_validation(fit_gates, recipe, "text_lr_scale", TEXT_LR_SCALES, valid)


def _fit_once(recipe: Recipe, records: Sequence[Record], image: np.ndarray | None,
              labels: Sequence[str], multilabel: bool, progress: bool,
              valid: Inputs | None, state=None, device=None) -> Trained:
    torch.manual_seed(recipe.seed)
    # under torchrun with each rank holding its share, the fits are of the whole split: the
    # ranks' word counts merged, the quantizers' k-means on a sample gathered from every rank,
    # the image mean and document frequencies summed (distributed.global_sum)
    texts = PackedTexts([record.text for record in records])  # counted, then encoded
    hasher = TextHasher.from_counts(merged_counts(count_words(texts)), buckets=recipe.buckets,
                                    ngrams=recipe.ngrams)
    if image is None and recipe.model != "text":
        raise ValueError(f"fit: the {recipe.model!r} model needs image features, got None")
    quantizer = build_quantizer(recipe, image if image is None or not data_sharded() else
                                _quantizer_sample(image, recipe.seed))
    model = build_model(recipe, hasher, 0 if image is None else image.shape[1], len(labels),
                        quantizer)
    trained = Trained(model, hasher, quantizer, tuple(labels), multilabel, recipe, {})
    data = examples(records, hasher, image, quantizer, trained.labels, multilabel, texts)
    total = share_total()
    if isinstance(model, ContinuousFusion):
        model.center_images(data.image, total)
    elif isinstance(model, EarlyFusionMLP):
        model.fit_statistics(data.words, data.offsets, data.image, total)
    if device is not None and recipe.model not in FASTTEXT_MODELS:
        model.to(device)
    valid_data = None if valid is None else trained.examples(*valid)
    trained.stats = train(model, data, epochs=recipe.epochs, lr=recipe.lr,
                          batch_size=recipe.batch_size, loss="ova" if multilabel else "softmax",
                          seed=recipe.seed, valid=valid_data, patience=recipe.patience,
                          weight_decay=recipe.weight_decay, text_lr_scale=recipe.text_lr_scale,
                          optimizer=recipe.optimizer, progress=progress,
                          desc=f"train {recipe.model}", average_every=recipe.average_every,
                          checkpoints=stage(state, recipe), stop_epoch=recipe.stop_epoch)
    return trained
