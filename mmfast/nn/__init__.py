"""Modules users import; each computes with the fused ops and follows ``mmfast.get_backend()``."""

from mmfast.nn.fusion import Bilinear, BilinearFusion

__all__ = ["Bilinear", "BilinearFusion"]
