"""Bad inputs of `memdyn score`, `summarize` and `transitions`: one-line errors before any work,
and score tables that are complete or refused (the manifest)."""

from __future__ import annotations

import os
import shutil

import pandas as pd
import pytest

from tests.conftest import MICRO_CONTEXTS, MICRO_CONTINUATIONS, run_cli

GRID = ["--contexts", MICRO_CONTEXTS, "--continuations", MICRO_CONTINUATIONS, "--chunk-size", "128", "--device", "cpu"]


def one_line_error(code: int, err: str, *words: str) -> None:
    assert code == 2, err
    assert err.startswith("memdyn: error: ") and err.count("\n") == 1, err
    for w in words:
        assert w in err, err


def score(family, out, *extra):
    return run_cli("score", "--family", family, "--out", out, *GRID, *extra)


def _table(path) -> pd.DataFrame:
    keys = ["model", "revision", "seq_idx", "context_len", "continuation_len"]
    return pd.read_parquet(path).sort_values(keys).reset_index(drop=True)


@pytest.fixture
def scores_copy(micro_scores, tmp_path):
    out = tmp_path / "scores"
    shutil.copytree(micro_scores, out)
    return out


def _part(scores):
    return sorted(scores.glob("part-*.parquet"))[0]


DAMAGE = {
    "missing": lambda p: p.unlink(),
    "truncated": lambda p: os.truncate(p, p.stat().st_size // 2),
    "altered": lambda p: p.write_bytes(p.read_bytes()[:-9] + b"\x00" * 9),
}


@pytest.mark.parametrize("damage", DAMAGE)
def test_damaged_part_refused_then_recomputed_alone(micro_family, micro_scores, scores_copy, damage):
    part = _part(scores_copy)
    others = {p: p.stat().st_mtime_ns for p in scores_copy.glob("part-*.parquet") if p != part}
    DAMAGE[damage](part)
    code, _, err = run_cli("summarize", "--scores", scores_copy)
    one_line_error(code, err, part.name, damage, "memdyn score")
    code, _, err = run_cli("transitions", "--scores", scores_copy, "--from", "16k", "--to", "149k")
    one_line_error(code, err, part.name)
    code, _, err = score(micro_family, scores_copy)
    assert code == 0, err
    assert {p: p.stat().st_mtime_ns for p in others} == others  # only the damaged chunk was recomputed
    pd.testing.assert_frame_equal(_table(scores_copy), _table(micro_scores))
    code, _, err = run_cli("summarize", "--scores", scores_copy)
    assert code == 0, err


def test_foreign_parquet_and_garbage_part_refused(micro_scores, scores_copy):
    pd.DataFrame({"x": [1, 2]}).to_parquet(scores_copy / "stray.parquet")
    code, _, err = run_cli("summarize", "--scores", scores_copy)
    one_line_error(code, err, "stray.parquet", "not in the scores directory's manifest")
    (scores_copy / "stray.parquet").unlink()
    _part(scores_copy).write_bytes(b"garbage, not parquet")
    code, _, err = run_cli("summarize", "--scores", scores_copy)
    one_line_error(code, err, _part(scores_copy).name)


def test_generations_part_checked(micro_family, micro_scores, scores_copy):
    gen = sorted((scores_copy / "_generations").glob("part-*.parquet"))[0]
    gen.unlink()
    code, _, err = run_cli("summarize", "--scores", scores_copy)
    one_line_error(code, err, gen.name, "missing")
    code, _, err = score(micro_family, scores_copy)
    assert code == 0, err
    pd.testing.assert_frame_equal(pd.read_parquet(gen), pd.read_parquet(micro_scores / "_generations" / gen.name))


def test_truncated_settings_is_one_line(micro_family, scores_copy):
    settings = scores_copy / "_settings.json"
    settings.write_text(settings.read_text()[:20])
    for code, _, err in (run_cli("summarize", "--scores", scores_copy), score(micro_family, scores_copy)):
        one_line_error(code, err, "_settings.json", "truncated")


def test_interrupted_table_refused_until_finished(micro_family, micro_scores, scores_copy):
    """A table whose command has not finished every chunk is refused, not summarised."""
    for p in list(scores_copy.glob("part-*.parquet"))[:1]:
        p.unlink()
        (scores_copy / "_manifest" / "parts" / f"{p.name}.json").unlink()  # as if killed before writing it
    code, _, err = run_cli("summarize", "--scores", scores_copy)
    one_line_error(code, err, "missing", "rerun")


@pytest.mark.parametrize("args,words", [
    (["--seed", "-1"], ["--seed"]),
    (["--batch-size", "abc"], ["--batch-size"]),
    (["--batch-size", "0"], ["--batch-size"]),
    (["--chunk-size", "0"], ["--chunk-size"]),
    (["--contexts", "0"], ["--contexts"]),
    (["--contexts", "8,x"], ["--contexts"]),
    (["--samples", "5:2"], ["--samples"]),
    (["--samples", "a:b"], ["--samples"]),
    (["--sample", "0"], ["--sample"]),
    (["--models", "nope"], ["nope"]),
    (["--revisions", "step999999"], ["step999999"]),
    (["--dtype", "fp16"], ["fp16"]),
    (["--dtype", "fp64"], ["fp64"]),
    (["--device", "cuda:7"], ["cuda"]),
    (["--contexts", "60", "--continuations", "16"], ["longer"]),
    (["--bogus"], ["--bogus"]),
])
def test_bad_score_options_before_any_file(micro_family, tmp_path, args, words):
    out = tmp_path / "deep" / "scores"
    code, _, err = score(micro_family, out, *args)
    one_line_error(code, err, *words)
    assert list(tmp_path.iterdir()) == [], "a failed check left files behind"


def test_fp16_then_fp32_into_the_same_out(micro_family, micro_scores, tmp_path):
    out = tmp_path / "scores"
    code, _, err = score(micro_family, out, "--dtype", "fp16")
    one_line_error(code, err, "fp16")
    code, _, err = score(micro_family, out, "--models", "16k")
    assert code == 0, err


def _family_copy(micro_family, tmp_path):
    fam = tmp_path / "family"
    shutil.copytree(micro_family, fam)
    return fam


def test_truncated_or_missing_checkpoint_before_any_file(micro_family, tmp_path):
    fam = _family_copy(micro_family, tmp_path)
    weights = fam / "models" / "149k" / "step200" / "model.safetensors"
    os.truncate(weights, weights.stat().st_size - 100)
    code, _, err = score(fam, tmp_path / "s1")
    one_line_error(code, err, "model.safetensors", "truncated")
    shutil.rmtree(weights.parent)
    code, _, err = score(fam, tmp_path / "s1")
    one_line_error(code, err, "step200", "missing")
    assert not (tmp_path / "s1").exists()


def test_swapped_tokenizer_or_foreign_data_refused(micro_family, tmp_path):
    import json

    fam = _family_copy(micro_family, tmp_path)
    tok = fam / "tokenizer" / "tokenizer.json"
    spec = json.loads(tok.read_text())
    spec["added_tokens"].append({**spec["added_tokens"][0], "id": 2047, "content": "<|extra|>"})
    tok.write_text(json.dumps(spec))
    code, _, err = score(fam, tmp_path / "s")
    one_line_error(code, err, "tokenizer has 2048 token ids", "embeds only 384")
    for cmd in (["dynamics", "--family", fam, "--scores", tmp_path, "--out", tmp_path / "d"], ["family", "info", fam]):
        code, _, err = run_cli(*cmd)
        one_line_error(code, err, "tokenizer")
    assert not (tmp_path / "s").exists() and not (tmp_path / "d").exists()


def test_out_is_a_file_or_read_only(micro_family, tmp_path):
    (tmp_path / "file").write_text("mine")
    code, _, err = score(micro_family, tmp_path / "file")
    one_line_error(code, err, "--out", "is a file")
    assert (tmp_path / "file").read_text() == "mine"
    ro = tmp_path / "ro"
    ro.mkdir()
    if os.system(f"mount -t tmpfs -o ro,size=64k tmpfs {ro} 2>/dev/null") != 0:
        pytest.skip("cannot mount a read-only tmpfs here")
    try:
        for out in (ro, ro / "scores"):
            code, _, err = score(micro_family, out)
            one_line_error(code, err, "--out")
    finally:
        os.system(f"umount {ro}")


def test_sample_range_past_the_data_is_clamped_with_a_note(micro_family, tmp_path):
    code, out, err = score(micro_family, tmp_path / "s", "--models", "16k", "--samples", "60:100000")
    assert code == 0, err
    assert "clamped" in out + err and (out + err).count("clamped") == 1, out + err
    assert pd.read_parquet(tmp_path / "s")["seq_idx"].max() < 100000
