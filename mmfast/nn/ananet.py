"""AnANet (paper 004, DESIGN 3.4): association and alignment of image regions and words.

Inputs are precomputed features: region features [B, Kr, region_dim] (``mmfast.features.regions``:
1024-d detector regions or 1280-d grid cells), word vectors [B, N, d_G] (GloVe-style) and
contextual vectors [B, N, d_B] (BERT-family), and the number of valid words per sample
``t_lengths`` [B]. Kr and N are fixed by the model, because the alignment net's representation
``r_l = [t_bar, v_bar]`` feeds a linear layer of Kr + N inputs.
"""

from typing import NamedTuple

import torch
from torch import nn

from mmfast.ops import cross_attention_cosine


VARIANTS = ("full", "association", "alignment", "concat")
"""AnANet and its ablations (paper 004, Table IV): both branches, the association net alone, the
alignment net alone, or neither (mean-pooled regions and words, concatenated, one linear head)."""


def _word_mask(t_lengths: torch.Tensor, num_words: int) -> torch.Tensor:
    return torch.arange(num_words, device=t_lengths.device) < t_lengths[:, None]  # [B, N]


def mean_pool(regions: torch.Tensor, words: torch.Tensor, t_lengths: torch.Tensor | None
              ) -> tuple[torch.Tensor, torch.Tensor]:
    """``(f_img, f_txt)``: the mean over regions and over each sample's valid words."""
    if t_lengths is None:
        return regions.mean(dim=1), words.mean(dim=1)
    mask = _word_mask(t_lengths, words.shape[1]).to(words.dtype)
    # A sample without words pools to 0 rather than 0/0.
    f_txt = (words * mask[:, :, None]).sum(1) / mask.sum(1, keepdim=True).clamp(min=1)
    return regions.mean(dim=1), f_txt


class AlignmentNet(nn.Module):
    """``r_l = [t_bar, v_bar]`` [B, N + Kr] from ``cross_attention_cosine(V, T, t_lengths)``."""

    def __init__(self, num_regions: int, num_words: int, scale: float = 1.0):
        super().__init__()
        self.num_regions, self.num_words, self.scale = num_regions, num_words, scale

    def forward(self, regions: torch.Tensor, words: torch.Tensor,
                t_lengths: torch.Tensor | None = None) -> torch.Tensor:
        expected = (self.num_regions, self.num_words)
        if (regions.shape[1], words.shape[1]) != expected:
            raise ValueError(
                f"AlignmentNet: (regions.shape[1], words.shape[1]) must be {expected} "
                f"(Kr, N), got {(regions.shape[1], words.shape[1])}"
            )
        v_bar, t_bar = cross_attention_cosine(regions, words, t_lengths, self.scale)
        return torch.cat([t_bar, v_bar], dim=1)

    def extra_repr(self) -> str:
        return f"num_regions={self.num_regions}, num_words={self.num_words}, scale={self.scale}"


class Association(NamedTuple):
    r_g: torch.Tensor
    """[B, 2 d_inv]: ``[f_inv_img, f_inv_txt]``, the global relevant representation."""
    f_inv_img: torch.Tensor
    f_inv_txt: torch.Tensor
    f_var_img: torch.Tensor
    f_var_txt: torch.Tensor


class AssociationNet(nn.Module):
    """Mean-pooled regions and valid words, projected by a shared W (invariant part) and a
    private P per modality (variant part): ``f_inv = W f``, ``f_var = P_mod f``."""

    def __init__(self, dim: int, inv_dim: int = 200, var_dim: int | None = None):
        super().__init__()
        var_dim = inv_dim if var_dim is None else var_dim
        self.shared = nn.Linear(dim, inv_dim, bias=False)  # W
        self.private_img = nn.Linear(dim, var_dim, bias=False)  # P_img
        self.private_txt = nn.Linear(dim, var_dim, bias=False)  # P_txt

    def forward(self, regions: torch.Tensor, words: torch.Tensor,
                t_lengths: torch.Tensor | None = None) -> Association:
        f_img, f_txt = mean_pool(regions, words, t_lengths)
        f_inv_img, f_inv_txt = self.shared(f_img), self.shared(f_txt)
        return Association(
            torch.cat([f_inv_img, f_inv_txt], dim=1), f_inv_img, f_inv_txt,
            self.private_img(f_img), self.private_txt(f_txt),
        )

    @staticmethod
    def invariant_loss(association: Association) -> torch.Tensor:
        """``|f_inv_img - f_inv_txt|_2``, averaged over the batch."""
        return (association.f_inv_img - association.f_inv_txt).norm(dim=1).mean()

    def orthogonality_loss(self) -> torch.Tensor:
        """``sum_mod |W P_mod^T|_F``: rows of the shared and of each private projection
        orthogonal (the paper's W^T P would compare columns; DESIGN 3.4)."""
        shared = self.shared.weight
        return sum(
            torch.linalg.matrix_norm(shared @ private.weight.T)
            for private in (self.private_img, self.private_txt)
        )


