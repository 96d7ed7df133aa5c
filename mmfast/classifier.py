"""Drop-in use from Python: train, save, load and apply any of mmfast's systems
(``mmfast.systems.SYSTEMS``, as ``mmfast models`` lists them) without manifests or feature
stores.

    clf = mmfast.Classifier("additive").fit(texts, images, labels)  # or system="cacnet", ...
    clf.save("ckpt")                     # the checkpoint `mmfast train` writes
    clf = mmfast.load("ckpt")            # or one `mmfast train` wrote
    clf.predict(texts, images, top_k=3)  # [["label", ...], ...]

``images`` are image files (paths), PIL images, image tensors [3, H, W] in [0, 1], or
precomputed features [N, D] (an array or tensor, as ``mmfast features`` stores them); the
systems that read no image (the text model) take ``images=None``. Files, PIL images and
tensors go through the image extractor the checkpoint records, so the model sees the features
it was trained on.
"""

import os
from collections.abc import Sequence
from dataclasses import asdict

import numpy as np
import torch

from mmfast import systems
from mmfast.data import Record
from mmfast.defaults import DEMO_IMAGE_SIZE, REGION_IMAGE_SIZE
from mmfast.features import (GridRegionFeatureExtractor, ImageFeatureExtractor,
                             extractor_from_config)
from mmfast.features.image import image_tensor, load_image
from mmfast.systems.base import Fitted

Labels = str | Sequence[str]


class Classifier:
    """A ``system`` of ``mmfast.systems.SYSTEMS`` with its ``recipe`` (over the system's default
    recipe for the task kind the labels ``fit`` gets), image extractor and labels. ``fit`` trains
    it, ``scores``/``predict`` apply it, ``save`` writes the checkpoint ``mmfast classify``/
    ``eval`` read and ``load`` reads it back."""

    def __init__(self, system: str = "additive", extractor: ImageFeatureExtractor | None = None,
                 device: str | torch.device = "cpu", **recipe):
        self.system = systems.get(system)
        self.recipe = self.system.default_recipe(**recipe)  # checks the arguments now
        self._overrides = recipe
        self._extractor = extractor
        self._extractor_config = None if extractor is None else extractor.config()
        self._own_extractor = False  # built here on first use, on self.device
        self.device = torch.device(device)
        self.trained: Fitted | None = None

    def to(self, device: str | torch.device) -> "Classifier":
        """Train and apply the network on ``device`` from now on, the trained one moved there
        (as ``nn.Module.to``; an extractor passed in keeps its own device). fastText's models
        train on the CPU whatever it says."""
        self.device = torch.device(device)
        if self.trained is not None:
            self.trained.to(self.device)
        if self._own_extractor:
            self._extractor, self._own_extractor = None, False  # built again on the device
        return self

    @classmethod
    def load(cls, directory: str | os.PathLike) -> "Classifier":
        trained = systems.load(directory)
        recipe = asdict(trained.recipe)  # a later fit trains this recipe again
        classifier = cls(recipe.pop("model"), **recipe)
        classifier.trained = trained
        classifier._extractor_config = trained.extractor
        return classifier

    @property
    def labels(self) -> tuple[str, ...]:
        return self._fitted().labels

    def fit(self, texts: Sequence[str], images, labels: Sequence[Labels],
            valid: tuple[Sequence[str], object, Sequence[Labels]] | None = None,
            refit: bool = False) -> "Classifier":
        """Train on ``texts`` with their ``images`` and ``labels`` (one label per item, or a
        list of labels per item for multi-label); ``valid`` = (texts, images, labels) selects
        the best epoch as ``mmfast train --valid`` does, and ``refit`` then trains on both
        sets up to that epoch (``--refit``)."""
        if refit and valid is None:
            raise ValueError("Classifier.fit: refit needs valid= (the set that chooses the "
                             "epochs), got none")
        records = _records(texts, labels)
        multilabel = any(not isinstance(label, str) for label in labels)
        names = sorted({label for record in records for label in record.labels})
        if not names:
            raise ValueError("Classifier.fit: labels must name at least one class, got none")
        features = self._features(images, len(records), "images")
        validation = None
        if valid is not None:
            valid_texts, valid_images, valid_labels = valid
            validation = (_records(valid_texts, valid_labels),
                          self._features(valid_images, len(valid_texts), "valid images"))
        self.recipe = self.system.default_recipe(multilabel, len(names), **self._overrides)
        self.trained = self.system.fit(self.recipe, (records, features), names, multilabel,
                                       validation, device=self.device)
        if refit:
            self.trained = self.system.refit(self.trained, (records, features), validation,
                                             device=self.device)
        return self

    def save(self, directory: str | os.PathLike) -> None:
        self._fitted().save(directory, extractor=self._extractor_config)

    def scores(self, texts: Sequence[str], images=None) -> torch.Tensor:
        """Probabilities [N, len(labels)]: softmax for single-label, per-label sigmoids for
        multi-label models."""
        records = _records(texts, None)
        return self._fitted().probabilities(records,
                                            self._features(images, len(records), "images"))

    def predict(self, texts: Sequence[str], images=None, top_k: int = 1,
                threshold: float | None = None) -> list[list[str]]:
        """Each item's ``top_k`` labels, most likely first, or with ``threshold`` every label
        whose probability reaches it."""
        if isinstance(top_k, bool) or not isinstance(top_k, int) or top_k < 1:
            raise ValueError(f"Classifier.predict: top_k must be an integer >= 1, got {top_k!r}")
        if threshold is not None and not 0 <= threshold <= 1:
            raise ValueError(f"Classifier.predict: threshold must be a probability in [0, 1], "
                             f"got {threshold!r}")
        labels = self.labels
        out = []
        for row in self.scores(texts, images):
            if threshold is None:
                chosen = row.topk(min(top_k, len(labels))).indices
            else:
                chosen = torch.nonzero(row >= threshold).flatten()
                chosen = chosen[row[chosen].argsort(descending=True)]
            out.append([labels[i] for i in chosen.tolist()])
        return out

    def _fitted(self) -> Fitted:
        if self.trained is None:
            raise ValueError("Classifier: not trained yet: call fit, or load a checkpoint")
        return self.trained

    def _features(self, images, count: int, name: str) -> np.ndarray | None:
        """Image features [count, D] (regions [count, Kr, D] for the systems that read regions)
        of ``images`` (see the module docstring)."""
        if not self.system.image:
            return None  # the system reads no image, whatever is passed
        if images is None:
            raise ValueError(f"Classifier: {name} are needed by the {self.system.name!r} system "
                             "(only the systems that read no image take images=None)")
        regions = self.system.image == systems.REGIONS
        if isinstance(images, (np.ndarray, torch.Tensor)) and images.ndim == 2 + regions:
            features = torch.as_tensor(images).detach().cpu().float()
            _check_count(name, len(features), count)
            # pooled vectors are L2-normalized as the extractor leaves them; regions are not
            return (features if regions else torch.nn.functional.normalize(features, dim=1)
                    ).numpy()
        images = list(images)
        _check_count(name, len(images), count)
        for image in images:
            if not isinstance(image, (str, os.PathLike, torch.Tensor)) and not hasattr(
                    image, "convert"):
                raise ValueError(f"Classifier: {name} must be paths, PIL images, tensors "
                                 f"[3, H, W] or features [N, D] (regions [N, Kr, D]), got a "
                                 f"{type(image).__name__}")
        extractor = self._image_extractor()
        pixels = [_pixels(image, extractor.image_size, name) for image in images]
        batches = [extractor.features(torch.stack(pixels[start:start + extractor.batch_size]))
                   for start in range(0, len(pixels), extractor.batch_size)]
        return torch.cat(batches).cpu().numpy() if batches else np.empty(
            (0, *extractor.feature_shape), np.float32)

    def _image_extractor(self) -> ImageFeatureExtractor:
        if self._extractor is None:
            if self._extractor_config is None and self.trained is None:
                # fitting: the demo's default extractor
                self._extractor = (
                    GridRegionFeatureExtractor(REGION_IMAGE_SIZE, device=self.device)
                    if self.system.image == systems.REGIONS else
                    ImageFeatureExtractor(image_size=DEMO_IMAGE_SIZE, device=self.device))
                self._extractor_config = self._extractor.config()
            elif self._extractor_config is None:
                raise ValueError("Classifier: no image extractor is recorded (the model was "
                                 "trained on image features): pass features [N, D], not images")
            else:
                self._extractor = extractor_from_config(self._extractor_config, self.device)
            self._own_extractor = True
        return self._extractor


