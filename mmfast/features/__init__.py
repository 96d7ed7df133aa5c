"""Image and text feature extraction."""

from mmfast.features.regions import RegionFeatureExtractor

__all__ = ["RegionFeatureExtractor"]
