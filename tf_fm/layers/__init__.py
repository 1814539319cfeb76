"""Keras layers of tf_fm."""

from tf_fm.layers.anova_interaction import AnovaInteraction
from tf_fm.layers.ffm_interaction import FFMInteraction
from tf_fm.layers.field_embedding import FieldEmbedding
from tf_fm.layers.fm_interaction import FMInteraction
from tf_fm.layers.fwfm_interaction import FwFMInteraction
from tf_fm.layers.global_bias import GlobalBias
from tf_fm.layers.prediction_head import PredictionHead
from tf_fm.layers.probit_average import ProbitAverage

__all__ = [
    "AnovaInteraction",
    "FFMInteraction",
    "FieldEmbedding",
    "FMInteraction",
    "FwFMInteraction",
    "GlobalBias",
    "PredictionHead",
    "ProbitAverage",
]
