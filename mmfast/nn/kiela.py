"""The multimodal models of Kiela et al., "Efficient large-scale multi-modal classification"
(paper 003, DESIGN 3.1): fastText text features fused with image features.

- ``ContinuousFusion``: ``U x_t`` (text bag) and ``V x_v`` fused by ``fusion`` in ``image``
  (continuous only, ``W V x_v``), ``additive``, ``max``, ``gated``, ``bilinear`` (with learned
  offsets of both inputs, ``W((U x_t + a) (x) (V x_v + b))``: see ``__init__``),
  ``bilinear_gated``; the gated fusions take ``gate`` = the gating modality.
- ``DiscretizedFastText``: ``W U(x_t + alpha x_q)`` with ``x_q`` the PQ/RSPQ image tokens
  (``mmfast.quant``), words and tokens normalized separately, one embedding table.

Every model is called ``model(words, offsets, image)`` (``image``: [B, D] float vectors or
[B, T] int64 tokens) and returns logits [B, num_classes].
"""

import torch
from torch import nn

from mmfast.defaults import GATES  # torch-free: the recipes name them too
from mmfast.nn._parts import mean_of_parts
from mmfast.nn.fasttext import FastText, check_bags
from mmfast.ops._checks import check_ids
from mmfast.ops.bilinear_fusion import bilinear_fusion

FUSIONS = ("image", "additive", "max", "gated", "bilinear", "bilinear_gated")


