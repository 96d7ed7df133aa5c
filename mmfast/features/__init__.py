"""Image, region, tag and text feature extraction, and bags of visual words."""

from mmfast.features.bovw import BagOfVisualWords, dense_sift
from mmfast.features.image import (BACKBONES, BadImageError, ImageFeatureExtractor, build_backbone,
                                  load_image)
from mmfast.features.pca import PCA
from mmfast.features.regions import (DetectorRegionFeatureExtractor, GridRegionFeatureExtractor,
                                     RegionFeatureExtractor, extractor_from_config)
from mmfast.features.store import (demo_features, demo_image_store, image_store,
                                   store_features)
from mmfast.features.tags import TagVectors
from mmfast.features.text import (SentenceEncoder, WordVectors, token_vectors, weighted_average,
                                  word_probabilities)

__all__ = [
    "BagOfVisualWords", "dense_sift", "BACKBONES", "BadImageError", "ImageFeatureExtractor",
    "build_backbone", "load_image", "PCA", "GridRegionFeatureExtractor", "RegionFeatureExtractor",
    "SentenceEncoder", "TagVectors", "WordVectors", "token_vectors", "weighted_average",
    "word_probabilities", "extractor_from_config", "DetectorRegionFeatureExtractor",
    "demo_features", "demo_image_store", "image_store", "store_features",
]
