"""Distillation losses and the trainer."""

from edgedistill.distill.kd import KDLoss, kd_loss
from edgedistill.distill.trainer import TrainResult, TrainSettings, train_student

__all__ = ["KDLoss", "TrainResult", "TrainSettings", "kd_loss", "train_student"]
