"""Interaction data: the matrix type, loaders for common formats, synthetic data."""

from privrec.data.interactions import DuplicatePolicy, Interactions

__all__ = ["DuplicatePolicy", "Interactions"]
