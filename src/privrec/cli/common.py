"""Helpers every ``privrec`` command shares: consoles, one-line errors, progress, data and model set-up.

The command modules (:mod:`privrec.cli.training`, :mod:`privrec.cli.secure`, …) import from here;
:mod:`privrec.cli.main` only assembles them, so no command module imports another.
"""

from __future__ import annotations

import math
import os
import sys
import time
import tomllib
import warnings
from collections.abc import Callable, Iterator
from contextlib import contextmanager
from enum import StrEnum
from pathlib import Path
from typing import Annotated, Any

import numpy as np
import typer
from rich.console import Console
from rich.markup import escape
from rich.progress import BarColumn, Progress, TextColumn, TimeElapsedColumn

from privrec.errors import ConfigError, DataError, OutputPathError, PrivrecError

console = Console()
err_console = Console(stderr=True)
STATE: dict[str, bool] = {"debug": False}


#: ``--data`` / ``-d``: every command that reads interactions finds them alike (existing_data)
DATA_HELP = "Interaction file, dataset folder, or a shared dataset's name (ml-100k)."
DataOpt = Annotated[Path, typer.Option("--data", "-d", help=DATA_HELP)]
OptionalDataOpt = Annotated[Path | None, typer.Option("--data", "-d", help=DATA_HELP)]
#: ``--sign-key``: every command that writes a model file can sign it
SignKeyOpt = Annotated[
    Path | None,
    typer.Option(
        "--sign-key",
        help="Sign the model file with this Ed25519 private key (signing.key from "
        "`privrec privacy keygen DIR`; must be mode 600).",
    ),
]
#: ``--ledger``, ``--dataset``, ``--purpose``, ``--key``: the commands that can fit through the ledger
LedgerOpt = Annotated[
    str | None,
    typer.Option(help="Charge the ledger at this URL (default $PRIVREC_DB or privrec.db)."),
]
DatasetOpt = Annotated[
    str | None, typer.Option(help="Ledger dataset: apply its policy and charge its budget.")
]
PurposeOpt = Annotated[str | None, typer.Option(help="Ledger: purpose of this charge.")]
ApiKeyOpt = Annotated[
    str | None, typer.Option(envvar="PRIVREC_API_KEY", help="Ledger: your API key.")
]
#: ``--verify-key``: every command that reads a model file can require a signature
VerifyKeyOpt = Annotated[
    Path | None,
    typer.Option(
        "--verify-key",
        help="Refuse the model file unless it is signed by this Ed25519 public key "
        "(signing.pub); checked before anything in the file is read.",
    ),
]


def signing_key(path: Path | None) -> Any:
    """The private key of ``--sign-key``, read (and its mode checked) before any work starts."""
    if path is None:
        return None
    from privrec.models.signing import load_signing_key

    return load_signing_key(path)


def signed_note(signer: Any, saved: object) -> None:
    """Print who signed the model file a command just wrote (nothing when it was not signed)."""
    if signer is not None:
        from privrec.models.signing import fingerprint

        console.print(f"signed {saved} as {fingerprint(signer)}", highlight=False, markup=False)


def signature_line(model: Any) -> str:
    """What a command prints about the signature of the model file it loaded."""
    sig = getattr(model, "file_signature_", None)
    if sig is None:
        return (
            "signature: none — nothing shows who produced this file (sign it with "
            "`privrec privacy sign` or `privrec train --sign-key`)"
        )
    return f"signature: {sig.describe()}"


class Protocol(StrEnum):
    holdout = "holdout"
    leave_last_out = "leave-last-out"
    strong = "strong"
    files = "files"


@contextmanager
def handle_errors() -> Iterator[None]:
    """Turn library errors into one red line and exit status 1 (unless --debug).

    Also file-system errors (missing files, permissions, full disks): one line naming the path,
    never a traceback.
    """
    try:
        with warnings.catch_warnings():
            warnings.showwarning = _show_warning
            yield
    except (PrivrecError, OSError, KeyError, IndexError, ValueError) as exc:
        if STATE["debug"]:
            raise
        msg = exc.args[0] if isinstance(exc, KeyError) and exc.args else str(exc)
        err_console.print(  # the message is text, not markup: "[0.5, 1.0]" must survive
            f"[bold red]error:[/] {type(exc).__name__}: {escape(str(msg))}",
            highlight=False,
            soft_wrap=True,
            markup=True,
        )
        raise typer.Exit(1) from None


