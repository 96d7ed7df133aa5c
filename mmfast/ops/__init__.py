"""Fused operators: each wraps ``torch.ops.mmfast.<name>`` with checks, a fake kernel (for
``torch.compile``) and, where differentiable, autograd; each follows ``mmfast.get_backend()``."""

import mmfast._native  # noqa: F401  (defines the torch.ops.mmfast ops the wrappers register on)
from mmfast.ops.bilinear_fusion import bilinear_fusion
from mmfast.ops.cacnet import cacnet_forward
from mmfast.ops.cross_attention_cosine import cross_attention_cosine
from mmfast.ops.fasttext_sgd import fasttext_sgd_
from mmfast.ops.hash_text import PackedTexts, count_words, hash_text
from mmfast.ops.pq_encode import pq_encode

__all__ = ["PackedTexts", "bilinear_fusion", "cacnet_forward", "count_words",
           "cross_attention_cosine", "fasttext_sgd_", "hash_text", "pq_encode"]
