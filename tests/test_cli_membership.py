"""Bad options of `memdyn membership` and `memdyn canaries`: one line on stderr naming the option,
exit status 2, before any file is made (the data-level cases are in test_membership.py and
test_canaries.py)."""

from __future__ import annotations

import pytest

from tests.conftest import run_cli

MEMBERSHIP_BAD = {
    "--batch-size 0": (["--batch-size", "0"], "--batch-size"),
    "--batch-size abc": (["--batch-size", "abc"], "--batch-size"),
    "--chunk-size 0": (["--chunk-size", "0"], "--chunk-size"),
    "--length 1": (["--length", "1"], "--length"),
    "--length past the samples": (["--length", "100000"], "--length"),
    "--samples -3": (["--samples", "-3"], "--samples"),
    "--seed -1": (["--seed", "-1"], "--seed"),
    "--dtype fp16 on a CPU": (["--dtype", "fp16"], "fp16"),
    "--dtype int3": (["--dtype", "int3"], "--dtype"),
    "--device gpu7": (["--device", "gpu7"], "--device"),
    "--models 999k": (["--models", "999k"], "999k"),
    "--revisions step999999": (["--revisions", "step999999"], "step999999"),
    "--reference missing": (["--reference", "/nonexistent/model"], "reference"),
}


def one_line_error(code: int, err: str, word: str) -> None:
    assert code == 2, err
    assert err.startswith("memdyn: error: ") and err.count("\n") == 1, err
    assert word in err, err


@pytest.mark.parametrize("case", MEMBERSHIP_BAD)
def test_membership_bad_option(micro_family, tmp_path, case):
    extra, word = MEMBERSHIP_BAD[case]
    out = tmp_path / "m"
    code, _, err = run_cli("membership", "--family", micro_family, "--members", "train", "--nonmembers", "heldout",
                           "--out", out, "--device", "cpu", *extra)
    one_line_error(code, err, word)
    assert not out.exists()


def test_membership_missing_family(tmp_path):
    code, _, err = run_cli("membership", "--family", tmp_path / "nowhere", "--members", "train",
                           "--nonmembers", "heldout", "--out", tmp_path / "m")
    one_line_error(code, err, "nowhere")
    assert not (tmp_path / "m").exists()


CANARIES_BAD = {
    "--candidates 2": (["--candidates", "2"], "--candidates"),
    "--candidates abc": (["--candidates", "abc"], "--candidates"),
    "--batch-size 0": (["--batch-size", "0"], "--batch-size"),
    "--seed -1": (["--seed", "-1"], "--seed"),
    "--device gpu7": (["--device", "gpu7"], "--device"),
    "--models 999k": (["--models", "999k"], "999k"),
}


@pytest.mark.parametrize("case", CANARIES_BAD)
def test_canaries_bad_option(micro_family, tmp_path, case):
    extra, word = CANARIES_BAD[case]
    out = tmp_path / "c"
    code, _, err = run_cli("canaries", "--family", micro_family, "--out", out, "--device", "cpu", *extra)
    one_line_error(code, err, word)
    assert not out.exists()


def test_canaries_family_that_is_not_one(tmp_path):
    (tmp_path / "notes.txt").write_text("mine")
    for family in (tmp_path / "nowhere", tmp_path / "notes.txt", tmp_path):
        code, _, err = run_cli("canaries", "--family", family, "--out", tmp_path / "c")
        one_line_error(code, err, str(family))
        assert not (tmp_path / "c").exists()