def _show_warning(
    message: Warning | str,
    category: type[Warning],
    filename: str,
    lineno: int,
    file: Any = None,
    line: str | None = None,
) -> None:
    """Warnings as one line naming their kind — not the library source path and line."""
    if STATE["debug"]:
        warnings._showwarnmsg_impl(  # type: ignore[attr-defined]
            warnings.WarningMessage(message, category, filename, lineno, file, line)
        )
        return
    err_console.print(
        f"[yellow]warning:[/] {category.__name__}: {escape(str(message))}",
        highlight=False,
        soft_wrap=True,
    )


# ----------------------------------------------------------------------------- parse-time checks
def number_check(
    *,
    gt: float | None = None,
    ge: float | None = None,
    lt: float | None = None,
    le: float | None = None,
) -> Callable[[float | None], float | None]:
    """A typer callback refusing NaN, ±inf and values outside the given bounds at parse time."""

    def check(value: float | None) -> float | None:
        if value is None:
            return None
        bounds = []
        if gt is not None:
            bounds.append(f"> {gt:g}")
        if ge is not None:
            bounds.append(f">= {ge:g}")
        if lt is not None:
            bounds.append(f"< {lt:g}")
        if le is not None:
            bounds.append(f"<= {le:g}")
        ok = math.isfinite(value) and not (
            (gt is not None and not value > gt)
            or (ge is not None and not value >= ge)
            or (lt is not None and not value < lt)
            or (le is not None and not value <= le)
        )
        if not ok:
            want = "a finite number" + (f" {' and '.join(bounds)}" if bounds else "")
            raise typer.BadParameter(f"must be {want}, got {value!r}")
        return value

    return check


def parse_epsilons(text: str) -> list[float]:
    """``"0.5,1,2,5"`` → ``[0.5, 1.0, 2.0, 5.0]`` (finite, positive, sorted, unique)."""
    out = []
    for part in text.split(","):
        part = part.strip()
        try:
            v = float(part)
        except ValueError:
            raise typer.BadParameter(f"not a number: {part!r}") from None
        if not (math.isfinite(v) and v > 0):
            raise typer.BadParameter(f"every ε must be a finite number > 0, got {part!r}")
        out.append(v)
    if not out:
        raise typer.BadParameter("give at least one ε")
    return sorted(set(out))


def check_output(path: Path | None) -> Path | None:
    """Fail now — before any work — when ``path`` cannot be written.

    Creates nothing that stays behind: a file that did not exist is created and removed again;
    a missing parent folder must be creatable under its nearest existing ancestor.
    """
    if path is None:
        return None
    if path.is_dir():
        raise OutputPathError(f"output {str(path)!r} is a folder, not a file")
    parent = path.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise OutputPathError(
            f"output {str(path)!r} cannot be written: {str(parent)!r} is not a folder"
        )
    try:
        if path.parent.exists():
            existed = path.exists()
            with path.open("ab"):
                pass
            if not existed:
                path.unlink()
        else:
            probe = parent / f".privrec-write-test-{os.getpid()}"
            probe.touch()
            probe.unlink()
    except OSError as exc:
        raise OutputPathError(
            f"output {str(path)!r} cannot be written: {exc.strerror or exc}"
        ) from None
    return path


def check_delta_for_data(params: dict[str, Any], data: Any, force: bool) -> None:
    """δ ≥ 1/(number of privacy units) is an error on the command line unless forced.

    Such a δ lets a mechanism publish one unit's data outright and still be "(ε, δ)-DP"; the
    library only warns, the command line refuses (``--force-weak-delta`` to train anyway).

    An ε above :data:`~privrec.privacy.budget.WEAK_EPSILON` is allowed but warns
    (:func:`~privrec.privacy.budget.warn_weak_budget`, the rule the ledger's caps share).
    """
    from privrec.privacy.budget import warn_weak_budget

    eps = params.get("epsilon")
    if isinstance(eps, int | float):
        warn_weak_budget(eps, stacklevel=2)
    delta = params.get("delta")
    if delta is None:
        return
    unit = str(params.get("unit", "user")).lower()
    n = data.n_users if unit == "user" else max(data.nnz, 1)
    if n > 0 and delta >= 1.0 / n:
        what = "users" if unit == "user" else "interactions"
        msg = (
            f"delta={delta:g} is not below 1/(number of {what}) ≈ {1.0 / n:.1e}: a mechanism could "
            "publish one person's data outright and still meet it. Use a much smaller delta"
        )
        if not force:
            raise ConfigError(msg + ", or pass --force-weak-delta to train anyway")
        warnings.warn(msg + " (forced with --force-weak-delta)", stacklevel=2)


