"""What every trained system shares: its labels and task kind, its recipe and training
figures, scoring records, and the header of its checkpoint's config.json."""

import os
from collections.abc import Sequence
from dataclasses import asdict, replace
from pathlib import Path

import numpy as np
import torch

from mmfast.data import Record
from mmfast.systems import CHECKPOINT_FORMAT
from mmfast._io import save_tensors_atomic
from mmfast.train.checkpoint import CONFIG, save_checkpoint

# (records, image features [N, D] or None): a split as the systems take it
Inputs = tuple[Sequence[Record], np.ndarray | None]

# What a checkpoint records of its training run (``Fitted.stats``): the selection metric, the
# chosen epoch and its validation score, the per-epoch history, an autotune summary, and the
# refit on the training and validation items together (``System.refit``).
RECORDED = ("metric", "best_epoch", "valid_score", "valid_items", "history", "seconds",
            "autotune", "case_steps", "refit")


class Fitted:
    """A trained system. Subclasses set ``model`` (the ``torch.nn`` module its checkpoint
    holds), ``labels`` (tuple of str), ``multilabel``, ``recipe`` (the dataclass it trained
    with) and ``stats`` (``mmfast.train.selection``'s figures), and implement ``logits`` and
    ``save``."""

    labels: tuple[str, ...]
    multilabel: bool
    recipe: object
    stats: dict
    extractor: dict | None = None

    @property
    def system(self) -> str:
        return self.recipe.model

    def logits(self, records: Sequence[Record], image: np.ndarray | None) -> torch.Tensor:
        """[N, len(labels)] scores of ``records`` with their image features."""
        if not len(records):
            return torch.empty(0, len(self.labels))
        return self._logits(records, image)

    def _logits(self, records: Sequence[Record], image: np.ndarray | None) -> torch.Tensor:
        """``logits`` of at least one record, on the CPU: what each system implements (its
        network runs on its device, the inputs moved there)."""
        raise NotImplementedError

    def to(self, device: torch.device | str) -> "Fitted":
        """This system with its network on ``device`` (what it fitted of its inputs, and its
        logits, stay on the CPU)."""
        self.model.to(device)
        return self

    def probabilities(self, records: Sequence[Record], image: np.ndarray | None
                      ) -> torch.Tensor:
        """[N, len(labels)]: softmax for single-label, per-label sigmoids for multi-label."""
        return self._activated(self.logits(records, image))

    def prepare(self, records: Sequence[Record], image: np.ndarray | None) -> object:
        """The work of ``probabilities`` before its network (text hashing, image tokens) done
        apart: ``mmfast classify`` runs it on a thread of its own, a batch ahead of the
        network's. Its result is ``probabilities_of``'s argument; a system without such work
        returns its inputs."""
        return records, image

    def probabilities_of(self, prepared: object) -> torch.Tensor:
        """``probabilities`` of what ``prepare`` returned."""
        return self.probabilities(*prepared)

    def _activated(self, logits: torch.Tensor) -> torch.Tensor:
        return torch.sigmoid(logits) if self.multilabel else torch.softmax(logits, 1)

    def targets(self, records: Sequence[Record]) -> torch.Tensor:
        return targets(records, self.labels, self.multilabel)

    def save(self, directory: str | os.PathLike, extractor: dict | None = None) -> None:
        raise NotImplementedError

    def save_with(self, directory: str | os.PathLike, extractor: dict | None, tensors_file: str,
                  tensors: dict[str, torch.Tensor], **config) -> None:
        """The checkpoint of a system whose inputs are fitted too: their ``tensors`` in
        ``tensors_file`` beside the model, then the model and config.json (``header`` and
        ``config``), written last as ever."""
        directory = Path(directory)
        directory.mkdir(parents=True, exist_ok=True)
        save_tensors_atomic(directory / tensors_file, tensors)
        save_checkpoint(directory, self.model, {**self.header(extractor), **config})

    def header(self, extractor: dict | None) -> dict:
        """The config.json entries every system's checkpoint has."""
        return {"system": self.system, "format": CHECKPOINT_FORMAT, "labels": list(self.labels),
                "multilabel": self.multilabel, "recipe": asdict(self.recipe),
                "extractor": extractor,
                "training": {key: self.stats[key] for key in RECORDED if key in self.stats}}


def stage(state, recipe):
    """The ``mmfast.train.resume`` stage of ``recipe``'s model in the run's ``state`` (None:
    the run saves no state)."""
    return None if state is None else state.stage(asdict(recipe))


def choose_on_validation(fit_once, recipe, field: str, options: tuple, valid):
    """``fit_once(recipe)`` with ``recipe``'s ``field`` resolved: when it is "auto", one run
    per value of ``options`` and the one that validates best (the first on ties, the first
    option without ``valid``), its ``seconds`` the runs' total; its recipe names the value."""
    if getattr(recipe, field) != "auto":
        return fit_once(recipe)
    if valid is None:
        return fit_once(replace(recipe, **{field: options[0]}))
    candidates = [fit_once(replace(recipe, **{field: option})) for option in options]
    best = max(candidates, key=lambda fitted: fitted.stats["valid_score"])
    best.stats["seconds"] = sum(fitted.stats["seconds"] for fitted in candidates)
    return best


def read_header(directory: str | os.PathLike, config: dict, num_outputs: int, recipe_type: type,
                keys: tuple[str, ...] = ()) -> tuple[tuple[str, ...], bool, object]:
    """``(labels, multilabel, recipe)`` of a checkpoint's config, checked against its model's
    ``num_outputs``, and the system's own ``keys`` present; a ValueError naming the file and
    what is wrong otherwise."""
    where = Path(directory) / CONFIG
    missing = [key for key in ("labels", "multilabel", "recipe", *keys) if key not in config]
    if missing:
        raise ValueError(f"{where}: expected a checkpoint of mmfast train (labels, recipe, "
                         f"settings), got a {config.get('model')} one without {missing}")
    labels = config["labels"]
    if not (isinstance(labels, list) and all(isinstance(label, str) for label in labels)
            and len(labels) == num_outputs):
        raise ValueError(f"{where}: labels must be a list of {num_outputs} strings (one per "
                         f"output of the model), got {labels!r:.80}")
    try:
        recipe = recipe_type(**config["recipe"])
    except (TypeError, ValueError) as error:
        raise ValueError(f"{where}: recipe not as mmfast train writes it ({error})") from None
    return tuple(labels), bool(config["multilabel"]), recipe


def targets(records: Sequence[Record], labels: Sequence[str], multilabel: bool) -> torch.Tensor:
    """Multi-label: {0,1} [N, len(labels)]. Single-label: class indices [N], -100 (ignored by
    the losses, a miss in the metrics) for an item whose label is not in ``labels``."""
    index = {label: i for i, label in enumerate(labels)}
    if multilabel:
        out = torch.zeros(len(records), len(labels))
        for row, record in enumerate(records):
            out[row, [index[label] for label in record.labels if label in index]] = 1.0
        return out
    return torch.tensor([index.get(record.labels[0], -100) if record.labels else -100
                         for record in records], dtype=torch.long)


def one_hot(targets: torch.Tensor, num_classes: int) -> torch.Tensor:
    """{0,1} [N, C] of single-label ``targets`` [N] (a -100 row stays all 0)."""
    out = torch.zeros(len(targets), num_classes, device=targets.device)
    known = targets >= 0
    out[known.nonzero().flatten(), targets[known]] = 1.0
    return out
