"""The systems users train and run, by name: ``mmfast train --model NAME``, ``mmfast models``,
``mmfast.Classifier(system=NAME)`` and the benchmarks all look them up here, and nothing above
this registry knows a particular paper.

Each entry declares what the system is (paper, task kinds, whether it needs image features,
how it reads text), its recipe (a dataclass of ``mmfast.defaults`` whose ``default(name,
multilabel, **overrides)`` gives the recipe ``mmfast train`` uses without flags) and the module
under ``mmfast.systems`` that implements it. That module provides

- ``fit(recipe, train, labels, multilabel, valid=None, progress=False, state=None,
  device=None) -> Fitted``,
  where ``train`` and ``valid`` are ``(records, image features [N, D] or None)`` and
  ``state`` the ``TrainingState`` it saves every few epochs and resumes from;
- ``load(directory) -> Fitted`` for the checkpoints its ``Fitted.save`` writes;

and its ``Fitted`` (``mmfast.systems.base``) scores records (``logits``, ``probabilities``)
and saves itself. Adding a system is one such module and one line in ``SYSTEMS`` below.

This module imports no torch: the command builds its parser and help from it.
"""

import importlib
import json
from dataclasses import dataclass, replace
from pathlib import Path

from mmfast.defaults import (ANANETS, AUTOENCODERS, MODELS, AnANetRecipe, AutoencoderRecipe,
                             CACNetRecipe, Recipe)

# Task kinds: one label per item, a set of labels per item, or one relevance class per
# image-text pair (a single-label task whose label says how the text relates to the image).
SINGLE, MULTI, RELEVANCE = "single-label", "multi-label", "relevance"
# What a system reads of the images: the store's pooled vectors [N, D] (``mmfast features``)
# or its regions [N, Kr, D] (``mmfast features --regions grid``); None: no image.
POOLED, REGIONS = "pooled", "regions"
# The checkpoint layout this version writes and reads; a newer one is refused by name.
CHECKPOINT_FORMAT = 1
# A refit (``System.refit``) pays where validation kept an epoch at least this share of the
# way through the schedule. Held out, two seeds each, paper 003's ten models and CACNet on the
# emoji groups and subgroups and on four icon sets (oxygen at 48, 32 and 22 px, Adwaita), and
# AnANet on the emoji relevance task: over the 109 runs that kept an epoch from a quarter on the
# refit gained 0.8 point on average (18 lost, at most 3.0 points); over the 17 that kept an
# earlier one it lost 1.1 (12 lost, up to 4.9). Those are mostly the text model on the icons,
# which fits the names in a few epochs at a learning rate that still swings the validation
# score by points an epoch: the kept epoch is a lucky swing that a run on other items does not
# repeat.
REFIT_FROM = 0.25


@dataclass(frozen=True)
class System:
    name: str
    paper: str
    module: str
    recipe: type
    tasks: tuple[str, ...]
    image: str | None
    text: str  # how it reads the text; "" for a system that reads none
    summary: str

    def default_recipe(self, multilabel: bool = False, num_labels: int | None = None,
                       **overrides):
        """The recipe ``mmfast train --model NAME`` uses on a task of ``num_labels`` classes
        (when known), with ``overrides`` on top."""
        return self.recipe.default(self.name, multilabel, num_labels, **overrides)

    def implementation(self):
        return importlib.import_module(f"mmfast.systems.{self.module}")

    def fit(self, recipe, train, labels, multilabel: bool, valid=None, progress: bool = False,
            state=None, device=None):
        """``recipe`` trained on ``train`` = (records, image features), ``valid`` the same;
        ``state``: the ``mmfast.train.resume.TrainingState`` the run saves and resumes;
        ``device``: where its network trains (None: the CPU; fastText's models train on the
        CPU whatever it says)."""
        for inputs in (train, valid):
            if inputs is not None:
                self.check_image(inputs[1])
        return self.implementation().fit(recipe, train, labels, multilabel, valid, progress,
                                         state, device)

    def refit(self, trained, train, valid, progress: bool = False, device=None):
        """``trained``'s recipe, its "auto" choices as validation made them, trained again on
        ``train`` and ``valid`` together up to the epoch it kept, without validation
        (scikit-learn's refit: the baselines' protocol). The learning-rate schedule stays
        planned over the recipe's epochs, its ``stop_epoch`` ending the run where validation
        kept the first. Held-out, two seeds: tags mlp P@1 0.784 -> 0.790 and mAP 0.651 ->
        0.658, group additive 0.769 -> 0.782, oxygen icons mlp 0.859 -> 0.872, subgroup text
        0.449 -> 0.461; but where validation kept an early epoch of a noisy run the refit
        does not find that peak again: the icons' text model kept epoch 2 and 8 of 80 and
        fell 0.852 -> 0.814 (``refit_pays`` says where it pays). Its stats are the
        selection's, with ``refit``: the epochs, the items and the seconds of the second run. A
        system without epochs to choose (the autoencoders) trains its recipe again."""
        import numpy as np

        records = [*train[0], *valid[0]]
        image = None if train[1] is None else np.concatenate([train[1], valid[1]])
        epochs = trained.stats["best_epoch"]
        recipe = replace(trained.recipe, stop_epoch=epochs) if self.chooses_epochs \
            else trained.recipe
        again = self.fit(recipe, (records, image), trained.labels, trained.multilabel, None,
                         progress, None, device)
        again.stats = {**trained.stats, "refit": {"epochs": epochs, "items": len(records),
                                                  "seconds": again.stats["seconds"]}}
        return again

    @property
    def chooses_epochs(self) -> bool:
        """Whether validation chooses the system's epoch (its recipe has ``stop_epoch``, where
        a refit stops); the autoencoders train a fixed number."""
        return hasattr(self.recipe, "stop_epoch")

    def refit_pays(self, trained) -> bool:
        """Whether ``mmfast train`` refits ``trained`` unasked: its system chooses epochs and
        validation kept one at least ``REFIT_FROM`` of the way through the recipe's epochs."""
        return (self.chooses_epochs and "best_epoch" in trained.stats
                and trained.stats["best_epoch"] >= REFIT_FROM * trained.recipe.epochs)

    def check_image(self, image) -> None:
        """A ValueError unless ``image`` is what the system reads: pooled vectors [N, D],
        regions [N, Kr, D], or (a system that reads no image) anything."""
        if self.image is None:
            return
        ndim = None if image is None else getattr(image, "ndim", None)
        if ndim == (3 if self.image == REGIONS else 2):
            return
        expected = ("region features [N, Kr, D] (a store of mmfast features --regions grid)"
                    if self.image == REGIONS else
                    "pooled image features [N, D] (a store of mmfast features)")
        got = "none" if image is None else (
            f"{'region' if ndim == 3 else 'pooled' if ndim == 2 else 'image'} features of shape "
            f"{tuple(image.shape)}")
        raise ValueError(f"the {self.name} system reads {expected}, got {got}")


