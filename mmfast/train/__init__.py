"""Training loops, schedules and checkpoints."""

from mmfast.train.ananet import AnANetTrainer, load_features

__all__ = ["AnANetTrainer", "load_features"]
