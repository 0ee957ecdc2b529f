"""``privrec recommend``: top-k lists from a saved model — for known users, one history, or a
batch of users in a file.

A private model's file holds no users (only what its guarantee releases), so it serves a
person from their own history: ``--history FILE`` for one, ``--users FILE --out FILE`` for
many (one row per interaction, columns ``user`` and ``item``). Non-private models saved with
their training data also serve known users by id (``--user``, or a one-column ``--users``
file).
"""

from __future__ import annotations

from pathlib import Path
from typing import Annotated, Any

import numpy as np
import pandas as pd
import scipy.sparse as sp
import typer
from rich.table import Table

from privrec.cli.common import (
    VerifyKeyOpt,
    check_output,
    coerce_ids,
    console,
    handle_errors,
    load_history,
    note,
)
from privrec.errors import ConfigError, DataError
from privrec.models.persistence import atomic_output

_OUT_SUFFIXES = (".csv", ".tsv", ".parquet")


def recommend(
    model_path: Annotated[Path, typer.Argument(help="A model saved by `privrec train`.")],
    user: Annotated[
        list[str] | None,
        typer.Option("--user", "-u", help="External user id of a training user (repeatable)."),
    ] = None,
    history: Annotated[
        Path | None,
        typer.Option(
            "--history",
            help="One user's history: a file of external item ids, one per line (private models).",
        ),
    ] = None,
    users: Annotated[
        Path | None,
        typer.Option(
            "--users",
            help="Many users: CSV/TSV/Parquet with columns user,item (histories) or only user "
            "(known users of a non-private model).",
        ),
    ] = None,
    out: Annotated[
        Path | None,
        typer.Option("--out", help="Write the lists to this .csv, .tsv or .parquet file."),
    ] = None,
    k: Annotated[int, typer.Option("--k", "-k", min=1, help="List length.")] = 10,
    include_seen: Annotated[bool, typer.Option(help="Allow items the user already has.")] = False,
    verify_key: VerifyKeyOpt = None,
) -> None:
    """Print (or write) the top-k items for users of a saved model.

    With --verify-key, the model file must be signed by that key (checked before it is read).
    """
    from privrec.models import load_model

    with handle_errors():
        given = [n for n, v in (("--user", user), ("--history", history), ("--users", users)) if v]
        if len(given) != 1:
            raise ConfigError(
                "give exactly one of --user ID, --history FILE or --users FILE"
                + (f" (got {', '.join(given)})" if given else "")
            )
        if out is not None and out.suffix.lower() not in _OUT_SUFFIXES:
            raise ConfigError(f"--out must end in {', '.join(_OUT_SUFFIXES)}, got {out.name!r}")
        check_output(out)
        model = load_model(model_path, verify_key=verify_key)
        exclude = not include_seen
        if user:
            ids = coerce_ids(user, model.user_ids_)
            items, scores = model.recommend_ids(ids, k=k, exclude_seen=exclude)
            names = list(user)
        elif history is not None:
            idx, unknown = load_history(history, model.item_ids_)
            if unknown:
                note(f"{unknown} listed item(s) are not in the model's catalogue and were left out")
            row = sp.csr_matrix(
                (np.ones(len(idx), np.float32), idx, [0, len(idx)]), shape=(1, model.n_items_)
            )
            items, scores = _external(
                model, *model.recommend_history(row, k=k, exclude_seen=exclude)
            )
            names = [history.stem]
        else:
            assert users is not None
            names, items, scores = _batch(model, users, k, exclude)
        frame = _frame(names, items, scores)
        if out is not None:
            _write(frame, out)
            console.print(f"wrote {len(frame):,} recommendations for {len(names):,} users → {out}")
            return
        table = Table("user", "rank", "item", "score")
        for rec in frame.itertuples(index=False):
            table.add_row(str(rec.user), str(rec.rank), str(rec.item), f"{rec.score:.4f}")
        console.print(table)


def _external(model: Any, items: np.ndarray, scores: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
    ext = np.empty(items.shape, dtype=object)
    ok = items >= 0
    ext[ok] = model.item_ids_[items[ok]]
    ext[~ok] = None
    return ext, scores


def _read_table(path: Path) -> pd.DataFrame:
    if not path.is_file():
        raise DataError("users file not found", file=path)
    try:
        if path.suffix.lower() == ".parquet":
            frame = pd.read_parquet(path)
        else:
            sep = "\t" if path.suffix.lower() == ".tsv" else ","
            frame = pd.read_csv(path, sep=sep, dtype=str, keep_default_na=False)
    except (ValueError, OSError, ImportError) as exc:
        raise DataError("cannot read the users file", file=path, found=str(exc)) from None
    cols = [str(c).strip().lower() for c in frame.columns]
    frame.columns = pd.Index(cols)
    if "user" not in cols:
        raise DataError(
            "the users file needs a header with a 'user' column (and 'item' for histories)",
            file=path,
            field="user",
            found=cols,
        )
    keep = ["user", "item"] if "item" in cols else ["user"]
    frame = frame[keep].astype(str)
    if frame.empty:
        raise DataError("the users file holds no rows", file=path)
    if (frame["user"].str.strip() == "").any():
        line = int(np.flatnonzero((frame["user"].str.strip() == "").to_numpy())[0]) + 2
        raise DataError("empty user id", file=path, line=line, field="user")
    return frame


def _batch(
    model: Any, path: Path, k: int, exclude: bool
) -> tuple[list[str], np.ndarray, np.ndarray]:
    frame = _read_table(path)
    if "item" not in frame.columns:
        ids = coerce_ids(list(dict.fromkeys(frame["user"])), model.user_ids_)
        items, scores = model.recommend_ids(ids, k=k, exclude_seen=exclude)
        return [str(u) for u in ids], items, scores
    codes, uniques = pd.factorize(frame["user"], sort=False)
    wanted = coerce_ids(frame["item"].tolist(), model.item_ids_)
    pos = pd.Index(model.item_ids_).get_indexer(pd.Index(wanted))
    known = pos >= 0
    if (~known).any():
        note(
            f"{int((~known).sum())} row(s) name items outside the model's catalogue and were left out"
        )
    hist = sp.csr_matrix(
        (np.ones(int(known.sum()), np.float32), (codes[known], pos[known])),
        shape=(len(uniques), model.n_items_),
    )
    hist.sum_duplicates()
    hist.data[:] = 1.0
    items, scores = _external(model, *model.recommend_history(hist, k=k, exclude_seen=exclude))
    return [str(u) for u in uniques], items, scores


def _frame(names: list[str], items: np.ndarray, scores: np.ndarray) -> pd.DataFrame:
    items = np.atleast_2d(items)
    scores = np.atleast_2d(scores)
    n, kk = items.shape
    frame = pd.DataFrame(
        {
            "user": np.repeat(np.asarray(names, dtype=object), kk),
            "rank": np.tile(np.arange(1, kk + 1), n),
            "item": items.ravel(),
            "score": scores.ravel().astype(np.float64),
        }
    )
    return frame[frame["item"].notna()].reset_index(drop=True)


def _write(frame: pd.DataFrame, out: Path) -> None:
    frame = frame.assign(item=frame["item"].astype(str))
    with atomic_output(out) as tmp:  # never a cut-off file (a full disk, an error)
        if out.suffix.lower() == ".parquet":
            frame.to_parquet(tmp, index=False)
        else:
            frame.to_csv(tmp, index=False, sep="\t" if out.suffix.lower() == ".tsv" else ",")