# ---------------------------------------------------------------------------------- progress
def stderr_is_tty() -> bool:
    return err_console.is_terminal


def print_plain(text: str) -> None:
    """Write machine-readable text (TOML, Markdown, CSV) to stdout exactly as given.

    Not through rich's :data:`console`: when stdout is not a terminal rich wraps at 80 columns
    (or ``$COLUMNS``), which cuts a long TOML comment or a Markdown table row onto a second
    line — the output would no longer parse. Ends with exactly one newline.
    """
    sys.stdout.write(text.rstrip("\n") + "\n")
    sys.stdout.flush()


def note(text: str) -> None:
    """One progress line on stderr (kept in logs; rich progress bars are for terminals)."""
    err_console.print(text, highlight=False, soft_wrap=True, markup=False)


def kernels_cold() -> bool:
    """Whether privrec's numba kernels have never been compiled into the cache folder."""
    from privrec import numba_cache_dir

    root = Path(numba_cache_dir())
    try:
        return not any(root.glob("*/als_kernels.*.nbi"))
    except OSError:
        return True


_NUMBA_MODELS = {"als", "dpals", "federated_mf"}


def compile_notice(model_name: str) -> None:
    """Say once, before a long silence, that the kernels are being compiled."""
    if model_name in _NUMBA_MODELS and kernels_cold() and not STATE.get("compile_noted"):
        STATE["compile_noted"] = True
        from privrec import numba_cache_dir

        note(
            "compiling kernels once (about a minute); they are cached in "
            f"{numba_cache_dir()} for later runs"
        )


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


def data_file(path: Path) -> Path:
    """``-d PATH`` as a file: a dataset's download folder (``ml-100k/``, or the folder a shared
    dataset's name found) becomes the one interaction file in it (:data:`u.data
    <privrec.data.loaders.DATASET_FILES>`, ``ratings.dat`` …), said on stderr; any other folder
    is refused naming what to give instead (:func:`~privrec.data.loaders.folder_error`)."""
    from privrec.data.loaders import dataset_files, folder_error

    if not path.is_dir():
        return path
    found = dataset_files(path)
    if len(found) != 1:
        raise folder_error(path)
    note(f"reading {found[0]} (the interactions in the folder {path})")
    return found[0]


def _format_hint(exc: DataError) -> DataError:
    """A loader's format error as the command line words it: every command reading data
    through :func:`load_data` has ``--format`` (``-f``), while the library's message names the
    Python argument ``format=``, which a shell user cannot pass."""
    return DataError(
        exc.message.replace("pass format=", "pass --format (-f)"),
        file=exc.file,
        line=exc.line,
        field="--format",
        expected=exc.expected,
        found=exc.found,
    )


def existing_data(path: Path) -> Path:
    """``path`` if it exists; else, for a plain name (``-d ml-100k``), the shared dataset of
    that name, and for a path into a ``shared/data`` folder (``../shared/data/ml-100k``, as the
    docs write it from a checkout) the same dataset under the shared data folder; else a
    :class:`DataError` — every command reading ``--data`` finds the same things. Only a plain
    name is looked up: ``../../x`` is never read from beside the shared folder."""
    from privrec.data.shared import resolve_shared_path, shared_dataset

    if path.exists():
        return path
    name = str(path)
    plain = len(path.parts) == 1 and name not in (".", "..") and not path.is_absolute()
    found = shared_dataset(name) if plain else resolve_shared_path(path)
    if found is None or not found.exists():
        raise DataError("not found (no such file, folder or shared dataset)", file=path)
    return found


