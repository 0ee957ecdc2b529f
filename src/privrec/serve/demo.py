"""A working service in one call: ledger, policy, budgets, keys, private models, evaluations.

``python -m privrec.serve.demo DIR`` (what ``make serve`` runs) builds, in ``DIR``:

* a SQLite ledger with an owner (olga), two analysts (ann, ben) and an auditor (dora), their API
  keys in ``DIR/keys.txt`` (readable by you only);
* a dataset ``ratings`` — MovieLens 100k from the shared data when present (segments: gender and
  age band from ``u.user``), else synthetic data (segment: a region derived from the user id) —
  registered under a policy (purpose, minimisation, deletion retrain rule, budget);
* DPALS models at several ε trained **through the ledger** (write-ahead charges, artifacts with
  lineage) on the training users, each evaluated on held-out users by fold-in (strong
  generalisation) with the per-activity-quartile breakdown written beside it;
* an analyst budget per analyst, a few DP queries already answered, one deletion request;
* ``DIR/datasets.toml`` telling ``privrec serve`` where the data and its public item catalogue
  (``data/items.txt``, every item id of the data set) are.

The tests and the benchmark build their worlds with the same function on smaller data.
"""

from __future__ import annotations

import hashlib
import os
import sys
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np
import scipy.sparse as sp

from privrec.data.interactions import Interactions

__all__ = ["DemoWorld", "build_demo", "main"]


@dataclass
class DemoWorld:
    root: Path
    url: str
    models_dir: Path
    datasets_file: Path
    keys: dict[str, str]
    models: list[Path] = field(default_factory=list)


def _write_tsv(data: Interactions, path: Path) -> None:
    m = data.matrix.tocoo()
    users = np.asarray(data.user_ids)[m.row]
    items = np.asarray(data.item_ids)[m.col]
    with path.open("w", encoding="utf-8") as fh:
        fh.write("user\titem\n")
        fh.writelines(f"{u}\t{i}\n" for u, i in zip(users.tolist(), items.tolist(), strict=True))


def _segments_synthetic(user_ids: np.ndarray, path: Path) -> dict[str, list[str]]:
    regions = ["north", "south", "east", "west"]
    with path.open("w", encoding="utf-8") as fh:
        fh.write("user,region\n")
        for u in np.asarray(user_ids).tolist():
            h = hashlib.sha256(str(u).encode()).digest()[0]
            fh.write(f"{u},{regions[h % 4]}\n")
    return {"region": regions}


def _segments_ml100k(users_file: Path, path: Path) -> dict[str, list[str]]:
    bands = ["<25", "25-34", "35-49", "50+"]
    with path.open("w", encoding="utf-8") as fh:
        fh.write("user,gender,age\n")
        for line in users_file.read_text(encoding="latin-1").splitlines():
            uid, age, gender, *_ = line.split("|")
            a = int(age)
            band = bands[0] if a < 25 else bands[1] if a < 35 else bands[2] if a < 50 else bands[3]
            fh.write(f"{uid},{gender},{band}\n")
    return {"gender": ["F", "M"], "age": bands}


def _reindexed_split(split: Any, train: Interactions) -> Any:
    """``split``'s test users re-expressed in the item space of ``train`` (the governed data)."""
    from privrec.evaluation.splits import EvalSet, Split

    src_ids = np.asarray(split.train.item_ids)
    pos = {str(v): i for i, v in enumerate(np.asarray(train.item_ids).tolist())}
    mapping = np.array([pos.get(str(v), -1) for v in src_ids.tolist()], dtype=np.int64)

    def move(m: sp.csr_matrix) -> sp.csr_matrix:
        coo = m.tocoo()
        keep = mapping[coo.col] >= 0
        return sp.csr_matrix(
            (coo.data[keep], (coo.row[keep], mapping[coo.col[keep]])),
            shape=(m.shape[0], train.n_items),
            dtype=np.float32,
        )

    es = split.test
    test = EvalSet(targets=move(es.targets), user_ids=es.user_ids, fold_in=move(es.fold_in))
    return Split(train=train, valid=None, test=test, protocol=split.protocol, seed=split.seed)


