"""Paper 003 end to end: manifests + a feature store -> encoded examples -> trained models.

Shared by ``mmfast demo|train|classify|eval`` and ``benchmarks/bench_kiela.py``.
"""

import os
import warnings
from collections.abc import Sequence
from dataclasses import asdict, dataclass, replace
from pathlib import Path

import numpy as np
import torch
from tqdm import tqdm

from mmfast._io import locked
from mmfast.data import (DemoData, FeatureStore, Record, demo_cache_dir, emoji_dataset,
                         read_manifest)
# the recipes live in mmfast.defaults (torch-free, for the command line) and are this module's too
from mmfast.defaults import (DEFAULT_RECIPES, DEMO_IMAGE_SIZE, GATED_MODELS, GATES,  # noqa: F401
                             MODELS, MULTILABEL_RECIPES, PAPER_MODELS, RECIPE_GATES, Recipe)
from mmfast.features import BadImageError, ImageFeatureExtractor
from mmfast.nn import (ContinuousFusion, DiscretizedFastText, EarlyFusionMLP, FastText,
                       TextHasher)
from mmfast.quant import RSPQ, ProductQuantizer
from mmfast.train.checkpoint import load_checkpoint, save_checkpoint
from mmfast.train.fasttext import Examples, predict, train

_FUSION = {"continuous": "image", "additive": "additive", "max": "max", "gated": "gated",
           "bilinear": "bilinear", "bilinear_gated": "bilinear_gated"}


def image_store(records: Sequence[Record], directory: str | os.PathLike,
                extractor: ImageFeatureExtractor | None = None, progress: bool = True,
                skip_bad: bool = False, skipped: list[Record] | None = None) -> FeatureStore:
    """The feature store at ``directory`` holding ``records``' image features, extracted now
    only for the ids it lacks. Rows are committed every ``EXTRACT_CHUNK`` images
    (``FeatureStore.commit_chunk``) and merged into the store at the end, so a killed run loses
    at most one chunk: the next run on the same store takes up what it left. A repeated id is
    extracted once (a warning counts them); two records of one id with different images are a
    ValueError. An unreadable image is a ``BadImageError`` naming the record's id, or with
    ``skip_bad`` is left out of the store (appended to ``skipped`` when a list is given). The
    store is locked (``mmfast._io.locked``) from read to write: a second writer gets "in use
    by pid N" instead of replacing the first one's rows with its own."""
    unique = _unique_by_id(records, directory)
    with locked(directory, "another features run"):
        old = FeatureStore(directory) if FeatureStore.exists(directory) else None
        have = set() if old is None else set(old.ids)
        missing = [r for r in unique if r.id not in have]
        if not missing:
            return old
        extractor = extractor or ImageFeatureExtractor(image_size=DEMO_IMAGE_SIZE)
        meta = {"extractor": extractor.config()}
        if old is not None and old.meta.get("extractor") != meta["extractor"]:
            raise ValueError(f"{directory} holds features of {old.meta.get('extractor')}, "
                             f"not {extractor.config()}: use another store directory")
        done = set(FeatureStore.pending_ids(directory, meta))  # an interrupted run's rows
        missing = [r for r in missing if r.id not in done]
        committed = len(done)
        with tqdm(total=len(missing), desc="image features", unit="img",
                  disable=not progress, leave=False) as bar:
            for start in range(0, len(missing), EXTRACT_CHUNK):
                chunk = missing[start:start + EXTRACT_CHUNK]
                try:
                    rows, bad = extractor.extract([r.image for r in chunk], False, skip_bad)
                except BadImageError as error:
                    record = chunk[error.index]
                    raise BadImageError(start + error.index, f"id {record.id!r}: {error}",
                                        record.id) from None
                unreadable = set(bad)
                if skipped is not None:
                    skipped.extend(chunk[index] for index in bad)
                kept = [r.id for index, r in enumerate(chunk) if index not in unreadable]
                if kept:
                    FeatureStore.commit_chunk(directory, kept, rows, meta)
                    committed += len(kept)
                bar.update(len(chunk))
        if old is None and not committed:
            raise ValueError(f"{directory}: none of the {len(missing)} images could be read")
        return FeatureStore.merge_pending(directory, meta)


