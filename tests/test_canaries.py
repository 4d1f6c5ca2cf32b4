"""Canary scores and exposure (Carlini et al. 2019) on the micro family."""

import itertools
import json
import shutil

import numpy as np
import pandas as pd
import pytest

from dynamics.errors import MemdynError


def test_exposure_estimate_against_exact_enumeration():
    """A space of 5^8 = 390,625 candidates whose log-prob is a sum of per-position terms: the exact
    rank by enumeration against the estimate from 2,000 sampled candidates."""
    from dynamics.analyses.exposure import exposure

    rng = np.random.default_rng(0)
    m, length = 5, 8
    w = rng.normal(size=(length, m))
    space = np.array(list(itertools.product(range(m), repeat=length)))
    logp = w[np.arange(length), space].sum(1)
    sampled = rng.integers(0, m, size=(2000, length))
    cand = w[np.arange(length), sampled].sum(1)
    space_log2 = length * np.log2(m)
    for q in (0.5, 0.9, 0.99):
        canary = np.quantile(logp, q)
        exact = space_log2 - np.log2((logp >= canary).sum())
        fitted, empirical = exposure(canary, cand, space_log2)
        assert abs(fitted[0] - exact) < 0.5 and abs(empirical[0] - exact) < 0.5, (q, exact, fitted, empirical)
    best = logp.max()
    fitted, empirical = exposure(best, cand, space_log2)  # rank 1: exposure is the whole space, at most
    assert fitted[0] <= space_log2 and empirical[0] <= np.log2(len(cand) + 1) + 1e-9
    assert fitted[0] > empirical[0] - 1e-9  # the fitted tail reaches beyond the sampled candidates


def test_token_logprobs_equal_a_plain_pass(micro_family):
    import torch

    from dynamics.analyses.exposure import token_logprobs
    from dynamics.family.load import load_model
    from dynamics.family.spec import load_family

    family = load_family(micro_family)
    model = load_model(family, family.size_names[-1], device="cpu")
    rng = np.random.default_rng(0)
    seqs = [rng.integers(2, 300, size=n) for n in (5, 12, 9)]
    got = token_logprobs(model, seqs, batch_size=2)  # padded batches
    for s, lp in zip(seqs, got):
        x = torch.tensor([[0, *s]])
        with torch.no_grad():
            ref = torch.log_softmax(model(input_ids=x).logits[0, :-1], -1).gather(-1, x[0, 1:, None])[:, 0] / np.log(2)
        np.testing.assert_allclose(lp, ref.numpy(), rtol=1e-4, atol=1e-4)


def test_word_candidates_are_prefix_consistent(micro_family):
    from dynamics.analyses import world
    from dynamics.analyses.canaries import candidates
    from dynamics.family.load import load_tokenizer
    from dynamics.family.spec import load_family

    family = load_family(micro_family)
    tok = load_tokenizer(family)
    seqs, ends = candidates("words", 6, 20, tok, world.canary_words(family), seed=0)
    for s, e in zip(seqs, ends):
        text = tok.decode(list(s))
        words = text.split(" ")
        assert len(words) == 6 and e[-1] == len(s)
        assert tok(" ".join(words[:3]), add_special_tokens=False)["input_ids"] == list(s[: e[2]])
    again, _ = candidates("words", 6, 20, tok, world.canary_words(family), seed=0)
    assert all(np.array_equal(a, b) for a, b in zip(seqs, again))  # seeded


