"""Offline evaluation: reproducible splits, vectorised top-k metrics, one-call reports."""

from privrec.evaluation.metrics import (
    METRICS,
    PerUserMetrics,
    catalogue_coverage,
    hits_matrix,
    per_user_metrics,
)
from privrec.evaluation.protocol import EvaluationResult, SupportsRecommend, evaluate
from privrec.evaluation.saved import SavedModelOnSplit, on_split
from privrec.evaluation.splits import (
    EvalSet,
    Split,
    leave_last_out,
    load_split,
    random_holdout,
    split_from_frames,
    split_from_interactions,
    strong_generalization,
)

__all__ = [
    "METRICS",
    "EvalSet",
    "EvaluationResult",
    "PerUserMetrics",
    "SavedModelOnSplit",
    "Split",
    "SupportsRecommend",
    "catalogue_coverage",
    "evaluate",
    "hits_matrix",
    "leave_last_out",
    "load_split",
    "on_split",
    "per_user_metrics",
    "random_holdout",
    "split_from_frames",
    "split_from_interactions",
    "strong_generalization",
]
