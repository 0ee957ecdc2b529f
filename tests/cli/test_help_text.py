"""Help texts render what they say: Rich markup must not swallow TOML table names."""

from __future__ import annotations

from typer.testing import CliRunner

from privrec.cli.main import app


def test_tune_help_shows_the_grid_tables() -> None:
    res = CliRunner().invoke(app, ["tune", "--help"], env={"COLUMNS": "200"})
    assert res.exit_code == 0, res.output
    assert "[[candidates]]" in res.output and "``[]``" not in res.output
