"""The Ray driver's fit leaves the model as it was when it raises (as ``Recommender.fit``).

No Ray needed: the driver function is replaced by one that changes the model, then fails.
"""

from __future__ import annotations

import warnings
from typing import Any

import numpy as np
import pytest

from privrec.data import synthetic
from privrec.engine import fitting
from privrec.models import DPALS

pytestmark = pytest.mark.filterwarnings("ignore::privrec.errors.PrivacyWarning")


def test_a_failed_distributed_fit_leaves_the_fitted_model_unchanged(
    monkeypatch: pytest.MonkeyPatch,
) -> None:
    data = synthetic(n_users=200, n_items=60, seed=0)
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        model = DPALS(epsilon=1.0, delta=1e-5, unit="user", seed=0).fit(data)
    before = {k: v for k, v in vars(model).items() if k.endswith("_") and not k.startswith("_")}

    def worker_lost(m: Any, *args: Any) -> None:
        m.noise_scale_, m.count_budget_fraction_, m.max_per_user_ = 42.0, 0.5, 3
        raise RuntimeError("a worker died")

    monkeypatch.setattr(fitting, "_fit_dpals", worker_lost)
    catalogue = np.arange(data.n_items)
    with pytest.raises(RuntimeError, match="worker died"):
        fitting.fit_distributed(
            model,
            None,
            catalogue,
            data.n_users,
            data.nnz,
            given=False,
            progress=None,  # type: ignore[arg-type]
        )
    after = {k: v for k, v in vars(model).items() if k.endswith("_") and not k.startswith("_")}
    assert after.keys() == before.keys()
    for key, value in before.items():
        assert after[key] is value, key  # the very same objects: nothing replaced
