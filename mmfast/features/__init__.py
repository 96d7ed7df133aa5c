"""Image, region and text feature extraction."""

from mmfast.features.image import BACKBONES, ImageFeatureExtractor, build_backbone, load_image
from mmfast.features.pca import PCA
from mmfast.features.regions import GridRegionFeatureExtractor, RegionFeatureExtractor
from mmfast.features.tags import TagVectors
from mmfast.features.text import (SentenceEncoder, WordVectors, token_vectors, weighted_average,
                                  word_probabilities)

__all__ = [
    "BACKBONES", "ImageFeatureExtractor", "build_backbone", "load_image", "PCA",
    "GridRegionFeatureExtractor", "RegionFeatureExtractor", "SentenceEncoder", "TagVectors",
    "WordVectors", "token_vectors", "weighted_average", "word_probabilities",
]
