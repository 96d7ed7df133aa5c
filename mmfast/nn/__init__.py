"""mmfast's modules, by paper."""

from mmfast.nn.fasttext import FastText, TextHasher, fnv1a_32, tokenize
from mmfast.nn.kiela import ContinuousFusion, DiscretizedFastText

# Constructors by name, for checkpoints (config.json names the class; nothing is unpickled).
MODELS = {cls.__name__: cls for cls in (FastText, ContinuousFusion, DiscretizedFastText)}

__all__ = [
    "FastText", "TextHasher", "fnv1a_32", "tokenize", "ContinuousFusion", "DiscretizedFastText",
    "MODELS",
]
