"""Bad inputs of `memdyn family train`, `family info` and `family references`: one-line errors
before any work, and nothing left behind that would refuse the corrected command."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import run_cli
from tests.test_cli_score import one_line_error


def train(out, *extra):
    return run_cli("family", "train", "--preset", "micro", "--out", out, "--device", "cpu", *extra)


@pytest.mark.parametrize("args,words", [
    (["--seed", "-1"], ["--seed"]),
    (["--seed", "x"], ["--seed"]),
    (["--preset", "huge"], ["huge"]),
    (["--device", "cuda:3"], ["cuda"]),
    (["--device", "tpu"], ["tpu"]),
    (["--corpus", "/no/such/dir/"], ["/no/such/dir"]),
    (["--corpus", "nope.jsonl"], ["nope.jsonl"]),
    (["--corpus", "weird:thing"], ["weird:thing"]),
])
def test_bad_train_options_leave_nothing(tmp_path, args, words):
    code, _, err = train(tmp_path / "fam", *args)
    one_line_error(code, err, *words)
    assert list(tmp_path.iterdir()) == []


def test_empty_corpus_then_a_good_one_into_the_same_out(micro_family, tmp_path):
    empty = tmp_path / "empty"
    empty.mkdir()
    jsonl = tmp_path / "docs.jsonl"
    jsonl.write_text(json.dumps({"body": "no text field here"}) + "\n")
    out = tmp_path / "fam"
    for corpus, words in ((empty, ["no documents"]), (jsonl, ["'text'", "--text-field"])):
        code, _, err = train(out, "--corpus", corpus)
        one_line_error(code, err, *words)
        assert not out.exists()
    out.mkdir()  # an existing empty directory is kept, and stays usable
    code, _, err = train(out, "--corpus", empty)
    one_line_error(code, err, "no documents")
    assert list(out.iterdir()) == []
    code, _, err = train(out)  # the corrected command is accepted (the good corpus: stdlib)
    assert code == 0, err
    assert json.loads((out / "family.json").read_text())["sizes"] == json.loads((micro_family / "family.json").read_text())["sizes"]


def test_out_is_a_file_or_foreign_directory(tmp_path):
    (tmp_path / "file").write_text("mine")
    code, _, err = train(tmp_path / "file")
    one_line_error(code, err, "--out", "is a file")
    foreign = tmp_path / "thesis"
    foreign.mkdir()
    (foreign / "thesis.tex").write_text("years of work")
    code, _, err = train(foreign)
    one_line_error(code, err, "not empty")
    assert (tmp_path / "file").read_text() == "mine" and [p.name for p in foreign.iterdir()] == ["thesis.tex"]


def test_info_on_missing_or_broken_families(micro_family, tmp_path):
    code, _, err = run_cli("family", "info", tmp_path / "nope")
    one_line_error(code, err, "nope")
    code, _, err = run_cli("family", "info", "./not-here")
    one_line_error(code, err, "not-here")
    broken = tmp_path / "broken"
    shutil.copytree(micro_family, broken)
    (broken / "family.json").write_text((broken / "family.json").read_text()[:50])
    code, _, err = run_cli("family", "info", broken)
    one_line_error(code, err, "family.json")
    code, out, err = run_cli("family", "info", micro_family)
    assert code == 0 and "149k" in out, err


def test_references_of_a_non_family(tmp_path):
    code, _, err = run_cli("family", "references", tmp_path)
    one_line_error(code, err, str(tmp_path))
