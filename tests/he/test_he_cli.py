"""``privrec he score``: a trained model scored privately end to end from the command line."""

from __future__ import annotations

from pathlib import Path

import pytest
from typer.testing import CliRunner

pytest.importorskip("tenseal")

from privrec.cli.main import app

runner = CliRunner()


@pytest.mark.parametrize("packing", ["replicated", "compact"])
def test_he_score_prints_top_k_bytes_and_timings(model_file: Path, packing: str) -> None:
    res = runner.invoke(
        app, ["he", "score", str(model_file), "--user", "3", "-k", "5", "--packing", packing]
    )
    assert res.exit_code == 0, res.output
    assert "private top-5 for user 3" in res.output
    assert "bytes up" in res.output and "bytes down" in res.output
    assert "server" in res.output and "decrypt" in res.output
    assert "218" in res.output  # the 128-bit bound is printed next to the modulus size


def test_he_score_matches_plaintext_fold_in(model_file: Path) -> None:
    """Same list as the plaintext model scoring the user folded in from the same history."""
    from privrec.models import load_model

    model = load_model(model_file)
    idx = model.user_index([7])
    ref, _ = model.recommend_history(model.user_items_[idx], k=5)
    private = runner.invoke(app, ["he", "score", str(model_file), "--user", "7", "-k", "5"])
    assert private.exit_code == 0, private.output
    rows = [line.split("│") for line in private.output.splitlines() if line.count("│") >= 3]
    shown = [r[2].strip() for r in rows if r[2].strip().isdigit()]
    assert shown == [str(i) for i in model.item_ids_[ref[0]]]


def test_he_score_with_noise_and_errors(model_file: Path) -> None:
    res = runner.invoke(
        app,
        ["he", "score", str(model_file), "--user", "3", "--noise-epsilon", "1.0"],
    )
    assert res.exit_code == 0, res.output
    assert "score noise" in res.output
    bad = runner.invoke(app, ["he", "score", str(model_file), "--user", "999"])
    assert bad.exit_code == 1
    wrong = runner.invoke(app, ["he", "score", str(model_file), "--user", "3", "--packing", "x"])
    assert wrong.exit_code == 1 and "packing" in wrong.output


def test_he_score_with_a_history_for_a_private_model(model_file: Path) -> None:
    import warnings

    import numpy as np

    from privrec.data import load
    from privrec.models import DPALS, load_model

    data = load(model_file.parent / "u.data")
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        DPALS(epsilon=8.0, delta=1e-3, unit="user", factors=4, seed=0).fit(data).save(
            model_file.parent / "dpals.npz"
        )
    model = load_model(model_file.parent / "dpals.npz")
    x = data.matrix.tocsr()
    items = data.item_ids[x.indices[x.indptr[4] : x.indptr[5]]]
    hist = model_file.parent / "h.txt"
    hist.write_text("item\n" + "\n".join(str(i) for i in items) + "\n")
    res = runner.invoke(
        app,
        ["he", "score", str(model_file.parent / "dpals.npz"), "--history", str(hist), "-k", "4"],
    )
    assert res.exit_code == 0, res.output
    assert "history in h.txt" in res.output  # the table title wraps
    row = np.zeros((1, model.n_items_))
    row[0, np.searchsorted(model.item_ids_, items)] = 1
    ref, _ = model.recommend_history(row, k=4)
    rows = [line.split("│") for line in res.output.splitlines() if line.count("│") >= 3]
    shown = [r[2].strip() for r in rows if r[2].strip().isdigit()]
    assert set(shown) == {str(i) for i in model.item_ids_[ref[0]]}
    bad = runner.invoke(app, ["he", "score", str(model_file.parent / "dpals.npz"), "--user", "3"])
    assert bad.exit_code == 1 and "--history" in bad.output


def test_he_score_ranks_a_neighbour_blend_like_the_model(model_file: Path) -> None:
    """The client applies the model's neighbour blend to the decrypted scores itself."""
    import warnings

    from privrec.data import load
    from privrec.models import DPALS, load_model

    data = load(model_file.parent / "u.data")
    path = model_file.parent / "dpals-nb.npz"
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")
        DPALS(epsilon=8.0, delta=1e-3, unit="user", factors=4, neighbour_blend=0.5, seed=0).fit(
            data
        ).save(path)
    model = load_model(path)
    x = data.matrix.tocsr()
    items = data.item_ids[x.indices[x.indptr[4] : x.indptr[5]]]
    hist = model_file.parent / "h-nb.txt"
    hist.write_text("item\n" + "\n".join(str(i) for i in items) + "\n")
    res = runner.invoke(app, ["he", "score", str(path), "--history", str(hist), "-k", "4"])
    assert res.exit_code == 0, res.output
    rows = [line.split("│") for line in res.output.splitlines() if line.count("│") >= 3]
    shown = [r[2].strip() for r in rows if r[2].strip().lstrip("-").isdigit()]
    ref, _ = model.recommend_history(x[4], k=4)
    assert shown == [str(i) for i in model.item_ids_[ref[0]]]


@pytest.mark.parametrize("params", [{}, {"popularity_blend": 0.0, "popularity_shrinkage": 5.0}])
@pytest.mark.parametrize("where", ["head", "off-head"])
def test_he_score_ranks_like_the_model_for_cold_and_unblended_users(
    model_file: Path, params: dict[str, float], where: str
) -> None:
    """A user with no head history (model scores exactly 0; decrypted ones ~1e-6 of CKKS error)
    and a model with β = 0 but a shrinkage set: the client ranked both unlike the model."""
    import warnings

    import numpy as np

    from privrec.data import load
    from privrec.models import DPALS, load_model

    data = load(model_file.parent / "u.data")
    path = model_file.parent / f"dpals-{len(params)}.npz"
    if not path.exists():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore")
            DPALS(epsilon=8.0, delta=1e-3, unit="user", factors=4, seed=0, **params).fit(data).save(
                path
            )
    model = load_model(path)
    head = set(np.asarray(model.head_items_).tolist())
    pick = [j for j in range(model.n_items_) if (j in head) == (where == "head")][:3]
    hist = model_file.parent / f"h-{where}-{len(params)}.txt"
    hist.write_text("item\n" + "\n".join(str(model.item_ids_[j]) for j in pick) + "\n")
    res = runner.invoke(app, ["he", "score", str(path), "--history", str(hist), "-k", "5"])
    assert res.exit_code == 0, res.output
    rows = [line.split("│") for line in res.output.splitlines() if line.count("│") >= 3]
    shown = [r[2].strip() for r in rows if r[2].strip().lstrip("-").isdigit()]
    import scipy.sparse as sp

    row = sp.csr_matrix(
        (np.ones(len(pick), np.float32), (np.zeros(len(pick), int), pick)),
        shape=(1, model.n_items_),
    )
    ref, _ = model.recommend_history(row, k=5)
    assert shown == [str(i) for i in model.item_ids_[ref[0]]]
