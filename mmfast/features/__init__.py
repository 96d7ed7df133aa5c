"""Image, region and text feature extraction."""

from mmfast.features.image import BACKBONES, ImageFeatureExtractor, build_backbone, load_image
from mmfast.features.pca import PCA
from mmfast.features.regions import RegionFeatureExtractor
from mmfast.features.text import SentenceEncoder, WordVectors, weighted_average, word_probabilities

__all__ = [
    "BACKBONES", "ImageFeatureExtractor", "build_backbone", "load_image", "PCA",
    "RegionFeatureExtractor", "SentenceEncoder", "WordVectors", "weighted_average",
    "word_probabilities",
]
