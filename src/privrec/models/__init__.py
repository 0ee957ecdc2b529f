"""Recommenders, private and not, on one contract (:class:`Recommender`)."""

from privrec.models.base import MODEL_REGISTRY, ModelConfig, Recommender, load_model

__all__ = ["MODEL_REGISTRY", "ModelConfig", "Recommender", "load_model"]