class AnANetOutput(NamedTuple):
    logits: torch.Tensor
    """[B, C], by variant: ``lambda (w_g r_g + b_g) + eta (w_l r_l + b_l)`` ("full"), its first
    term alone ("association") or its second alone ("alignment"), lambda = global_weight and
    eta = local_weight; ``w_c [f_img, f_txt] + b_c`` on the mean-pooled encodings, unweighted
    ("concat"). Softmax gives y_hat."""
    invariant_loss: torch.Tensor
    orthogonality_loss: torch.Tensor


class AnANet(nn.Module):
    """The full model: encoders, association net, alignment net and the late-fused classifier.

    Region encoder: FC + ReLU from ``region_dim``; word encoder: [word vector, contextual vector]
    through a BiGRU of ``hidden_dim`` outputs (hidden_dim / 2 per direction); ``context_dim=0``
    drops the contextual vectors (the paper's "-BERT" rows). ``variant`` (one of ``VARIANTS``)
    keeps both branches, one of them, or replaces both by concatenation; the encoders and the
    kept branches are the same modules in every variant, so the ablations differ only there.
    """

    def __init__(self, num_classes: int = 3, num_regions: int = 36, num_words: int = 100,
                 region_dim: int = 1024, word_dim: int = 200, context_dim: int = 768,
                 hidden_dim: int = 1024, inv_dim: int = 200, attention_scale: float = 1.0,
                 global_weight: float = 0.7, local_weight: float = 1.3,
                 invariant_weight: float = 0.1, orthogonality_weight: float = 2.0,
                 variant: str = "full"):
        super().__init__()
        if hidden_dim % 2:
            raise ValueError(f"AnANet: hidden_dim must be even (two GRU directions), got "
                             f"{hidden_dim}")
        if variant not in VARIANTS:
            raise ValueError(f"AnANet: variant must be one of {VARIANTS}, got {variant!r}")
        self._arguments = {k: v for k, v in locals().items() if k not in ("self", "__class__")}
        self.variant = variant  # a plain attribute: not in the state dict
        self.region_encoder = nn.Sequential(nn.Linear(region_dim, hidden_dim), nn.ReLU())
        self.word_encoder = nn.GRU(word_dim + context_dim, hidden_dim // 2, batch_first=True,
                                   bidirectional=True)
        self.association = self.alignment = self.global_head = self.local_head = None
        if variant in ("full", "association"):
            self.association = AssociationNet(hidden_dim, inv_dim)
            self.global_head = nn.Linear(2 * inv_dim, num_classes)
        if variant in ("full", "alignment"):
            self.alignment = AlignmentNet(num_regions, num_words, attention_scale)
            self.local_head = nn.Linear(num_regions + num_words, num_classes)
        if variant == "concat":  # the global head reads [f_img, f_txt] unprojected
            self.global_head = nn.Linear(2 * hidden_dim, num_classes)

    def encode_words(self, word_vectors: torch.Tensor, context_vectors: torch.Tensor,
                     t_lengths: torch.Tensor) -> torch.Tensor:
        tokens = torch.cat([word_vectors, context_vectors], dim=2)
        # Packed so the backward direction starts at each sample's last word; a sample without
        # words runs one (masked) step, since packing refuses length 0.
        packed = nn.utils.rnn.pack_padded_sequence(
            tokens, t_lengths.clamp(min=1).cpu(), batch_first=True, enforce_sorted=False)
        encoded, _ = self.word_encoder(packed)
        encoded, _ = nn.utils.rnn.pad_packed_sequence(
            encoded, batch_first=True, total_length=tokens.shape[1])
        return encoded * _word_mask(t_lengths, tokens.shape[1])[:, :, None].to(encoded.dtype)

    def forward(self, regions: torch.Tensor, word_vectors: torch.Tensor,
                context_vectors: torch.Tensor, t_lengths: torch.Tensor) -> AnANetOutput:
        V = self.region_encoder(regions)  # [B, Kr, d]
        T = self.encode_words(word_vectors, context_vectors, t_lengths)  # [B, N, d]
        # Without an association net its two losses are 0, so ``loss`` is L_c alone.
        invariant_loss = orthogonality_loss = V.new_zeros(())
        terms = []
        if self.variant in ("full", "association"):
            association = self.association(V, T, t_lengths)
            terms.append(self._arguments["global_weight"] * self.global_head(association.r_g))
            invariant_loss = AssociationNet.invariant_loss(association)
            orthogonality_loss = self.association.orthogonality_loss()
        elif self.variant == "concat":
            terms.append(self.global_head(torch.cat(mean_pool(V, T, t_lengths), dim=1)))
        if self.variant in ("full", "alignment"):
            r_l = self.alignment(V, T, t_lengths)
            terms.append(self._arguments["local_weight"] * self.local_head(r_l))
        return AnANetOutput(sum(terms), invariant_loss, orthogonality_loss)

    def loss(self, output: AnANetOutput, targets: torch.Tensor) -> torch.Tensor:
        """``L_c + a L_inv + b L_orth`` (paper eq. 22), L_c the mean cross-entropy."""
        return (nn.functional.cross_entropy(output.logits, targets)
                + self._arguments["invariant_weight"] * output.invariant_loss
                + self._arguments["orthogonality_weight"] * output.orthogonality_loss)

    def config(self) -> dict:
        """The constructor's arguments (for checkpoints)."""
        return dict(self._arguments)
