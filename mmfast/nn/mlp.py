"""The plain early-fusion baseline: one hidden layer over [TF-IDF of the text ; image vector].

``logits = W2 dropout(relu(W1 dropout([x_t ; x_v]) + b1)) + b2`` with ``x_t`` the text's TF-IDF
vector (smooth idf fitted on the training texts, sublinear tf, L2-normalized, as scikit-learn's
``TfidfVectorizer(sublinear_tf=True)``) and ``x_v`` the image vector centered on the training
mean and L2-normalized. ``W1 x_t`` is a sum embedding bag of ``W1``'s text columns weighted by
the TF-IDF values, so the vocabulary never becomes a dense matrix.
"""

import torch
from torch import nn

from mmfast.nn._parts import mean_of_parts
from mmfast.nn.fasttext import check_bags


class EarlyFusionMLP(nn.Module):
    """``model(words, offsets, image)`` -> logits [B, num_classes]: ``words``/``offsets`` as
    ``TextHasher.encode`` gives them, ``image`` [B, image_dim] float vectors. Call
    ``fit_statistics`` on the training data before training (idf and image mean)."""

    def __init__(self, num_embeddings: int, image_dim: int, hidden: int, num_classes: int,
                 dropout: float = 0.5):
        super().__init__()
        for name, value in (("num_embeddings", num_embeddings), ("image_dim", image_dim),
                            ("hidden", hidden), ("num_classes", num_classes)):
            if not isinstance(value, int) or value < 1:
                raise ValueError(f"EarlyFusionMLP: {name} must be an integer >= 1, got "
                                 f"{value!r}")
        if not 0 <= dropout < 1:
            raise ValueError(f"EarlyFusionMLP: dropout must be in [0, 1), got {dropout!r}")
        self.num_embeddings, self.image_dim, self.hidden = num_embeddings, image_dim, hidden
        self.num_classes, self.dropout = num_classes, float(dropout)
        # W1 = [text columns ; image columns]: sparse rows, so an optimizer step touches only the
        # words of the batch
        self.text_layer = nn.EmbeddingBag(num_embeddings, hidden, mode="sum", sparse=True)
        self.image_layer = nn.Linear(image_dim, hidden)  # and b1
        self.classifier = nn.Linear(hidden, num_classes)
        bound = 1.0 / (num_embeddings + image_dim) ** 0.5  # nn.Linear's init of the whole W1
        nn.init.uniform_(self.text_layer.weight, -bound, bound)
        nn.init.uniform_(self.image_layer.weight, -bound, bound)
        self.register_buffer("idf", torch.ones(num_embeddings))
        self.register_buffer("image_mean", torch.zeros(image_dim))

    @torch.no_grad()
    def fit_statistics(self, words: torch.Tensor, offsets: torch.Tensor,
                       images: torch.Tensor, total=None) -> "EarlyFusionMLP":
        """The idf of every id, ``ln((1 + n) / (1 + df)) + 1`` over the ``n`` training texts,
        and the mean of the (L2-normalized) training images. ``total`` (a function of a tensor,
        default none) sums the counts over the parts of a split held apart, e.g.
        ``mmfast.train.distributed.global_sum`` over torchrun's ranks."""
        check_bags("EarlyFusionMLP", words, offsets, self.num_embeddings)
        documents = torch.tensor(float(offsets.numel()), dtype=torch.float64)
        unique_ids = torch.unique(self._document_of(words, offsets) * self.num_embeddings + words)
        frequency = torch.bincount(unique_ids % self.num_embeddings,
                                   minlength=self.num_embeddings)
        if total is not None:
            documents, frequency = total(documents), total(frequency)
        self.idf.copy_(torch.log((1.0 + documents) / (1.0 + frequency)) + 1.0)
        if images.dim() != 2 or images.shape[1] != self.image_dim or len(images) == 0:
            raise ValueError(f"EarlyFusionMLP.fit_statistics: images must be [N, "
                             f"{self.image_dim}] with N >= 1, got {tuple(images.shape)}")
        self.image_mean.copy_(mean_of_parts(nn.functional.normalize(images.double(), dim=1),
                                            total))
        return self

    def text_weights(self, words: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        """Per occurrence, its share of its text's TF-IDF value: ``idf (1 + ln tf) / tf`` over
        the text's L2 norm, so the weighted bag sum is the TF-IDF vector times W1."""
        document = self._document_of(words, offsets)
        keys, inverse, counts = torch.unique(document * self.num_embeddings + words,
                                             return_inverse=True, return_counts=True)
        value = self.idf[keys % self.num_embeddings] * (1.0 + torch.log(counts.to(self.idf)))
        squared_norm = torch.zeros(offsets.numel(), dtype=value.dtype, device=value.device)
        squared_norm.index_add_(0, keys // self.num_embeddings, value * value)
        per_occurrence = (value / counts)[inverse]
        return per_occurrence / squared_norm.sqrt().clamp_min(1e-12)[document]

    def forward(self, words: torch.Tensor, offsets: torch.Tensor,
                image: torch.Tensor) -> torch.Tensor:
        check_bags("EarlyFusionMLP", words, offsets, self.num_embeddings)
        if not isinstance(image, torch.Tensor) or image.dim() != 2 or (
            image.shape[1] != self.image_dim
        ) or not image.is_floating_point() or image.shape[0] != offsets.numel():
            got = (f"{image.dtype} tensor of shape {tuple(image.shape)}"
                   if isinstance(image, torch.Tensor) else type(image).__name__)
            raise ValueError(f"EarlyFusionMLP: image must be a float tensor [{offsets.numel()}, "
                             f"{self.image_dim}] (one row per text), got {got}")
        dtype = self.image_layer.weight.dtype
        weights = nn.functional.dropout(self.text_weights(words, offsets).to(dtype),
                                        self.dropout, self.training)
        image = nn.functional.normalize(image.to(dtype) - self.image_mean.to(dtype), dim=1)
        hidden = self.text_layer(words, offsets, per_sample_weights=weights) + self.image_layer(
            nn.functional.dropout(image, self.dropout, self.training))
        return self.classifier(nn.functional.dropout(torch.relu(hidden), self.dropout,
                                                     self.training))

    @staticmethod
    def _document_of(words: torch.Tensor, offsets: torch.Tensor) -> torch.Tensor:
        lengths = torch.diff(offsets, append=offsets.new_tensor([words.numel()]))
        return torch.repeat_interleave(torch.arange(offsets.numel(), device=words.device),
                                       lengths)

    def config(self) -> dict:
        return {"num_embeddings": self.num_embeddings, "image_dim": self.image_dim,
                "hidden": self.hidden, "num_classes": self.num_classes,
                "dropout": self.dropout}
