"""Interaction data: the matrix type, loaders for common formats, synthetic data."""

from privrec.data.interactions import DuplicatePolicy, Interactions
from privrec.data.loaders import (
    FORMATS,
    from_dataframe,
    load,
    load_csv,
    load_lastfm,
    load_ml100k,
    load_movielens_csv,
    load_movielens_dat,
    load_movietweetings,
    load_parquet,
    load_tsv,
    load_user_item_lists,
    read_user_item_lists,
)
from privrec.data.synthetic import synthetic

__all__ = [
    "FORMATS",
    "DuplicatePolicy",
    "Interactions",
    "from_dataframe",
    "load",
    "load_csv",
    "load_lastfm",
    "load_ml100k",
    "load_movielens_csv",
    "load_movielens_dat",
    "load_movietweetings",
    "load_parquet",
    "load_tsv",
    "load_user_item_lists",
    "read_user_item_lists",
    "synthetic",
]