# Images extracted between commits: ~5-10 s of work at the demo's size on 2 cores, so a killed
# run loses little, while the chunk files stay few.
EXTRACT_CHUNK = 1024


def _unique_by_id(records: Sequence[Record], directory) -> list[Record]:
    first: dict[str, Record] = {}
    for record in records:
        seen = first.setdefault(record.id, record)
        if seen.image != record.image:
            raise ValueError(f"{directory}: id {record.id!r} names two images, {seen.image} and "
                             f"{record.image}: expected one image per id")
    if len(first) < len(records):
        warnings.warn(f"{len(records) - len(first)} repeated ids (same id and image) are "
                      "extracted once", stacklevel=3)
    return list(first.values())


def demo_image_store(records: Sequence[Record], progress: bool = True) -> FeatureStore:
    """``image_store`` of demo records (``mmfast.data.emoji_dataset``) in the demo's cache
    folder, with the default extractor: pooled EfficientNet-Lite0 at ``DEMO_IMAGE_SIZE`` px."""
    return image_store(records, demo_cache_dir() / f"features-lite0-{DEMO_IMAGE_SIZE}",
                       progress=progress)


def store_features(store: FeatureStore, records: Sequence[Record]) -> np.ndarray:
    """The store's ``image`` rows of ``records``, in their order."""
    return store["image"][store.rows([record.id for record in records])]


def demo_features(task: str) -> tuple[DemoData, list[Record], list[Record], np.ndarray,
                                      np.ndarray]:
    """The demo's ``task`` (``mmfast.data.emoji_dataset``): the dataset, its train and held-out
    records, and their image features from ``demo_image_store``."""
    data = emoji_dataset(task)
    train, heldout = read_manifest(data.train), read_manifest(data.heldout)
    store = demo_image_store(train + heldout)
    return data, train, heldout, store_features(store, train), store_features(store, heldout)


def targets(records: Sequence[Record], labels: Sequence[str], multilabel: bool) -> torch.Tensor:
    index = {label: i for i, label in enumerate(labels)}
    if multilabel:
        out = torch.zeros(len(records), len(labels))
        for row, record in enumerate(records):
            out[row, [index[label] for label in record.labels if label in index]] = 1.0
        return out
    return torch.tensor([index.get(record.labels[0], -100) if record.labels else -100
                         for record in records], dtype=torch.long)  # -100: ignored by the loss


def examples(records: Sequence[Record], hasher: TextHasher, image: np.ndarray | None,
             quantizer: ProductQuantizer | None = None, labels: Sequence[str] | None = None,
             multilabel: bool = False) -> Examples:
    """Encode records: text bags, image vectors (or their tokens), targets when ``labels``."""
    words, offsets = hasher.encode(record.text for record in records)
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


# What a checkpoint records of its training run (``Trained.stats``): the selection metric, the
# chosen epoch and its validation score, the per-epoch history, and an autotune summary.
_RECORDED = ("metric", "best_epoch", "valid_score", "valid_items", "history", "seconds",
             "autotune")


