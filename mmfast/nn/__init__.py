"""Modules users import, by paper; each computes with the fused ops and follows
``mmfast.get_backend()``."""

from mmfast.nn.ananet import AlignmentNet, AnANet, AssociationNet
from mmfast.nn.autoencoder import CrossModalAutoencoder, JointAutoencoder
from mmfast.nn.cacnet import CACNet
from mmfast.nn.fasttext import FastText, TextHasher, fnv1a_32, tokenize
from mmfast.nn.fusion import Bilinear, BilinearFusion
from mmfast.nn.kiela import ContinuousFusion, DiscretizedFastText
from mmfast.nn.mlp import EarlyFusionMLP

# Constructors by name, for checkpoints (config.json names the class; nothing is unpickled).
MODELS = {cls.__name__: cls for cls in (FastText, ContinuousFusion, DiscretizedFastText,
                                        EarlyFusionMLP, CACNet, AnANet, JointAutoencoder,
                                        CrossModalAutoencoder)}

__all__ = [
    "AlignmentNet", "AnANet", "AssociationNet", "Bilinear", "BilinearFusion", "CACNet",
    "FastText", "TextHasher", "fnv1a_32", "tokenize", "ContinuousFusion", "DiscretizedFastText",
    "EarlyFusionMLP", "JointAutoencoder", "CrossModalAutoencoder", "MODELS",
]
