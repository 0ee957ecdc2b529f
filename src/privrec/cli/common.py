"""Helpers every ``privrec`` command shares: consoles, one-line errors, progress, data and model set-up.

The command modules (:mod:`privrec.cli.training`, :mod:`privrec.cli.secure`, …) import from here;
:mod:`privrec.cli.main` only assembles them, so no command module imports another.
"""

from __future__ import annotations

import tomllib
from collections.abc import Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Any

import numpy as np
import typer
from rich.console import Console
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from privrec.errors import ConfigError, PrivrecError

console = Console()
err_console = Console(stderr=True)
STATE: dict[str, bool] = {"debug": False}


class Protocol(StrEnum):
    holdout = "holdout"
    leave_last_out = "leave-last-out"
    strong = "strong"
    files = "files"


@contextmanager
def handle_errors() -> Iterator[None]:
    """Turn library errors into one red line and exit status 1 (unless --debug)."""
    try:
        yield
    except (PrivrecError, FileNotFoundError, KeyError, IndexError, ValueError) as exc:
        if STATE["debug"]:
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        err_console.print(
            f"[bold red]error:[/] {type(exc).__name__}: {msg}", highlight=False, soft_wrap=True
        )
        raise typer.Exit(1) from None


def progress_bar() -> Progress:
    return Progress(
        TextColumn("[progress.description]{task.description}"),
        BarColumn(),
        TextColumn("{task.completed}/{task.total}"),
        TimeElapsedColumn(),
        console=err_console,
        transient=True,
        disable=not err_console.is_terminal,
    )


def load_data(path: Path, fmt: str | None, binarize: float | None = None) -> Any:
    from privrec.data import load

    data = load(path, format=fmt)
    if binarize is not None:
        data = data.binarize(binarize)
    return data


def parse_params(items: list[str] | None) -> dict[str, Any]:
    """``key=value`` pairs; values parsed as TOML scalars (numbers, booleans, strings)."""
    out: dict[str, Any] = {}
    for item in items or []:
        if "=" not in item:
            raise ConfigError(f"--param expects key=value, found {item!r}")
        key, raw = item.split("=", 1)
        try:
            out[key.strip()] = tomllib.loads(f"v = {raw}")["v"]
        except tomllib.TOMLDecodeError:
            out[key.strip()] = raw
    return out


def privacy_params(epsilon: float | None, delta: float | None, unit: str | None) -> dict[str, Any]:
    out: dict[str, Any] = {}
    if epsilon is not None:
        out["epsilon"] = epsilon
    if delta is not None:
        out["delta"] = delta
    if unit is not None:
        out["unit"] = unit
    return out


def read_config(path: Path | None) -> dict[str, Any]:
    if path is None:
        return {}
    try:
        with path.open("rb") as fh:
            return tomllib.load(fh)
    except FileNotFoundError:
        raise ConfigError(f"config file {str(path)!r} not found") from None
    except tomllib.TOMLDecodeError as exc:
        raise ConfigError(f"config file {str(path)!r} is not valid TOML: {exc}") from None


def build_model(name: str, params: dict[str, Any]) -> Any:
    from privrec.models.private import PrivateRecommender
    from privrec.models.registry import available_models, model_class

    cls = model_class(name)
    if cls is None:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(available_models())}")
    given = [p for p in ("epsilon", "delta", "unit") if p in params]
    if issubclass(cls, PrivateRecommender):
        missing = [p for p in ("epsilon", "delta", "unit") if p not in params]
        if missing:
            raise ConfigError(
                f"{name} is a private model: give --epsilon, --delta and --unit "
                f"(missing: {', '.join(missing)})"
            )
    elif given:
        raise ConfigError(f"{name} is not a private model: --{given[0]} does not apply to it")
    return cls.from_config(params)


def fit_with_progress(model: Any, data: Any) -> Any:
    iterations = model.get_params().get("iterations")
    if iterations is None:
        with err_console.status(f"fitting {model.name}…"):
            return model.fit(data)
    with progress_bar() as bar:
        task = bar.add_task(f"fitting {model.name}", total=int(iterations))

        def step(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return model.fit(data, progress=step)


def coerce_ids(raw: list[str], known: np.ndarray) -> np.ndarray:
    """Command-line ids are strings; match the dtype of the model's ids."""
    if np.issubdtype(known.dtype, np.integer):
        try:
            return np.array([int(r) for r in raw], dtype=known.dtype)
        except ValueError:
            pass
    return np.array(raw, dtype=object if known.dtype == object else known.dtype)


def load_history(path: Path, item_ids: np.ndarray) -> tuple[np.ndarray, int]:
    """Read one user's history for a model that keeps no user data (``--history FILE``).

    The file lists the user's items by their *external* ids, one per line; anything after the
    first comma, tab or space (a rating, a timestamp) is ignored, as are blank lines, lines
    starting with ``#`` and a first line ``item…`` (a header). Returns the internal item indices
    (sorted, unique) and how many listed items the model's catalogue does not hold — those
    cannot influence a recommendation and are left out.
    """
    from privrec.errors import DataError

    if not path.is_file():
        raise DataError("history file not found", file=path)
    try:
        text = path.read_text(encoding="utf-8-sig")
    except UnicodeDecodeError as exc:
        raise DataError(
            "history file is not UTF-8 text", file=path, expected="UTF-8", found=str(exc)
        ) from None
    raw: list[str] = []
    for lineno, line in enumerate(text.splitlines(), start=1):
        first = line.replace(",", " ").replace("\t", " ").strip().split(" ", 1)[0]
        if not first or first.startswith("#"):
            continue
        if lineno == 1 and first.lower().startswith("item"):
            continue
        raw.append(first)
    wanted = coerce_ids(raw, item_ids) if raw else np.zeros(0, dtype=item_ids.dtype)
    order = np.argsort(item_ids, kind="stable")
    pos = np.searchsorted(item_ids[order], wanted)
    pos = np.minimum(pos, max(len(order) - 1, 0))
    found = (item_ids[order][pos] == wanted) if len(order) else np.zeros(len(wanted), dtype=bool)
    return np.unique(order[pos[found]]).astype(np.int64), int((~found).sum())
