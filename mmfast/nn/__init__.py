"""Modules users import; each computes with the fused ops and follows ``mmfast.get_backend()``."""

from mmfast.nn.cacnet import CACNet

__all__ = ["CACNet"]