def load(directory: str | os.PathLike) -> Classifier:
    """The ``Classifier`` saved in ``directory`` (by ``Classifier.save`` or ``mmfast train``)."""
    return Classifier.load(directory)


def _records(texts: Sequence[str], labels: Sequence[Labels] | None) -> list[Record]:
    if isinstance(texts, str) or not all(isinstance(text, str) for text in texts):
        raise ValueError("Classifier: texts must be a list of strings")
    if labels is not None and len(labels) != len(texts):
        raise ValueError(f"Classifier: {len(texts)} texts but {len(labels)} labels")
    return [Record(str(row), "", text,
                   () if labels is None else
                   (labels[row],) if isinstance(labels[row], str) else tuple(labels[row]))
            for row, text in enumerate(texts)]


def _check_count(name: str, got: int, expected: int) -> None:
    if got != expected:
        raise ValueError(f"Classifier: {name} must have one entry per text ({expected}), got "
                         f"{got}")


def _pixels(image, size: int, name: str) -> torch.Tensor:
    """[3, size, size] in [0, 1] of an image file, a PIL image or an image tensor [3, H, W] in
    [0, 1]."""
    if isinstance(image, (str, os.PathLike)):
        return load_image(image, size)
    if isinstance(image, torch.Tensor):
        if image.dim() != 3 or image.shape[0] != 3 or not image.is_floating_point():
            raise ValueError(f"Classifier: {name} tensors must be float [3, H, W] in [0, 1], "
                             f"got {image.dtype} of shape {tuple(image.shape)}")
        return torch.nn.functional.interpolate(image[None].float(), size=(size, size),
                                               mode="bilinear", antialias=True)[0]
    return image_tensor(image, size)  # a PIL image


__all__ = ["Classifier", "load"]
