"""Bad inputs of `memdyn report`, and reports that refuse a damaged work directory."""

from __future__ import annotations

import json
import shutil

from tests.conftest import run_cli
from tests.test_cli_score import one_line_error


def test_workdir_missing_empty_or_foreign(tmp_path):
    (tmp_path / "empty").mkdir()
    (tmp_path / "file").write_text("x")
    for workdir in (tmp_path / "none", tmp_path / "empty", tmp_path / "file"):
        code, _, err = run_cli("report", "--workdir", workdir, "--out", tmp_path / "reports")
        one_line_error(code, err, str(workdir))
    assert not (tmp_path / "reports").exists()


def test_preset_mismatch_and_damaged_tables(micro_workdir, tmp_path):
    code, _, err = run_cli("report", "--workdir", micro_workdir, "--out", tmp_path / "r", "--preset", "tiny")
    one_line_error(code, err, "tiny")
    runs = tmp_path / "runs"
    shutil.copytree(micro_workdir, runs)
    table = runs / "dynamics" / "tables" / "jumps.parquet"
    table.write_bytes(table.read_bytes()[:-20] + b"\0" * 20)
    code, _, err = run_cli("report", "--workdir", runs, "--out", tmp_path / "r")
    one_line_error(code, err, "jumps.parquet", "altered")
    name = json.loads((runs / "family" / "family.json").read_text())["name"]
    assert not (tmp_path / "r" / name / "index.html").exists()