def load_data(path: Path, fmt: str | None, binarize: float | None = None) -> Any:
    from privrec.data import load

    path = data_file(existing_data(path))
    try:
        data = load(path, format=fmt)
    except DataError as exc:
        if type(exc) is DataError and exc.field == "format":
            raise _format_hint(exc) from None
        raise
    if binarize is not None:
        data = data.binarize(binarize)
        if data.nnz == 0:
            raise DataError(
                f"no interaction has a value >= {binarize:g}: nothing to train on",
                file=path,
                field="binarize",
            )
    return data


def make_split(
    protocol: Protocol,
    data_path: Path,
    fmt: str | None,
    binarize: float | None,
    seed: int,
    test_fraction: float,
) -> Any:
    from privrec import evaluation as ev

    data_path = existing_data(data_path)
    if protocol is Protocol.files:
        return ev.load_split(data_path, merge_valid_into_train=True)
    data = load_data(data_path, fmt, binarize)
    if protocol is Protocol.holdout:
        return ev.random_holdout(data, test_fraction=test_fraction, seed=seed)
    if protocol is Protocol.leave_last_out:
        return ev.leave_last_out(data)
    n = max(1, round(0.1 * data.n_users))
    return ev.strong_generalization(data, n_heldout_users=n, seed=seed)


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
    except UnicodeDecodeError:
        raise ConfigError(f"config file {str(path)!r} is not UTF-8 text") from None


def is_private(name: str) -> bool:
    """Whether the registered model ``name`` is a private one (unknown names: ``False``)."""
    from privrec.models.private import PrivateRecommender
    from privrec.models.registry import model_class

    cls = model_class(name)
    return cls is not None and issubclass(cls, PrivateRecommender)


def build_model(name: str, params: dict[str, Any], privacy: dict[str, Any] | None = None) -> Any:
    """A model from its registry name and parameters.

    ``privacy`` (ε, δ, unit from the command line) goes to private models only; with
    ``privacy=None`` they must be in ``params`` and a non-private model refuses them.
    """
    from privrec.models.private import PrivateRecommender
    from privrec.models.registry import available_models, model_class

    cls = model_class(name)
    if cls is None:
        raise ConfigError(f"unknown model {name!r}; choose one of: {', '.join(available_models())}")
    private = issubclass(cls, PrivateRecommender)
    if privacy is not None and private:
        params = {**params, **privacy}
    given = [p for p in ("epsilon", "delta", "unit") if p in params]
    if private:
        missing = [p for p in ("epsilon", "delta", "unit") if p not in params]
        if missing:
            raise ConfigError(
                f"{name} is a private model: give --epsilon, --delta and --unit "
                f"(missing: {', '.join(missing)})"
            )
    elif given:
        raise ConfigError(f"{name} is not a private model: --{given[0]} does not apply to it")
    return cls.from_config(params)


_STEP_MODELS = {"als", "dpals"}  # fit(..., progress=callback(done, total))


def fit_with_progress(model: Any, data: Any, label: str | None = None) -> Any:
    """Fit ``model``: a progress bar on a terminal, one line per step when stderr is a log."""
    name = label or model.name
    compile_notice(model.name)
    steps = model.name in _STEP_MODELS
    t0 = time.perf_counter()
    if not stderr_is_tty():  # a log: one line per step and one at the end, nothing before

        def line(done: int, total: int) -> None:
            note(f"fitting {name}: step {done}/{total} ({time.perf_counter() - t0:.1f} s)")

        out = model.fit(data, progress=line) if steps else model.fit(data)
        note(f"fitted {name} in {time.perf_counter() - t0:.1f} s")
        return out
    if not steps:
        with err_console.status(f"fitting {name}…"):
            return model.fit(data)
    with progress_bar() as bar:
        iterations = model.get_params().get("iterations")
        task = bar.add_task(f"fitting {name}", total=iterations)

        def step(done: int, total: int) -> None:
            bar.update(task, completed=done, total=total)

        return model.fit(data, progress=step)


def privacy_summary(guarantee: Any, saved: object) -> str:
    """The one line a training prints about its guarantee (plain text, no markup).

    A model trained with seeded noise carries the (ε, δ) of its mechanism but is **not
    private** (its noise can be reproduced): the line says so itself, since the warning goes to
    stderr and a log of stdout alone must not read as a privacy claim.
    """
    line = (
        f"privacy: ({guarantee.epsilon:.3g}, {guarantee.delta:.1e})-DP per "
        f"{guarantee.unit.value}; `privrec privacy explain {saved}` says what that means"
    )
    if getattr(guarantee, "seeded_noise", False):
        line += (
            " — but the noise was seeded: this model is NOT private (tests and experiments only)"
        )
    return line


