"""Hyper-parameter selection that pays for itself: tuning on the user's own data, charged to ε."""

from privrec.tuning.private import TuningResult, private_tune, selection_event

__all__ = ["TuningResult", "private_tune", "selection_event"]
