"""The math of every mmfast op in plain PyTorch, written to be read. Tests hold the fused kernels
to these; benchmarks time against them."""

from mmfast.reference.bilinear_fusion import bilinear_fusion
from mmfast.reference.cross_attention_cosine import cross_attention_cosine
from mmfast.reference.fasttext_sgd import fasttext_sgd_
from mmfast.reference.pq_encode import pq_encode

__all__ = ["bilinear_fusion", "cross_attention_cosine", "fasttext_sgd_", "pq_encode"]