@dataclass
class Trained:
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

    def probabilities(self, examples: Examples) -> torch.Tensor:
        """[N, len(labels)]: softmax for single-label, per-label sigmoids for multi-label."""
        logits = predict(self.model, examples)
        return torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, 1)

    def save(self, directory: str | os.PathLike, extractor: dict | None = None) -> None:
        directory = Path(directory)
        if self.quantizer is not None:
            self.quantizer.save(directory / "quantizer")
        save_checkpoint(directory, self.model, {
            "labels": list(self.labels), "multilabel": self.multilabel,
            "recipe": asdict(self.recipe), "text": self.hasher.config(),
            "extractor": extractor, "quantizer": self.quantizer is not None,
            "training": {key: self.stats[key] for key in _RECORDED if key in self.stats},
        })

    @classmethod
    def load(cls, directory: str | os.PathLike) -> tuple["Trained", dict]:
        """The model ``save`` wrote; another checkpoint (a CACNet trainer's, a hand-edited
        config) is a ValueError naming what it lacks."""
        model, config = load_checkpoint(directory)
        where = Path(directory) / "config.json"
        missing = [key for key in ("labels", "multilabel", "recipe", "text", "quantizer")
                   if key not in config]
        if missing:
            raise ValueError(f"{where}: expected a checkpoint of mmfast train (paper 003's "
                             f"models), got a {config['model']} one without {missing}")
        labels = config["labels"]
        if not (isinstance(labels, list) and all(isinstance(label, str) for label in labels)
                and len(labels) == model.num_classes):
            raise ValueError(f"{where}: labels must be a list of {model.num_classes} strings "
                             f"(one per output of the model), got {labels!r:.80}")
        try:
            recipe = Recipe(**config["recipe"])
            hasher = TextHasher.from_config(config["text"])
        except (TypeError, KeyError) as error:
            raise ValueError(f"{where}: recipe or text hasher not as mmfast train writes them "
                             f"({error})") from None
        quantizer = (ProductQuantizer.load(Path(directory) / "quantizer")
                     if config["quantizer"] else None)
        return cls(model, hasher, quantizer, tuple(labels), bool(config["multilabel"]), recipe,
                   {}), config


def fit(recipe: Recipe, records: Sequence[Record], image: np.ndarray | None,
        labels: Sequence[str], multilabel: bool, progress: bool = False,
        valid: tuple[Sequence[Record], np.ndarray | None] | None = None) -> Trained:
    """Train ``recipe.model`` on ``records`` with image features ``image`` [N, D] (None for
    the text model). With
    ``valid`` = (records, image features), the model is scored on them after every epoch and
    keeps its best epoch's weights; ``recipe.patience`` epochs without progress end the run.

    ``recipe.gate`` "auto" trains a gated model once per gating modality and returns the one
    with the better validation score (the text gate on ties, or without ``valid``); its
    recipe names the modality chosen."""
    if recipe.gate == "auto" and recipe.model in GATED_MODELS and valid is not None:
        candidates = [_fit_once(replace(recipe, gate=gate), records, image, labels, multilabel,
                                progress, valid) for gate in GATES]
        best = max(candidates, key=lambda trained: trained.stats["valid_score"])
        best.stats["seconds"] = sum(trained.stats["seconds"] for trained in candidates)
        return best
    if recipe.gate == "auto":
        recipe = replace(recipe, gate="text")
    return _fit_once(recipe, records, image, labels, multilabel, progress, valid)


def _fit_once(recipe: Recipe, records: Sequence[Record], image: np.ndarray | None,
              labels: Sequence[str], multilabel: bool, progress: bool,
              valid: tuple[Sequence[Record], np.ndarray | None] | None) -> Trained:
    torch.manual_seed(recipe.seed)
    hasher = TextHasher.build((r.text for r in records), buckets=recipe.buckets,
                              ngrams=recipe.ngrams)
    quantizer = build_quantizer(recipe, image)
    if image is None and recipe.model != "text":
        raise ValueError(f"fit: the {recipe.model!r} model needs image features, got None")
    model = build_model(recipe, hasher, 0 if image is None else image.shape[1], len(labels),
                        quantizer)
    trained = Trained(model, hasher, quantizer, tuple(labels), multilabel, recipe, {})
    data = trained.examples(records, image)
    if isinstance(model, ContinuousFusion):
        model.center_images(data.image)
    elif isinstance(model, EarlyFusionMLP):
        model.fit_statistics(data.words, data.offsets, data.image)
    valid_data = None if valid is None else trained.examples(*valid)
    trained.stats = train(model, data, epochs=recipe.epochs, lr=recipe.lr,
                          batch_size=recipe.batch_size, loss="ova" if multilabel else "softmax",
                          seed=recipe.seed, valid=valid_data, patience=recipe.patience,
                          weight_decay=recipe.weight_decay, optimizer=recipe.optimizer,
                          progress=progress)
    return trained
