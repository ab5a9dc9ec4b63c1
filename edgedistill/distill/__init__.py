"""Distillation losses (one file per method) and the trainer.

Logit: :func:`kd_loss` (Hinton 2015), :func:`dkd_loss` (DKD, CVPR 2022).
Feature: :func:`hint_loss` + :class:`HintAdapter` (FitNets, ICLR 2015), :func:`rkd_loss`
(RKD, CVPR 2019), :func:`at_loss` (attention transfer, ICLR 2017).
Embedding: :func:`info_nce_loss` + :class:`EmbeddingQueue`, :func:`normalized_l2_loss`.
Self-distillation: :func:`pskd_loss` + :class:`PredictionMemory` (PS-KD, ICCV 2021),
:func:`dino_loss` + :func:`ema_update` (DINO, ICCV 2021).

Recipe loss terms: each loss file registers its term (:func:`register_term`, a :class:`Term`
with its :class:`TermConfig` options) in :data:`TERMS`; see :mod:`edgedistill.distill.terms`.
"""

from edgedistill.distill.attention import ATLoss, at_loss, attention_map
from edgedistill.distill.dino import DINOLoss, dino_loss, ema_update, update_center
from edgedistill.distill.dkd import DKDLoss, dkd_loss
from edgedistill.distill.fitnets import FitNetsLoss, HintAdapter, hint_loss
from edgedistill.distill.infonce import EmbeddingQueue, InfoNCELoss, info_nce_loss
from edgedistill.distill.kd import KDLoss, kd_loss
from edgedistill.distill.l2 import NormalizedL2Loss, normalized_l2_loss
from edgedistill.distill.pskd import PredictionMemory, pskd_alpha, pskd_loss
from edgedistill.distill.rkd import RKDLoss, rkd_angle_loss, rkd_distance_loss, rkd_loss
from edgedistill.distill.terms import TERMS, Term, TermConfig, register_term
from edgedistill.distill.trainer import TrainResult, TrainSettings, train_student

__all__ = [
    "TERMS",
    "ATLoss",
    "DINOLoss",
    "DKDLoss",
    "EmbeddingQueue",
    "FitNetsLoss",
    "HintAdapter",
    "InfoNCELoss",
    "KDLoss",
    "NormalizedL2Loss",
    "PredictionMemory",
    "RKDLoss",
    "Term",
    "TermConfig",
    "TrainResult",
    "TrainSettings",
    "at_loss",
    "attention_map",
    "dino_loss",
    "dkd_loss",
    "ema_update",
    "hint_loss",
    "info_nce_loss",
    "kd_loss",
    "normalized_l2_loss",
    "pskd_alpha",
    "pskd_loss",
    "register_term",
    "rkd_angle_loss",
    "rkd_distance_loss",
    "rkd_loss",
    "train_student",
    "update_center",
]
