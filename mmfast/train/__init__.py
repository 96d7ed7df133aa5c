"""Training loops, schedules and checkpoints."""

from mmfast.train.ananet import AnANetTrainer, load_features, relevance_features
from mmfast.train.autoencoder import AutoencoderTrainer
from mmfast.train.autotune import AutotuneResult, Trial, autotune
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
