"""Bad inputs of `memdyn dynamics`: one-line errors before any model runs or any file is made."""

from __future__ import annotations

import shutil

import pytest

from tests.conftest import run_cli
from tests.test_cli_score import one_line_error


def dynamics(family, scores, out, *extra):
    return run_cli("dynamics", "--family", family, "--scores", scores, "--out", out, "--device", "cpu", "--no-umap", *extra)


@pytest.mark.parametrize("args,words", [
    (["--context", "8", "--jump-window", "100"], ["--jump-window", "smaller than the context"]),
    (["--jump-window", "0"], ["--jump-window"]),
    (["--per-group", "0"], ["--per-group"]),
    (["--bootstrap", "0"], ["--bootstrap"]),
    (["--batch-size", "x"], ["--batch-size"]),
    (["--seed", "-1"], ["--seed"]),
    (["--layers", "middle"], ["--layers"]),
    (["--layers", "0,99"], ["99"]),
    (["--hidden-dtype", "int8"], ["--hidden-dtype"]),
    (["--dtype", "fp16"], ["fp16"]),
    (["--context", "7"], ["context 7"]),
    (["--device", "cuda:5"], ["cuda"]),
])
def test_bad_options_before_any_file(micro_family, micro_scores, tmp_path, args, words):
    code, _, err = dynamics(micro_family, micro_scores, tmp_path / "dyn", *args)
    one_line_error(code, err, *words)
    assert list(tmp_path.iterdir()) == []


def test_bad_scores_before_any_file(micro_family, micro_scores, tmp_path):
    code, _, err = dynamics(micro_family, tmp_path / "none", tmp_path / "dyn")
    one_line_error(code, err, "none")
    broken = tmp_path / "scores"
    shutil.copytree(micro_scores, broken)
    part = sorted(broken.glob("part-*.parquet"))[0]
    part.write_bytes(part.read_bytes()[:100])
    code, _, err = dynamics(micro_family, broken, tmp_path / "dyn")
    one_line_error(code, err, part.name, "truncated")
    (tmp_path / "file").write_text("x")
    code, _, err = dynamics(micro_family, micro_scores, tmp_path / "file")
    one_line_error(code, err, "--out", "is a file")
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file", "scores"]
