"""Import every built-in model so that it registers itself (CLI, ``load_model``).

Only models of this floor: models defined higher up (FederatedMF) are found through the
``privrec.models`` entry points (:mod:`privrec.models.registry`).
"""

from privrec.models.als import ImplicitALS
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
    "DPPopularity",
    "ImplicitALS",
    "ItemKNN",
    "Popularity",
]