class ContinuousFusion(FastText):
    """fastText text bag ``U x_t`` fused with a continuous image vector ``V x_v``."""

    def __init__(self, num_embeddings: int, image_dim: int, dim: int, num_classes: int,
                 fusion: str = "additive", gate: str = "text"):
        super().__init__(num_embeddings, dim, num_classes)
        if fusion not in FUSIONS:
            raise ValueError(f"ContinuousFusion: fusion must be one of {FUSIONS}, got {fusion!r}")
        if gate not in GATES:
            raise ValueError(f"ContinuousFusion: gate must be one of {GATES}, got {gate!r}")
        if not isinstance(image_dim, int) or image_dim < 1:
            raise ValueError(f"ContinuousFusion: image_dim must be an integer >= 1, "
                             f"got {image_dim!r}")
        self.image_dim, self.fusion, self.gate = image_dim, fusion, gate
        self.image_projection = nn.Linear(image_dim, dim, bias=False)  # V
        # Pooled CNN features are non-negative, so unit vectors of different images share a large
        # common component: it dominates the curvature of the loss along V (SGD diverges at the
        # learning rates the discriminative directions need). Centering on the training mean
        # before normalizing takes it out: emoji tags mAP of the additive model 0.52 -> 0.58.
        self.register_buffer("image_mean", torch.zeros(image_dim))
        if fusion.startswith("bilinear"):
            # W of the bilinear form, laid out as torch.nn.Bilinear's weight [K, P, Q] and
            # initialized as its: a zero W (fastText's zero classifier) gives U and V no gradient
            # and W one of order |U x_t| |V x_v| ~ 1e-3, so the model sat at the class prior
            # (emoji group: held-out accuracy 0.20, the majority share, against 0.54 so).
            self.classifier = None
            bound = 1.0 / dim**0.5
            self.bilinear_weight = nn.Parameter(torch.empty(num_classes, dim, dim))
            nn.init.uniform_(self.bilinear_weight, -bound, bound)
            self.bilinear_bias = nn.Parameter(torch.zeros(num_classes))
        if fusion == "bilinear":
            # Learned offsets of the two inputs, W((U x_t + a) (x) (V x_v + b)): the pure product
            # has no term of one modality alone, so a class that only the text (or the image)
            # tells apart must be learned through the other's variation. With them the form
            # holds the additive model's terms (fastText's </s> word plays a's part in its bag):
            # emoji group/subgroup/tags mAP/icons 0.546/0.360/0.324/0.700 -> 0.728/0.547/0.486/
            # 0.830 held-out (two seeds). bilinear_gated's sigmoid(U x_t) has such an offset.
            self.text_offset = nn.Parameter(torch.full((dim,), 0.1))
            self.image_offset = nn.Parameter(torch.full((dim,), 0.1))

    def forward(self, words: torch.Tensor, offsets: torch.Tensor,
                image: torch.Tensor) -> torch.Tensor:
        if not isinstance(image, torch.Tensor) or image.dim() != 2 or (
            image.shape[1] != self.image_dim
        ) or not image.is_floating_point():
            got = (f"{image.dtype} tensor of shape {tuple(image.shape)}"
                   if isinstance(image, torch.Tensor) else type(image).__name__)
            raise ValueError(f"ContinuousFusion: image must be a float tensor [B, "
                             f"{self.image_dim}], got {got}")
        dtype = self.image_projection.weight.dtype
        image_hidden = self.image_projection(
            nn.functional.normalize(image.to(dtype) - self.image_mean.to(dtype), dim=1))
        if self.fusion == "image":
            return self.classifier(image_hidden)
        text_hidden = self.text_hidden(words, offsets)
        if text_hidden.shape[0] != image_hidden.shape[0]:
            raise ValueError(f"ContinuousFusion: {text_hidden.shape[0]} texts (offsets) but "
                             f"{image_hidden.shape[0]} images")
        if self.fusion == "bilinear":
            return bilinear_fusion(text_hidden + self.text_offset, image_hidden + self.image_offset,
                                   self.bilinear_weight, self.bilinear_bias, "none")
        if self.fusion == "bilinear_gated":
            return bilinear_fusion(text_hidden, image_hidden, self.bilinear_weight,
                                   self.bilinear_bias, "first" if self.gate == "text" else "second")
        if self.fusion == "additive":
            fused = text_hidden + image_hidden
        elif self.fusion == "max":
            fused = torch.maximum(text_hidden, image_hidden)
        elif self.gate == "text":
            fused = torch.sigmoid(text_hidden) * image_hidden
        else:
            fused = text_hidden * torch.sigmoid(image_hidden)
        return self.classifier(fused)

    @torch.no_grad()
    def center_images(self, images: torch.Tensor, total=None) -> "ContinuousFusion":
        """Sets the mean subtracted from every image vector to that of ``images`` [N, D] (the
        training images, L2-normalized first, as the feature extractors give them). ``total``
        (a function of a tensor, default none) sums the image sums and count over the parts of a
        split held apart, e.g. ``mmfast.train.distributed.global_sum`` over torchrun's ranks."""
        if not isinstance(images, torch.Tensor) or images.dim() != 2 or (
            images.shape[1] != self.image_dim
        ) or not images.is_floating_point() or len(images) == 0:
            got = (f"{images.dtype} tensor of shape {tuple(images.shape)}"
                   if isinstance(images, torch.Tensor) else type(images).__name__)
            raise ValueError(f"ContinuousFusion.center_images: images must be a non-empty float "
                             f"tensor [N, {self.image_dim}], got {got}")
        mean = mean_of_parts(nn.functional.normalize(images.double(), dim=1), total)
        if not torch.isfinite(mean).all():
            raise ValueError("ContinuousFusion.center_images: images must be finite")
        self.image_mean.copy_(mean)
        return self

    def _load_from_state_dict(self, state_dict, prefix, *args, **kwargs):
        # Checkpoints written before centering have no mean, and bilinear ones before the
        # offsets none: theirs were zero.
        state_dict.setdefault(prefix + "image_mean", torch.zeros_like(self.image_mean))
        if self.fusion == "bilinear":
            for name in ("text_offset", "image_offset"):
                state_dict.setdefault(prefix + name, torch.zeros_like(getattr(self, name)))
        super()._load_from_state_dict(state_dict, prefix, *args, **kwargs)

    def config(self) -> dict:
        return {**super().config(), "image_dim": self.image_dim, "fusion": self.fusion,
                "gate": self.gate}


