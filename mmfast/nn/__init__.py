"""Modules by paper; each uses mmfast's fused ops and follows ``mmfast.set_backend``."""

from mmfast.nn.ananet import AlignmentNet, AnANet, AssociationNet

__all__ = ["AlignmentNet", "AnANet", "AssociationNet"]
