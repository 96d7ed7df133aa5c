"""Product quantization: k-means, ProductQuantizer (PQ) and random-sample PQ (RSPQ)."""

from mmfast.quant.kmeans import kmeans
from mmfast.quant.product_quantizer import RSPQ, ProductQuantizer

__all__ = ["kmeans", "ProductQuantizer", "RSPQ"]
