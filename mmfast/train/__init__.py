"""Training loops and schedules."""

from mmfast.train.cacnet import CACNetTrainer, GammaSchedule

__all__ = ["CACNetTrainer", "GammaSchedule"]
