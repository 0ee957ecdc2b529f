"""Recommenders, private and not, on one contract (:class:`Recommender`)."""

from privrec.models.als import ImplicitALS
from privrec.models.base import MODEL_REGISTRY, ModelConfig, Recommender, load_model
from privrec.models.dp_als import DPALS
from privrec.models.dp_ease import DPEASE
from privrec.models.dp_popularity import DPPopularity
from privrec.models.ease import EASE
from privrec.models.knn import ItemKNN
from privrec.models.popularity import Popularity

__all__ = [
    "DPALS",
    "DPEASE",
    "EASE",
    "MODEL_REGISTRY",
    "DPPopularity",
    "ImplicitALS",
    "ItemKNN",
    "ModelConfig",
    "Popularity",
    "Recommender",
    "load_model",
]
