"""Bad inputs of `memdyn run`: one-line errors before the first stage starts."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli
from tests.test_cli_score import one_line_error


@pytest.mark.parametrize("args,words", [
    (["--preset", "enormous"], ["enormous"]),
    (["--seed", "-3"], ["--seed"]),
    (["--seed", "many"], ["--seed"]),
    (["--frobnicate"], ["--frobnicate"]),
    (["--dtype", "fp16"], ["--dtype", "fp16", "bf16"]),
    (["--dtype", "double"], ["--dtype", "double"]),
    (["--lr", "0"], ["--lr", "(0, 1]"]),
    (["--lr", "fast"], ["--lr"]),
])
def test_bad_options(tmp_path, args, words):
    code, out, err = run_cli("run", "--workdir", tmp_path / "runs", "--reports", tmp_path / "reports", *args)
    one_line_error(code, err, *words)
    assert "[1/" not in out  # no stage started
    assert list(tmp_path.iterdir()) == []


def test_workdir_or_reports_unusable(tmp_path):
    (tmp_path / "file").write_text("mine")
    for args, words in (
        (["--workdir", tmp_path / "file", "--reports", tmp_path / "reports"], ["--workdir", "is a file"]),
        (["--workdir", tmp_path / "runs", "--reports", tmp_path / "file"], ["--reports", "is a file"]),
        (["--workdir", tmp_path / "file" / "runs", "--reports", tmp_path / "reports"], ["--workdir"]),
    ):
        code, out, err = run_cli("run", "--preset", "micro", *args)
        one_line_error(code, err, *words)
        assert "[1/" not in out
    assert sorted(p.name for p in tmp_path.iterdir()) == ["file"] and (tmp_path / "file").read_text() == "mine"


def test_workdir_of_another_run(tmp_path):
    runs = tmp_path / "runs"
    runs.mkdir()
    (runs / "run.json").write_text('{"preset": "tiny", "seed": 0}\n')
    code, _, err = run_cli("run", "--preset", "micro", "--workdir", runs, "--reports", tmp_path / "reports")
    one_line_error(code, err, "tiny")


@pytest.mark.parametrize("field", ["scored_samples", "checkpoint_samples"])
def test_preset_scoring_more_samples_than_its_canaries_leave(tmp_path, monkeypatch, field):
    from dataclasses import replace

    from dynamics.family.presets import PRESETS
    from dynamics.family.world import canary_free_samples

    free = canary_free_samples(PRESETS["micro"])
    assert free == 200 * 4 - 2 * 3 * (1 + 4 + 16)  # micro: 800 samples, 2 kinds x 3 inserts x (1 + 4 + 16) copies
    monkeypatch.setitem(PRESETS, "crowded", replace(PRESETS["micro"], name="crowded", **{field: free + 1}))
    code, out, err = run_cli("run", "--preset", "crowded", "--workdir", tmp_path / "runs", "--reports", tmp_path / "reports")
    one_line_error(code, err, field, f"only {free}", "canary")
    assert "[1/" not in out and list(tmp_path.iterdir()) == []
    monkeypatch.setitem(PRESETS, "crowded", replace(PRESETS["micro"], name="crowded", **{field: free}))
    from dynamics.pipeline import _check_scored_pool

    _check_scored_pool(PRESETS["crowded"])  # exactly the canary-free samples: accepted
