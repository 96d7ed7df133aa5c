"""The dense image and text inputs of the systems that take one vector per modality (CACNet,
the autoencoders): the store's image features through a PCA fitted on the training split
(optionally whitened), the text through ``TextFeatures``, each then standardized with the
training split's per-dimension mean and deviation, so neither modality drowns the other
(Word2Vec averages of short texts are ~50x smaller than CNN feature components)."""

from collections.abc import Sequence

import numpy as np
import torch

from mmfast.data import Record
from mmfast.features import PCA
from mmfast.features.text_features import TextFeatures
from mmfast.nn._parts import mean_of_parts
from mmfast.train.distributed import gather_objects, global_sum, share_total


class DenseInputs:
    """``inputs(records, image)`` -> ``(image [N, image_dim], text [N, text_dim])`` float32."""

    def __init__(self, pca: PCA, text: TextFeatures, statistics: dict[str, np.ndarray]):
        self.pca, self.text, self.statistics = pca, text, statistics

    @classmethod
    def fit(cls, records: Sequence[Record], image: np.ndarray, image_dim: int, whiten: bool,
            text_features: str, text_dim: int, ngrams: int, seed: int) -> "DenseInputs":
        """Fitted on the training split: the PCA keeps ``min(image_dim, N, D)`` components.
        When each rank holds only its share of the split (``distributed.sharded_data``), every
        fit is still the whole split's: the PCA from the ranks' summed scatter matrices, the
        text features on every rank's texts gathered, the standardization from summed
        moments."""
        image = np.asarray(image, np.float32)
        rows = int(global_sum(torch.tensor(len(image))))
        pca = PCA.fit(image, min(image_dim, rows, image.shape[1]), whiten=whiten,
                      total=share_total())
        texts = [record.text for record in records]
        text = TextFeatures.fit(text_features, gather_objects(texts), text_dim, ngrams, seed)
        statistics = {}
        for name, values in (("image", pca(image)), ("text", text(texts))):
            statistics[f"{name}_mean"], statistics[f"{name}_std"] = _moments(values)
        return cls(pca, text, statistics)

    @property
    def image_dim(self) -> int:
        return self.pca.dim

    @property
    def text_dim(self) -> int:
        return self.text.dim

    def __call__(self, records: Sequence[Record], image: np.ndarray
                 ) -> tuple[torch.Tensor, torch.Tensor]:
        if image is None or len(image) != len(records):
            raise ValueError(f"image features must have one row per record ({len(records)}), "
                             f"got {None if image is None else len(image)}")
        stats = self.statistics
        image = (self.pca(image) - stats["image_mean"]) / stats["image_std"]
        text = (self.text([record.text for record in records]) - stats["text_mean"]) \
            / stats["text_std"]
        return (torch.from_numpy(np.ascontiguousarray(image, np.float32)),
                torch.from_numpy(np.ascontiguousarray(text, np.float32)))

    # ---- checkpoint state: tensors for safetensors, the rest for config.json
    def tensors(self) -> dict[str, torch.Tensor]:
        tensors = {"pca_mean": self.pca.mean, "pca_components": self.pca.components,
                   **self.statistics}
        tensors = {name: torch.from_numpy(np.asarray(value)) for name, value in tensors.items()}
        tensors.update({f"text_{name}": value for name, value in self.text.tensors().items()})
        return tensors

    def config(self) -> dict:
        return {"text": self.text.config()}

    @classmethod
    def from_state(cls, config: dict, tensors: dict[str, torch.Tensor]) -> "DenseInputs":
        pca = PCA(tensors["pca_mean"].numpy(), tensors["pca_components"].numpy())
        text = TextFeatures.from_state(config["text"], {
            name[len("text_"):]: value for name, value in tensors.items()
            if name.startswith("text_") and name not in ("text_mean", "text_std")})
        statistics = {name: tensors[name].numpy() for name in
                      ("image_mean", "image_std", "text_mean", "text_std")}
        return cls(pca, text, statistics)


def _moments(values: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    """Per-column mean and deviation (float32) of ``values`` [N, d], over every rank's rows when
    the ranks hold shares (float64); a constant column's deviation is 1, so it stays 0 instead
    of becoming NaN."""
    total = share_total()
    values = torch.from_numpy(np.asarray(values)).double()
    mean = mean_of_parts(values, total)
    std = mean_of_parts((values - mean) ** 2, total).sqrt()
    std[std == 0] = 1.0
    return mean.float().numpy(), std.float().numpy()
