"""The math of every mmfast op in plain PyTorch, written to be read. Tests hold the fused kernels
to these; benchmarks time against them."""

from mmfast.reference.bilinear_fusion import bilinear_fusion
from mmfast.reference.cross_attention_cosine import cross_attention_cosine
from mmfast.reference.fasttext_sgd import fasttext_sgd_
from mmfast.reference.hash_text import count_words, hash_text
from mmfast.reference.pq_encode import pq_encode

__all__ = ["bilinear_fusion", "count_words", "cross_attention_cosine", "fasttext_sgd_",
           "hash_text", "pq_encode"]
