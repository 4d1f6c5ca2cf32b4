"""Output locations: memdyn never deletes or overwrites what it did not write."""

from __future__ import annotations

import pytest

from dynamics.errors import MemdynError
from dynamics.files import atomic_path, check_output_file
from tests.conftest import run_cli


def _foreign_dir(path):
    path.mkdir()
    (path / "thesis.tex").write_text("years of work")
    return path


def test_atomic_path_never_replaces_a_foreign_directory(tmp_path):
    target = _foreign_dir(tmp_path / "out")
    with pytest.raises(MemdynError, match="is a directory"):
        with atomic_path(target) as tmp:
            tmp.write_text("x")
    with pytest.raises(MemdynError, match="did not write"):
        with atomic_path(target) as tmp:
            tmp.mkdir()
    assert (target / "thesis.tex").read_text() == "years of work"
    assert sorted(p.name for p in tmp_path.iterdir()) == ["out"]  # no temporary left behind


def test_atomic_path_replaces_its_own_outputs(tmp_path):
    with atomic_path(tmp_path / "f.json") as tmp:
        tmp.write_text("1")
    with atomic_path(tmp_path / "f.json") as tmp:
        tmp.write_text("2")
    assert (tmp_path / "f.json").read_text() == "2"
    (tmp_path / "d").mkdir()
    (tmp_path / "d" / "marker").write_text("ours")
    with atomic_path(tmp_path / "d", replaces=lambda p: (p / "marker").is_file()) as tmp:
        tmp.mkdir()
        (tmp / "new").write_text("n")
    assert [p.name for p in (tmp_path / "d").iterdir()] == ["new"]


def test_check_output_file(tmp_path):
    (tmp_path / "notes.csv").write_text("mine\n")
    with pytest.raises(MemdynError, match="--out .* not written by this command"):
        check_output_file(tmp_path / "notes.csv", "--out", lambda p: False)
    assert check_output_file(tmp_path / "notes.csv", "--out", lambda p: True) == tmp_path / "notes.csv"
    with pytest.raises(MemdynError, match="is a directory"):
        check_output_file(tmp_path, "--out", lambda p: True)


@pytest.mark.parametrize("command", ["summarize", "transitions"])
def test_table_commands_refuse_foreign_outputs(micro_scores, micro_family, tmp_path, command):
    from dynamics.family.spec import load_family

    largest = load_family(micro_family).size_names[-1]
    extra = ["--from", largest, "--to", largest] if command == "transitions" else []
    for out in (_foreign_dir(tmp_path / "dir"), tmp_path / "notes.csv"):
        if not out.exists():
            out.write_text("my own notes\n")
        code, _, err = run_cli(command, "--scores", micro_scores, "--out", out, *extra)
        assert code == 2 and err.startswith("memdyn: error: --out") and err.count("\n") == 1, err
    assert (tmp_path / "dir" / "thesis.tex").read_text() == "years of work"
    assert (tmp_path / "notes.csv").read_text() == "my own notes\n"
    fresh = tmp_path / "table.csv"
    for _ in range(2):  # its own earlier output is replaced
        code, _, err = run_cli(command, "--scores", micro_scores, "--out", fresh, *extra)
        assert code == 0, err


def test_predictor_commands_refuse_foreign_outputs(micro_family, micro_scores, tmp_path):
    from dynamics.family.spec import load_family

    largest = load_family(micro_family).size_names[-1]
    out = _foreign_dir(tmp_path / "pred")
    code, _, err = run_cli("predictor", "train", "--family", micro_family, "--scores", micro_scores, "--model", largest,
                           "--out", out, "--epochs", "1")
    assert code == 2 and "did not write" in err, err
    assert (out / "thesis.tex").read_text() == "years of work"
    code, _, err = run_cli("predictor", "eval", "--model-dir", out, "--scores", micro_scores,
                           "--json", _foreign_dir(tmp_path / "json"))
    assert code == 2 and "--json" in err and (tmp_path / "json" / "thesis.tex").is_file(), err