class DiscretizedFastText(FastText):
    """``W U(x_t + alpha x_q)``: image tokens are extra "words" in rows
    ``[num_embeddings, num_embeddings + num_image_tokens)`` of the one table ``U``.

    The words' mean plus ``alpha`` times the tokens' mean (paper 003 normalizes the two bags
    separately); ``bags`` gives the same as one bag of the table (``EmbeddingBag``, mode sum)
    with per-sample weights ``1/n_text`` for the words and ``alpha/n_image`` for the tokens.
    """

    def __init__(self, num_embeddings: int, num_image_tokens: int, dim: int, num_classes: int,
                 alpha: float = 0.1):
        if not isinstance(num_image_tokens, int) or num_image_tokens < 1:
            raise ValueError(f"DiscretizedFastText: num_image_tokens must be an integer >= 1, "
                             f"got {num_image_tokens!r}")
        super().__init__(num_embeddings + num_image_tokens, dim, num_classes)
        self.num_text_embeddings, self.num_image_tokens, self.alpha = (
            num_embeddings, num_image_tokens, float(alpha))
        self.embedding.mode = "sum"  # the per-sample weights do the two normalizations

    def forward(self, words: torch.Tensor, offsets: torch.Tensor,
                image: torch.Tensor) -> torch.Tensor:
        # the words' mean plus alpha times the tokens' mean, two bags of the one table: what
        # the one weighted bag of ``bags`` sums, without interleaving the two (which took as
        # long as the lookups)
        self._check_bags(words, offsets, image)
        table, sparse = self.embedding.weight, self.embedding.sparse
        text = nn.functional.embedding_bag(words, table, offsets, mode="mean", sparse=sparse)
        if image.shape[1] == 0:
            return self.classifier(text)
        tokens = nn.functional.embedding_bag(image + self.num_text_embeddings, table,
                                             mode="mean", sparse=sparse)
        return self.classifier(text + self.alpha * tokens)

    def bags(self, words: torch.Tensor, offsets: torch.Tensor, image: torch.Tensor
             ) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
        """Each sample's words and image tokens as one weighted bag: ``(ids, offsets,
        per_sample_weights)`` for the embedding table (the fused trainer's input)."""
        self._check_bags(words, offsets, image)
        batch, tokens = image.shape
        # Interleave each sample's words and its image tokens into one bag.
        text_lengths = torch.diff(offsets, append=offsets.new_tensor([words.numel()]))
        starts = offsets + torch.arange(batch, device=offsets.device) * tokens
        sample = torch.repeat_interleave(torch.arange(batch, device=words.device), text_lengths)
        word_positions = starts[sample] + torch.arange(words.numel(), device=words.device) - (
            offsets[sample])
        image_positions = ((starts + text_lengths)[:, None]
                           + torch.arange(tokens, device=image.device)).flatten()
        ids = words.new_empty(words.numel() + image.numel())
        ids[word_positions] = words
        ids[image_positions] = image.flatten() + self.num_text_embeddings
        weight_dtype = self.embedding.weight.dtype
        weights = torch.empty(ids.numel(), dtype=weight_dtype, device=ids.device)
        weights[word_positions] = 1.0 / text_lengths.clamp(min=1)[sample].to(weight_dtype)
        weights[image_positions] = self.alpha / max(tokens, 1)
        return ids, starts, weights

    def _check_bags(self, words: torch.Tensor, offsets: torch.Tensor, image: torch.Tensor
                    ) -> None:
        name = type(self).__name__
        check_bags(name, words, offsets, self.num_text_embeddings)
        if not isinstance(image, torch.Tensor) or image.dim() != 2 or image.dtype != torch.long:
            got = (f"{image.dtype} tensor of shape {tuple(image.shape)}"
                   if isinstance(image, torch.Tensor) else type(image).__name__)
            raise TypeError(f"{name}: image must be int64 tokens [B, T] (ProductQuantizer.tokens),"
                            f" got {got}")
        check_ids(name, "image tokens must be", image, self.num_image_tokens)
        if offsets.numel() != image.shape[0]:
            raise ValueError(f"{name}: {offsets.numel()} texts (offsets) but {image.shape[0]} "
                             "images")

    def config(self) -> dict:
        return {"num_embeddings": self.num_text_embeddings,
                "num_image_tokens": self.num_image_tokens, "dim": self.dim,
                "num_classes": self.num_classes, "alpha": self.alpha}

