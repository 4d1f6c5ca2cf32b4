"""Requirement: never destroy what the user did not ask to replace. Every command that takes
--out, --json, --workdir or --reports, given a foreign non-empty directory or a foreign file,
refuses in one line and leaves it exactly as it was."""

from __future__ import annotations

import json
import shutil

import pytest

from tests.conftest import MICRO_CONTEXTS, MICRO_CONTINUATIONS, run_cli
from tests.test_cli_score import one_line_error

# command -> argv with {out} for the output location (the fixtures fill in the rest)
COMMANDS = {
    "family train": ["family", "train", "--preset", "micro", "--out", "{out}", "--device", "cpu"],
    "score": ["score", "--family", "{family}", "--out", "{out}", "--contexts", MICRO_CONTEXTS,
              "--continuations", MICRO_CONTINUATIONS, "--device", "cpu"],
    "summarize": ["summarize", "--scores", "{scores}", "--out", "{out}"],
    "transitions": ["transitions", "--scores", "{scores}", "--from", "16k", "--to", "37k", "--out", "{out}"],
    "dynamics": ["dynamics", "--family", "{family}", "--scores", "{scores}", "--out", "{out}", "--device", "cpu"],
    "predictor train": ["predictor", "train", "--family", "{family}", "--scores", "{scores}", "--model", "37k",
                        "--out", "{out}", "--epochs", "1"],
    "predictor eval": ["predictor", "eval", "--model-dir", "{predictor}", "--scores", "{scores}", "--json", "{out}"],
    "capacity synthetic": ["capacity", "synthetic", "--preset", "smoke", "--out", "{out}"],
    "capacity text": ["capacity", "text", "--family", "{family}", "--out", "{out}", "--device", "cpu"],
    "capacity mi-law": ["capacity", "mi-law", "--out", "{out}"],
    "membership": ["membership", "--family", "{family}", "--members", "train", "--nonmembers", "heldout",
                   "--out", "{out}", "--device", "cpu"],
    "canaries": ["canaries", "--family", "{family}", "--out", "{out}", "--device", "cpu"],
    "run --workdir": ["run", "--preset", "micro", "--workdir", "{out}", "--reports", "{tmp}/reports"],
    "run --reports": ["run", "--preset", "micro", "--workdir", "{tmp}/runs", "--reports", "{out}"],
}


@pytest.fixture(scope="module")
def predictor(micro_family, micro_scores, tmp_path_factory):
    out = tmp_path_factory.mktemp("pred") / "pred"
    code, _, err = run_cli("predictor", "train", "--family", micro_family, "--scores", micro_scores, "--model", "37k",
                           "--context", "16", "--continuation", "4", "--test-size", "0.5", "--epochs", "1", "--out", out)
    assert code == 0, err
    return out


def _foreign(tmp_path, kind):
    if kind == "file":
        path = tmp_path / "notes.txt"
        path.write_text("my notes\n")
    else:
        path = tmp_path / "thesis"
        path.mkdir()
        (path / "thesis.tex").write_text("years of work")
    return path


def _state(path):
    if path.is_file():
        return path.read_text()
    return sorted((str(p.relative_to(path)), p.read_text()) for p in path.rglob("*") if p.is_file())


@pytest.mark.parametrize("kind", ["file", "directory"])
@pytest.mark.parametrize("command", COMMANDS)
def test_foreign_output_refused(command, kind, micro_family, micro_scores, predictor, tmp_path):
    if kind == "directory" and command == "run --reports":
        pytest.skip("reports go to REPORTS/<family>/: a foreign REPORTS/<family> is test_report_refuses_foreign_family_folder")
    target = _foreign(tmp_path, kind)
    before = _state(target)
    fill = {"out": target, "family": micro_family, "scores": micro_scores, "predictor": predictor, "tmp": tmp_path}
    args = [a.format(**{k: str(v) for k, v in fill.items()}) for a in COMMANDS[command]]
    code, _, err = run_cli(*args)
    one_line_error(code, err)
    assert _state(target) == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [target.name], "something was created beside it"


def test_report_refuses_foreign_family_folder(micro_workdir, tmp_path):
    name = json.loads((micro_workdir / "family" / "family.json").read_text())["name"]
    (tmp_path / name).mkdir(parents=True)
    (tmp_path / name / "index.html").write_text("<p>my own page</p>")
    code, _, err = run_cli("report", "--workdir", micro_workdir, "--out", tmp_path)
    one_line_error(code, err, "--out")
    assert (tmp_path / name / "index.html").read_text() == "<p>my own page</p>"
    (tmp_path / "file").write_text("x")
    code, _, err = run_cli("report", "--workdir", micro_workdir, "--out", tmp_path / "file")
    one_line_error(code, err, "--out", "is a file")
    # its own reports are rewritten: those the session's run wrote, here in a folder of their own
    shutil.copytree(micro_workdir.parent / "reports", tmp_path / "mine")
    code, _, err = run_cli("report", "--workdir", micro_workdir, "--out", tmp_path / "mine")
    assert code == 0, err
    files = lambda root: {str(p.relative_to(root)): p.read_bytes() for p in root.rglob("*") if p.is_file()}  # noqa: E731
    assert files(tmp_path / "mine") == files(micro_workdir.parent / "reports")  # the same files again