def build_demo(
    root: str | Path,
    *,
    data: Interactions | None = None,
    epsilons: tuple[float, ...] = (0.5, 1.0, 2.0, 4.0, 8.0),
    factors: int = 32,
    heldout_users: float = 0.15,
    queries: bool = True,
    dataset_epsilon: float = 40.0,
    analyst_epsilon: float = 4.0,
    url: str | None = None,
) -> DemoWorld:
    """Build (or rebuild from scratch) a demo world under ``root``; see the module docstring.

    ``url`` puts the ledger elsewhere (an empty PostgreSQL database, say) instead of
    ``root/privrec.db``.
    """
    from privrec.data import load
    from privrec.data.shared import shared_dataset
    from privrec.evaluation import evaluate
    from privrec.evaluation.splits import strong_generalization
    from privrec.governance import Ledger
    from privrec.governance.policy import policy_from_dict
    from privrec.models.dp_als import DPALS
    from privrec.serve.datasets import ServedDataset, load_dataset_specs
    from privrec.serve.models import record_evaluation
    from privrec.serve.queries import QueryRequest, run_query

    root = Path(root)
    (root / "models").mkdir(parents=True, exist_ok=True)
    (root / "data").mkdir(exist_ok=True)
    db = root / "privrec.db"
    if url is None:
        for leftover in (db, Path(f"{db}-wal"), Path(f"{db}-shm")):
            leftover.unlink(missing_ok=True)
        url = f"sqlite:///{db}"
    seg_file = root / "data" / "users.csv"
    if data is None:
        ml = shared_dataset("ml-100k")
        if ml is not None:
            data = load(ml / "u.data", format="ml-100k")
            columns = _segments_ml100k(ml / "u.user", seg_file)
        else:
            from privrec.data import synthetic

            data = synthetic(n_users=1500, n_items=600, seed=0)
            columns = _segments_synthetic(np.asarray(data.user_ids), seg_file)
    else:
        columns = _segments_synthetic(np.asarray(data.user_ids), seg_file)
    data = data.binarize(0.0) if data.matrix.nnz else data

    split = strong_generalization(data, heldout_users, valid=False, seed=0)
    data_file = root / "data" / "ratings.tsv"
    _write_tsv(split.train, data_file)
    # the public item catalogue, declared: the demo records a deletion request, and a catalogue
    # taken from the data file would then stop item-level queries (docs/serve.md)
    catalogue = root / "data" / "items.txt"
    catalogue.write_text(
        "item\n" + "".join(f"{i}\n" for i in np.asarray(data.item_ids).tolist()),
        encoding="utf-8",
    )
    toml = root / "datasets.toml"
    cols = ", ".join(f'{c} = [{", ".join(repr(v).replace(chr(39), chr(34)) for v in vals)}]'
                     for c, vals in columns.items())  # fmt: skip
    toml.write_text(
        "# Datasets open to DP queries (privrec serve --datasets this file)\n"
        "[datasets.ratings]\n"
        'file = "data/ratings.tsv"\n'
        'format = "tsv"\n'
        'items = "data/items.txt"     # the public catalogue\n'
        "max_per_user = 32\n\n"
        "[datasets.ratings.segments]\n"
        'file = "data/users.csv"\n'
        f"columns = {{ {cols} }}\n",
        encoding="utf-8",
    )

    owner, owner_key = Ledger.init(url, owner="olga")
    owner.set_policy(
        "ratings",
        policy_from_dict(
            {
                "purpose": "recommendations",
                "unit": "user",
                "max_interactions_per_user": 500,
                "deletion": {"retrain_within_days": 30},
                "budget": {"epsilon": dataset_epsilon, "delta": 1e-6},
            }
        ),
    )
    keys = {"olga": owner_key}
    for name, role in (("ann", "analyst"), ("ben", "analyst"), ("dora", "auditor")):
        keys[name] = owner.create_key(name, role)
    for name in ("ann", "ben"):
        owner.set_budget(
            "ratings", epsilon=analyst_epsilon, delta=1e-6, scope="analyst", value=name
        )
    owner.set_budget(
        "ratings", epsilon=analyst_epsilon * 2, delta=1e-6, scope="purpose", value="analytics"
    )
    trainer = Ledger.connect(url, owner.create_key("trainer", "analyst"))

    governed = trainer.load("ratings", load(data_file, format="tsv"))
    evaluation_split = _reindexed_split(split, governed.interactions)
    paths = []
    for eps in epsilons:
        label = f"{eps:g}".replace(".", "_")
        rec = trainer.train(
            DPALS(epsilon=eps, delta=1e-6, unit="user", factors=factors),
            governed,
            output=root / "models" / f"dpals-eps{label}.npz",
        )
        res = evaluate(rec.model, evaluation_split, k=(10, 20), groups=4)
        record_evaluation(rec.path, res)
        paths.append(rec.path)

    if queries:
        ds = ServedDataset("ratings", load_dataset_specs(toml)["ratings"])
        ann = Ledger.connect(url, keys["ann"])
        ben = Ledger.connect(url, keys["ben"])
        run_query(ann, ds, QueryRequest("top_k", 0.5, purpose="analytics", k=10))
        run_query(
            ben,
            ds,
            QueryRequest("segment_counts", 0.3, purpose="analytics", column=next(iter(columns))),
        )
        run_query(
            ann,
            ds,
            QueryRequest(
                "item_counts", 0.4, purpose="analytics", items=tuple(ds.item_ids(np.arange(5)))
            ),
        )
        owner.forget(
            "ratings", np.asarray(split.train.user_ids)[0], reason="user asked to be forgotten"
        )

    key_file = root / "keys.txt"
    key_file.write_text(
        "".join(f"{n}\t{k}\n" for n, k in keys.items() if n != "trainer"), encoding="utf-8"
    )
    os.chmod(key_file, 0o600)
    return DemoWorld(root, url, root / "models", toml, keys, paths)


def main(argv: list[str] | None = None) -> int:
    args = sys.argv[1:] if argv is None else argv
    root = Path(args[0] if args else ".serve-demo")
    if (root / "keys.txt").exists() and "--rebuild" not in args:
        print(f"demo world already in {root} (pass --rebuild to start again)")
    else:
        print(f"building a demo world in {root} (DPALS at 5 ε, evaluated; about a minute)…")
        build_demo(root)
    print("API keys (name, key):")
    print((root / "keys.txt").read_text(encoding="utf-8"), end="")
    print(
        f"start:  privrec serve --db sqlite:///{root}/privrec.db --models {root}/models "
        f"--datasets {root}/datasets.toml\nthen open http://127.0.0.1:8000/dashboard/"
    )
    return 0


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