def rounded(n: int) -> str:
    """A count for logs and reports, to two significant figures (``≈ 940``): exact counts of
    training users are not something a private run should print."""
    from privrec.evaluation.protocol import approx_count

    return approx_count(n)


def items_count(n: int, *, public: bool) -> str:
    """How a training line prints its number of items.

    Parameters
    ----------
    n
        The number of items: of the model's catalogue when one was given (``--items``), else
        of the data the model was fitted on.
    public
        ``True`` when the count says nothing about the training data — an explicit catalogue
        (``--items``; the saved file holds exactly these items) or a non-private model. A
        private model's item count learnt from its data is rounded like its user count
        (:func:`rounded`): the exact number could tell whether one rare
        item, and so the one user who rated it, was in the data.
    """
    return f"{n:,}" if public else rounded(n)


def coerce_ids(raw: list[str], known: np.ndarray) -> np.ndarray:
    """Command-line ids are strings; match the dtype of the model's ids."""
    if np.issubdtype(known.dtype, np.integer):
        try:
            return np.array([int(r) for r in raw], dtype=known.dtype)
        except ValueError:
            pass
    if known.dtype.kind in "US":  # never the model's fixed width: "u100XYZ" cut to "u100" is
        return np.array([str(r) for r in raw], dtype=str)  # another person (exact match only)
    return np.array(raw, dtype=object if known.dtype == object else known.dtype)


def load_history(path: Path, item_ids: np.ndarray) -> tuple[np.ndarray, int]:
    """Read one user's history for a model that keeps no user data (``--history FILE``).

    The file lists the user's items by their *external* ids, one per line; anything after the
    first comma, tab or space (a rating, a timestamp) is ignored, as are blank lines, lines
    starting with ``#`` and a first line ``item`` / ``item_id`` (a header). Returns the internal item indices
    (sorted, unique) and how many listed items the model's catalogue does not hold — those
    cannot influence a recommendation and are left out.
    """
    from privrec.data.loaders import ITEM_HEADERS
    from privrec.errors import DataError

    if not path.is_file():
        what = "is not a regular file" if path.exists() else "not found"
        raise DataError(f"history file {what}", file=path)
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
        if lineno == 1 and first.lower() in ITEM_HEADERS:
            continue
        raw.append(first)
    wanted = coerce_ids(raw, item_ids) if raw else np.zeros(0, dtype=item_ids.dtype)
    order = np.argsort(item_ids, kind="stable")
    pos = np.searchsorted(item_ids[order], wanted)
    pos = np.minimum(pos, max(len(order) - 1, 0))
    found = (item_ids[order][pos] == wanted) if len(order) else np.zeros(len(wanted), dtype=bool)
    return np.unique(order[pos[found]]).astype(np.int64), int((~found).sum())


def user_history(
    model: Any, model_path: Path, user: str | None, history: Path | None
) -> tuple[np.ndarray, str]:
    """One user's history as a 0/1 row over the model's items, from ``--user`` or ``--history``.

    A private model keeps no users: its user's items come from ``--history`` (external item
    ids, one per line); ``--user`` reads a non-private model's stored history.
    """
    from privrec.errors import MissingUserDataError

    if (user is None) == (history is None):
        raise ConfigError("give exactly one of --user ID and --history FILE")
    row = np.zeros(model.n_items_, dtype=np.float64)
    if history is not None:
        idx, unknown = load_history(history, np.asarray(model.item_ids_))
        if unknown:
            err_console.print(
                f"note: {unknown} listed item(s) are not in the model's catalogue and were "
                "left out",
                highlight=False,
            )
        row[idx] = 1.0
        return row, f"the history in {history.name}"
    assert user is not None
    if getattr(model, "_released_only", False) or model.n_users_ == 0:
        raise MissingUserDataError(
            f"{model_path} holds only released parameters, no users: pass the user's items "
            "with --history FILE"
        )
    idx = model.user_index(coerce_ids([user], model.user_ids_))
    row[:] = model.user_items_[idx].toarray()[0]
    return row, f"user {user}"