def test_run_canaries_scores_every_checkpoint_and_resumes(micro_family, tmp_path):
    from dynamics.analyses import canaries as C
    from dynamics.family.spec import load_family

    family = load_family(micro_family)
    small = family.size_names[0]
    out = tmp_path / "canaries"
    C.run_canaries(family, out, n_candidates=64, models=[small], progress=False)
    t = C.read_canaries(out)
    manifest = pd.read_parquet(micro_family / "canaries.parquet")
    assert len(t) == len(manifest) * len(family.size(small).revisions)
    assert t["score"].between(0, 1).all() and (t["exposure"] <= t["space_size_log2"] + 1e-9).all()
    final = t[t["step"] == t["step"].max()]
    assert (final["copies_seen"] == final["count"]).all()  # every copy trained before the last checkpoint
    assert (t[t["step"] == 0]["copies_seen"] == 0).all()
    first = {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")}
    C.run_canaries(family, out, n_candidates=64, models=[small], progress=False)  # resumed: nothing recomputed
    assert {p.name: p.stat().st_mtime_ns for p in out.glob("part-*.parquet")} == first
    with pytest.raises(MemdynError, match="other settings"):
        C.run_canaries(family, out, n_candidates=128, models=[small], progress=False)
    # scores an earlier memdyn made (no "after" in its settings): refused, or, in a work directory
    # `memdyn run` owns, made again (the same table as the first run's)
    settings = json.loads((out / C.SETTINGS).read_text())
    (out / C.SETTINGS).write_text(json.dumps({k: v for k, v in settings.items() if k != "after"}))
    with pytest.raises(MemdynError, match="other settings"):
        C.run_canaries(family, out, n_candidates=64, models=[small], progress=False)
    (out.parent / f".{out.name}.killed.tmp" / "stale").mkdir(parents=True)  # a replacement killed mid-removal
    C.run_canaries(family, out, n_candidates=64, models=[small], progress=False, replace_stale=True)
    assert json.loads((out / C.SETTINGS).read_text()) == settings
    assert not list(out.parent.glob(f".{out.name}.*.tmp"))  # the stale scores were moved aside, then removed
    pd.testing.assert_frame_equal(C.read_canaries(out), t)
    (out / C.SETTINGS).write_text("{")  # unreadable: never removed
    with pytest.raises(MemdynError, match="unreadable or truncated"):
        C.run_canaries(family, out, n_candidates=64, models=[small], progress=False, replace_stale=True)
    assert (out / C.SETTINGS).read_text() == "{"
    (out / C.SETTINGS).write_text(json.dumps(settings))
    by_count = C.by(t, "count", seed=0)
    assert set(by_count["count"]) == set(manifest["count"]) and (by_count["exposure_lo"] <= by_count["exposure_hi"]).all()
    forget = C.forgetting(t, seed=0)
    assert len(forget) and (forget["step"] > 0).all()


def test_canaries_are_scored_after_the_end_of_document_token(micro_family, monkeypatch):
    """Every training copy of a canary follows <|endoftext|>: the greedy score's context starts with
    it, as the exposure's log-probabilities do; the matches equal transformers' greedy generate."""
    import torch

    from dynamics.analyses import canaries as C
    from dynamics.corpus.tokenizer import EOD_ID
    from dynamics.family.load import load_model
    from dynamics.family.spec import load_family
    from dynamics.scoring import kernel

    family = load_family(micro_family)
    model = load_model(family, family.size_names[-1], device="cpu")
    table = pd.read_parquet(micro_family / "canaries.parquet").head(6)
    fed = []
    real = kernel.score_batch
    monkeypatch.setattr(kernel, "score_batch", lambda m, x, contexts, c, *a: fed.append((x, contexts)) or real(m, x, contexts, c, *a))
    part = C.score_checkpoint(model, table, {}, step=10**9, batch_size=4)
    assert fed and all((x[:, 0] == EOD_ID).all() and contexts == [1 + C.split_lengths(x.shape[1] - 1)[0]] for x, contexts in fed)
    for row, got in zip(table.itertuples(), part.itertuples()):
        k, c = C.split_lengths(len(row.tokens))
        assert got.context_len == k and got.continuation_len == c
        x = torch.tensor([[EOD_ID, *row.tokens[:k]]])
        generated = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=c, do_sample=False,
                                   eos_token_id=None, pad_token_id=model.config.pad_token_id)[0, 1 + k :].numpy()
        assert got.matches == (generated == np.asarray(row.tokens[k : k + c])).sum()


def test_bad_input_and_old_family_fail_before_any_file(micro_family, tmp_path):
    from dynamics.analyses.canaries import run_canaries
    from dynamics.family.spec import load_family

    with pytest.raises(MemdynError, match="--candidates must be >= 32"):
        run_canaries(load_family(micro_family), tmp_path / "a", n_candidates=4)
    old = tmp_path / "old"
    shutil.copytree(micro_family, old, symlinks=True)
    manifest = json.loads((old / "family.json").read_text())
    manifest.pop("world", None)
    (old / "family.json").write_text(json.dumps(manifest))
    with pytest.raises(MemdynError, match=r"memdyn family train --preset micro"):
        run_canaries(load_family(old), tmp_path / "b")
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_cli_canaries(micro_family, tmp_path):
    from conftest import run_cli

    code, out, err = run_cli("canaries", "--family", micro_family, "--out", tmp_path / "c", "--candidates", "2")
    assert code == 2 and "--candidates must be >= 32" in err and not (tmp_path / "c").exists()
