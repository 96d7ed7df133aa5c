"""Training loops, schedules and checkpoints."""

from mmfast.train.ananet import AnANetTrainer, load_features, relevance_features
from mmfast.train.autoencoder import AutoencoderTrainer
from mmfast.train.cacnet import CACNetTrainer, GammaSchedule
from mmfast.train.checkpoint import load_checkpoint, load_optimizer_state, save_checkpoint
from mmfast.train.fasttext import Examples, predict, train
from mmfast.train.logistic import LogisticRegression, concept_auc

__all__ = [
    "AnANetTrainer", "load_features", "relevance_features", "CACNetTrainer", "GammaSchedule",
    "Examples", "predict", "train", "load_checkpoint", "load_optimizer_state", "save_checkpoint",
    "AutoencoderTrainer", "LogisticRegression", "concept_auc", "autotune", "AutotuneResult",
    "Trial",
]

# autotune searches the recipes of the systems (mmfast.systems), which are built on these
# trainers: it is this package's API too, loaded on first use so the import is not circular.
_SYSTEM_LEVEL = {"autotune", "AutotuneResult", "Trial"}


def __getattr__(name: str):
    if name in _SYSTEM_LEVEL:
        from mmfast.systems import autotune as module

        return getattr(module, name)
    raise AttributeError(f"module 'mmfast.train' has no attribute {name!r}")