_KIELA = "003 Kiela et al."
_HASHED = "hashed words and n-grams, learned embeddings"
_VECTOR = "one vector per text (--text-features)"
_KIELA_SUMMARIES = {
    "text": "fastText: text only", "continuous": "image features only",
    "additive": "sum of text and image embeddings", "max": "element-wise max fusion",
    "gated": "one modality gates the other", "bilinear": "bilinear fusion (fused op)",
    "bilinear_gated": "gated bilinear fusion (fused op)",
    "pq": "fastText over words + PQ image tokens", "rspq": "fastText over words + RSPQ tokens",
    "mlp": "baseline: early-fusion MLP on [image ; text]",
}

SYSTEMS: dict[str, System] = {system.name: system for system in (
    *(System(name, "baseline" if name == "mlp" else _KIELA, "kiela", Recipe, (SINGLE, MULTI),
             None if name == "text" else POOLED, "" if name == "continuous" else _HASHED,
             _KIELA_SUMMARIES[name])
      for name in MODELS),
    System("cacnet", "000 CACNet", "cacnet", CACNetRecipe, (SINGLE, MULTI), POOLED, _VECTOR,
           "cross-active connections between an image and a text network"),
    *(System(name, "002 autoencoders", "autoencoder", AutoencoderRecipe, (SINGLE, MULTI),
             POOLED, _VECTOR, summary) for name, summary in zip(AUTOENCODERS, (
                 "joint autoencoder features + per-label logistic probes",
                 "cross-modal (image -> text) features + probes",
                 "cross-modal (image -> image, text) features + probes"))),
    *(System(name, "004 AnANet", "ananet", AnANetRecipe, (RELEVANCE,), REGIONS,
             "word vectors trained on the texts, through a BiGRU", summary)
      for name, summary in zip(ANANETS, (
          "image-text relevance: association + alignment nets",
          "ablation: the alignment net (regions vs words) alone",
          "ablation: the association net alone", "ablation: concatenated encodings"))),
)}


def get(name: str) -> System:
    if name not in SYSTEMS:
        raise ValueError(f"system must be one of {tuple(SYSTEMS)}, got {name!r}")
    return SYSTEMS[name]


def load(directory):
    """The ``Fitted`` system a checkpoint directory holds (``mmfast train``'s or
    ``Classifier.save``'s), whatever its system."""
    from mmfast.train.checkpoint import CONFIG, _read_config

    config = _read_config(directory)
    where = Path(directory) / CONFIG
    found = config.get("format", 1)
    if not isinstance(found, int) or found > CHECKPOINT_FORMAT:
        raise ValueError(f"{where}: format {found!r} was written by a newer mmfast (this one "
                         f"reads format {CHECKPOINT_FORMAT} and older): upgrade mmfast")
    # format 1 checkpoints written before the registry name their system in their recipe
    name = config.get("system") or (config.get("recipe") or {}).get("model")
    if name not in SYSTEMS:
        raise ValueError(f"{where}: expected a checkpoint of one of mmfast's systems "
                         f"{tuple(SYSTEMS)}, got {json.dumps(name) if name else 'none named'}"
                         f" (model {config.get('model')!r})")
    fitted = SYSTEMS[name].implementation().load(directory)
    fitted.extractor = config.get("extractor")  # how its image features were extracted
    return fitted


__all__ = ["SYSTEMS", "System", "get", "load", "SINGLE", "MULTI", "RELEVANCE", "POOLED", "REGIONS",
           "CHECKPOINT_FORMAT"]
