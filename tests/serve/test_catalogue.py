"""A served dataset's explicit item catalogue (``items`` in the datasets file, as ``train --items``)."""

from __future__ import annotations

from pathlib import Path

import pytest
from fastapi.testclient import TestClient

from privrec.data import load
from privrec.errors import ServeConfigError
from privrec.serve.app import create_app
from privrec.serve.datasets import ServedDataset, load_dataset_specs
from privrec.serve.demo import DemoWorld

from .conftest import ITEM_TOKENS, Analyst, settings_for


def _specs(world: DemoWorld, tmp_path: Path, catalogue: list[str]) -> Path:
    data_file = world.datasets_file.parent / "data" / "ratings.tsv"
    (tmp_path / "catalogue.txt").write_text(
        "item\n# the public catalogue\n\n" + "\n".join(catalogue) + "\n", encoding="utf-8"
    )
    toml = tmp_path / "datasets.toml"
    toml.write_text(
        f'[datasets.ratings]\nfile = "{data_file}"\nformat = "tsv"\nitems = "catalogue.txt"\n',
        encoding="utf-8",
    )
    return toml


def test_a_declared_catalogue_is_served_and_answered(
    world: DemoWorld, fresh_analyst: Analyst, tmp_path: Path
) -> None:
    raw = [
        str(v)
        for v in load(world.datasets_file.parent / "data" / "ratings.tsv", format="tsv").item_ids
    ]
    toml = _specs(world, tmp_path, [*raw, "never-bought"])
    specs = load_dataset_specs(toml)
    assert specs["ratings"].items == tmp_path / "catalogue.txt"  # relative to the TOML file
    ds = ServedDataset("ratings", specs["ratings"])
    assert ds.n_items == len(raw) + 1 and ds.item_ids(ds.item_positions(["never-bought"])) == [
        "never-bought"
    ]
    with TestClient(create_app(settings_for(world, datasets=specs))) as client:
        listed = client.get("/v1/datasets", headers=fresh_analyst.headers).json()["datasets"]
        assert listed[0]["catalogue_size"] == len(raw) + 1
        body = {"epsilon": 0.2, "items": ["never-bought", ITEM_TOKENS[0]]}
        r = client.post(
            "/v1/datasets/ratings/queries/item-counts", headers=fresh_analyst.headers, json=body
        )
        assert r.status_code == 200, r.text
        assert [c["item"] for c in r.json()["counts"]] == body["items"]
        r = client.post(
            "/v1/datasets/ratings/queries/top-k",
            headers=fresh_analyst.headers,
            json={"epsilon": 0.2, "k": 5},
        )
        assert r.status_code == 200, r.text
        outside = {"epsilon": 0.1, "items": ["not-in-the-catalogue"]}
        r = client.post(
            "/v1/datasets/ratings/queries/item-counts", headers=fresh_analyst.headers, json=outside
        )
        assert r.status_code in (400, 404, 422) and "catalogue" in r.text


def test_a_catalogue_missing_items_of_the_data_is_refused(world: DemoWorld, tmp_path: Path) -> None:
    raw = [
        str(v)
        for v in load(world.datasets_file.parent / "data" / "ratings.tsv", format="tsv").item_ids
    ]
    spec = load_dataset_specs(_specs(world, tmp_path, raw[2:]))["ratings"]
    with pytest.raises(
        ServeConfigError, match="2 item\\(s\\) of the data are not in the catalogue"
    ):
        ServedDataset("ratings", spec)
    (tmp_path / "catalogue.txt").write_text("item\n# nothing\n", encoding="utf-8")
    with pytest.raises(ServeConfigError, match="lists no item"):
        ServedDataset("ratings", spec)
    (tmp_path / "catalogue.txt").unlink()
    with pytest.raises(ServeConfigError, match="not found"):
        ServedDataset("ratings", spec)
