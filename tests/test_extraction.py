"""Beyond greedy: p_z under sampling schemes (Hayes et al. 2024) and near-verbatim measures
(Ippolito et al. 2023), in the kernel, the score table and summaries."""

import json
import math
import warnings

import numpy as np
import pandas as pd
import pytest
import torch
from transformers.generation.logits_process import TemperatureLogitsWarper, TopKLogitsWarper, TopPLogitsWarper

from dynamics.corpus.megatron import IndexedDataset
from dynamics.errors import MemdynError
from dynamics.family.load import load_model
from dynamics.family.spec import load_family
from dynamics.scoring.extraction import (DEFAULT_SCHEMES, Scheme, cell_logprobs, draws_needed, parse_schemes,
                                         scheme_logprob)
from dynamics.scoring.kernel import score_batch
from dynamics.scoring.near import bleu4, longest_common_substring, near_verbatim
from dynamics.scoring.table import read_generations, read_scores
from dynamics.scoring.transitions import DISCOVERY_DRAWS, summarize
from tests.conftest import MICRO_CONTEXTS, MICRO_CONTINUATIONS, run_cli

SCHEMES = parse_schemes(DEFAULT_SCHEMES + ",t0.7,t1.3p0.8,k10p0.5,p0.3,k1")
CONTEXTS = list(map(int, MICRO_CONTEXTS.split(",")))
CONTINUATIONS = list(map(int, MICRO_CONTINUATIONS.split(",")))


def plain_logprob(logits: torch.Tensor, target: torch.Tensor, scheme: Scheme) -> torch.Tensor:
    """The scheme on full logits with transformers' own logits processors, in generate's order."""
    z = logits.clone()
    if scheme.temperature != 1:
        z = TemperatureLogitsWarper(scheme.temperature)(None, z)
    if scheme.top_k:
        z = TopKLogitsWarper(scheme.top_k)(None, z)
    if scheme.nucleus:
        z = TopPLogitsWarper(scheme.top_p)(None, z)
    return z.log_softmax(-1).gather(1, target[:, None])[:, 0]


def assert_same_logprobs(ours: torch.Tensor, plain: torch.Tensor, what: str) -> None:
    assert torch.equal(torch.isneginf(ours), torch.isneginf(plain)), f"{what}: a different kept set"
    finite = torch.isfinite(plain)
    assert torch.allclose(ours[finite], plain[finite], atol=1e-4, rtol=1e-4), what


def test_scheme_names_and_bad_schemes():
    assert [s.name for s in parse_schemes(DEFAULT_SCHEMES)] == ["t1", "k40", "p0.9", "t0.7k40"]
    assert parse_schemes("t1k40,t0.50,p1.0") == [Scheme(1.0, 40), Scheme(0.5), Scheme()]
    assert parse_schemes("") == []
    for text, message in [("k0", "top-k must be >= 1"), ("p0", "top-p must be in"), ("p1.5", "top-p must be in"),
                          ("t0", "temperature must be > 0"), ("t-1k3", "temperature must be > 0"),
                          ("x3", "not a sampling scheme"), ("k40,t1k40", "repeats")]:
        with pytest.raises(MemdynError, match=message):
            parse_schemes(text)


def test_logprobs_equal_full_logits_processors(micro_family):
    """On the micro model's logits over training samples and over random tokens (so that true
    tokens fall outside the kept sets too), and on random logits of a larger vocabulary: every
    scheme's log-probability equals transformers' processors on the full logits."""
    family = load_family(micro_family)
    model = load_model(family, family.sizes[-1], device="cpu")
    g = torch.Generator().manual_seed(0)
    samples = torch.as_tensor(np.asarray(IndexedDataset(family.data.prefix).batch(0, 6), dtype=np.int64))
    noise = torch.randint(2, model.config.vocab_size, samples.shape, generator=g)
    x = torch.cat([samples, noise])
    with torch.no_grad():
        logits = model(input_ids=x).logits[:, :-1].float().flatten(0, 1)
    target = x[:, 1:].flatten()
    wide = torch.randn(512, 2048, generator=g) * 2.5
    wide[:100] *= 4  # confident rows
    wide[100:200] *= 0.3  # flat rows: large nuclei
    wide_target = torch.where(torch.rand(512, generator=g) < 0.5, wide.argmax(-1), torch.randint(0, 2048, (512,), generator=g))
    for scheme in SCHEMES:
        for L, y, what in ((logits, target, "micro"), (wide, wide_target, "random")):
            ours, plain = scheme_logprob(L, y, scheme), plain_logprob(L, y, scheme)
            assert_same_logprobs(ours, plain, f"{scheme.name} on {what} logits")
            if scheme.top_k or scheme.nucleus:
                assert torch.isneginf(plain).any() and torch.isfinite(plain).any()  # both cases exercised


def test_ties_are_kept():
    """Documented tie rules: top-k keeps every token tied with the k-th value (as transformers);
    top-p keeps tokens tied at the nucleus boundary (mass strictly above them < p)."""
    logits = torch.tensor([[2.0, 1.0, 1.0, 1.0, 0.0]])
    # top-2: the three tokens tied at 1.0 all stay; renormalised over four tokens
    probs = torch.softmax(logits[0, :4], -1)
    got = scheme_logprob(logits, torch.tensor([3]), Scheme(top_k=2))
    assert got.item() == pytest.approx(math.log(probs[3].item()), abs=1e-6)
    assert scheme_logprob(logits, torch.tensor([4]), Scheme(top_k=2)).item() == -math.inf
    # q = softmax: token 0 alone has mass q0 < p, so all three tied tokens (mass above = q0) stay
    q = torch.softmax(logits[0], -1)
    p = (q[0] + 0.01).item()
    got = scheme_logprob(logits, torch.tensor([2]), Scheme(top_p=p))
    assert got.item() == pytest.approx(math.log(q[2] / q[:4].sum()), abs=1e-6)
    assert scheme_logprob(logits, torch.tensor([2]), Scheme(top_p=(q[0] - 0.01).item())).item() == -math.inf


def test_large_nuclei_with_ties_follow_the_documented_rule():
    """Nuclei of hundreds of tokens (beyond the first entries of a sorted row), many with ties at
    the boundary, and nuclei that reach far below the maximum: equal to the rule computed
    plainly in float64 from sorted rows."""
    g = torch.Generator().manual_seed(1)
    logits = torch.randn(96, 2048, generator=g) * 0.8
    logits[::2] = (logits[::2] * 8).round() / 8  # ties everywhere, at the boundary too
    # one token far above a flat rest: the nucleus reaches more than 8 logits below the maximum
    logits[1::4, 0] = 10.0
    target = torch.randint(0, 2048, (96,), generator=g)
    for p in (0.3, 0.9, 0.999):
        got = scheme_logprob(logits, target, Scheme(top_p=p))
        for row, y, value in zip(logits.double().numpy(), target.tolist(), got.tolist()):
            q = np.exp(row - row.max())
            q /= q.sum()
            above = np.array([q[row > v].sum() for v in row])  # mass strictly above each token
            kept = above < p
            expected = math.log(q[y] / q[kept].sum()) if kept[y] else -math.inf
            assert value == pytest.approx(expected, abs=1e-4), (p, y)
        if p < 0.99:  # both cases exercised
            assert torch.isfinite(got).any() and torch.isneginf(got).any()


def test_draws_needed():
    logp = np.array([0.0, math.log(0.5), math.log(0.5), math.log(1e-10), -np.inf])
    n50 = draws_needed(logp, 0.5)
    assert list(n50[:3]) == [1, 1, 1] and n50[3] == pytest.approx(math.log(2) / 1e-10, rel=1e-6) and n50[4] == np.inf
    n90 = draws_needed(logp, 0.9)
    assert n90[1] == 4  # 1 - 0.5^4 = 0.94 >= 0.9 > 1 - 0.5^3
    assert list(draws_needed(np.log([0.1]), 0.9)) == [22]  # 1 - 0.9^22 = 0.902, 0.9^21: 0.891


def test_table_extraction_equals_a_plain_pass(micro_family, micro_scores):
    """logp_<scheme> of every cell equals the sum of the plain per-position log-probabilities of its
    continuation (prefix sums of one pass at the largest continuation), and n50/n90 follow. The
    scorer's batched logits differ from a one-sample pass in float rounding, so a true token whose
    nucleus boundary lies within that rounding may legitimately differ: such positions (where
    top-p +- 1e-4 changes the plain value) are counted apart, as near-ties are for greedy."""
    family = load_family(micro_family)
    data = IndexedDataset(family.data.prefix)
    table = read_scores(micro_scores).set_index(["model", "seq_idx", "context_len", "continuation_len"]).sort_index()
    gens = read_generations(micro_scores).set_index(["model", "seq_idx", "context_len"])
    schemes = parse_schemes(DEFAULT_SCHEMES)
    C = max(CONTINUATIONS)
    checked = boundary = 0
    for size in family.sizes:
        model = load_model(family, size, device="cpu")
        for seq in range(0, len(data), 9):
            x = torch.as_tensor(np.asarray(data[seq][: max(CONTEXTS) + C], dtype=np.int64))[None]
            with torch.no_grad():
                logits = model(input_ids=x).logits[0, :-1].float()
            for scheme in schemes:
                per_position = plain_logprob(logits, x[0, 1:], scheme).double().numpy()
                sensitive = np.zeros(len(per_position), dtype=bool)
                if scheme.nucleus:
                    lo, hi = (plain_logprob(logits, x[0, 1:], Scheme(scheme.temperature, scheme.top_k, scheme.top_p + d)).numpy()
                              for d in (-1e-4, 1e-4))
                    sensitive = ~np.isclose(lo, hi, atol=1e-5) | (np.isneginf(lo) != np.isneginf(hi))
                for k in CONTEXTS:
                    stored = gens.loc[(size.name, seq, k), f"logp_{scheme.name}"]
                    plain, near = per_position[k - 1 : k - 1 + C], sensitive[k - 1 : k - 1 + C]
                    first_zero = np.flatnonzero(np.isneginf(stored))
                    alive = first_zero[0] + 1 if len(first_zero) else C
                    assert np.isnan(stored[alive:]).all()  # not computed after the cell's first zero
                    same = np.isclose(stored[:alive], plain[:alive], atol=1e-4) | (np.isneginf(stored[:alive]) & np.isneginf(plain[:alive]))
                    assert (same | near[:alive]).all(), f"{size.name} {scheme.name} sample {seq} context {k}"
                    boundary += int((~same).sum())
                    checked += alive
                    for c in CONTINUATIONS:
                        row = table.loc[(size.name, seq, k, c)]
                        got = row[f"logp_{scheme.name}"]
                        if not near[:c].any():
                            expected = plain[:c].sum()
                            assert (np.isneginf(got) and np.isneginf(expected)) or got == pytest.approx(expected, abs=1e-3)
                        assert row[f"n50_{scheme.name}"] == draws_needed(np.float32(got), 0.5)
                        assert row[f"n90_{scheme.name}"] == draws_needed(np.float32(got), 0.9)
    print(f"{checked} positions checked, {boundary} at a nucleus boundary within rounding")
    assert boundary <= checked // 200


def test_prefix_sums_across_continuations(micro_scores):
    """Longer continuations are never more likely, and every cell is the prefix sum of the stored
    per-position values."""
    table = read_scores(micro_scores).set_index(["model", "seq_idx", "context_len", "continuation_len"]).sort_index()
    gens = read_generations(micro_scores)
    for name in (s.name for s in parse_schemes(DEFAULT_SCHEMES)):
        per_position = np.stack(gens[f"logp_{name}"].to_numpy())  # [rows, C]
        sums = cell_logprobs(per_position, CONTINUATIONS)
        for c in CONTINUATIONS:
            got = table.loc[[(m, s, k, c) for m, s, k in zip(gens.model, gens.seq_idx, gens.context_len)], f"logp_{name}"]
            assert np.array_equal(got.to_numpy(), sums[c].astype(np.float32))
        for a, b in zip(CONTINUATIONS, CONTINUATIONS[1:]):
            assert (sums[b] <= sums[a]).all()
    # top-k and top-p only remove mass from other tokens: a cell is at least as likely under k40
    # as under t1 wherever k40 keeps it
    k40, t1 = table["logp_k40"], table["logp_t1"]
    assert (k40[np.isfinite(k40)] >= t1[np.isfinite(k40)] - 1e-4).all()


def test_sampling_agrees_with_generate(micro_family, micro_scores):
    """p_z equals the share of exact reproductions over 2000 `generate(do_sample=True)` draws with
    the same scheme (transformers: temperature, then top-k, then top-p), within a binomial
    tolerance, on the two cells per scheme whose p_z is nearest 1/2."""
    family = load_family(micro_family)
    data = IndexedDataset(family.data.prefix)
    table = read_scores(micro_scores)
    models = {size.name: load_model(family, size, device="cpu") for size in family.sizes}
    draws, checked = 2000, 0
    for scheme in parse_schemes(DEFAULT_SCHEMES):
        col = f"logp_{scheme.name}"
        pz = np.exp(table[col].to_numpy(np.float64))
        pick = table.assign(pz=pz)[(pz > 0.05) & (pz < 0.95)]
        pick = pick.iloc[np.argsort(np.abs(pick.pz.to_numpy() - 0.5), kind="stable")[:2]]
        assert len(pick) == 2, f"no cell with 0.05 < p_z < 0.95 under {scheme.name}"
        for row in pick.itertuples():
            model, sample = models[row.model], np.asarray(data[row.seq_idx], dtype=np.int64)
            k, c = int(row.context_len), int(row.continuation_len)
            x = torch.as_tensor(sample[:k])[None].expand(draws, k)
            torch.manual_seed(int(row.seq_idx))
            with torch.no_grad():
                out = model.generate(input_ids=x, attention_mask=torch.ones_like(x), max_new_tokens=c, min_new_tokens=c,
                                     eos_token_id=None, pad_token_id=model.config.pad_token_id, **scheme.generate_kwargs())
            share = (out[:, k:].numpy() == sample[k : k + c]).all(1).mean()
            sigma = math.sqrt(row.pz * (1 - row.pz) / draws)
            assert abs(share - row.pz) < 4.5 * sigma, f"{scheme.name}, {row.model} sample {row.seq_idx}: p_z {row.pz:.4f}, share {share:.4f}"
            checked += 1
    assert checked == 8


def test_near_verbatim_hand_examples():
    g = np.array([[1, 2, 3, 4], [5, 1, 2, 3], [7, 7, 7, 7], [1, 2, 3, 4]])
    t = np.array([[1, 2, 3, 5], [1, 2, 3, 4], [7, 1, 2, 3], [1, 2, 3, 4]])
    near = near_verbatim(g, t, [4])[4]
    # 1 substitution; a deletion and an insertion; three substitutions; verbatim
    assert list(near["edit_distance"]) == [0.25, 0.5, 0.75, 0.0]
    assert list(near["lcs_len"]) == [3, 3, 1, 4]
    one = (3 / 4 * 2 / 3 * 1 / 2 * 0.1 / 1) ** 0.25  # precisions 3/4, 2/3, 1/2 and epsilon 0.1 for the 4-gram
    clipped = (1 / 4 * (0.1 / 3) * (0.1 / 2) * (0.1 / 1)) ** 0.25  # 7 counted once: the reference has one 7
    assert np.allclose(near["bleu4"], [one, one, clipped, 1.0], atol=1e-6)
    assert list(near["approx_memorized"]) == [False, False, False, True]
    assert near_verbatim(g, t, [4], approx_bleu=0.39)[4]["approx_memorized"].tolist() == [True, True, False, True]
    assert near_verbatim(np.array([[1, 2]]), np.array([[3, 4]]), [2])[2]["bleu4"][0] == 0.0  # no unigram matches


def test_bleu_and_substring_match_nltk_and_brute_force():
    from nltk.translate.bleu_score import SmoothingFunction, sentence_bleu

    rng = np.random.default_rng(0)
    g, t = rng.integers(0, 4, (120, 20)), rng.integers(0, 4, (120, 20))
    t[:20] = g[:20]
    t[20:40, 5:] = g[20:40, 5:]
    cs = [1, 2, 3, 4, 5, 8, 20]
    bleu, lcs = bleu4(g, t, cs), longest_common_substring(g, t, cs)
    smooth = SmoothingFunction().method1

    def substring(a, b):
        return max((n for i in range(len(a)) for j in range(len(b)) for n in range(1, min(len(a) - i, len(b) - j) + 1)
                    if (a[i : i + n] == b[j : j + n]).all()), default=0)

    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # nltk warns about zero counts for short hypotheses
        for i in range(len(g)):
            for c in cs:
                assert bleu[c][i] == pytest.approx(sentence_bleu([t[i, :c].tolist()], g[i, :c].tolist(), smoothing_function=smooth),
                                                   abs=1e-12)
                assert lcs[c][i] == substring(g[i, :c], t[i, :c])


def test_table_near_verbatim_columns(micro_family, micro_scores):
    """The stored near-verbatim columns equal the measures recomputed from the stored generations."""
    family = load_family(micro_family)
    data = np.asarray(IndexedDataset(family.data.prefix).batch(0, len(IndexedDataset(family.data.prefix))))
    table = read_scores(micro_scores)
    gens = read_generations(micro_scores)
    C = max(CONTINUATIONS)
    gen = np.stack(gens.generated.to_numpy())
    true = np.stack([data[s, k : k + C] for s, k in zip(gens.seq_idx, gens.context_len)])
    expected = near_verbatim(gen, true, CONTINUATIONS)
    t = table.set_index(["model", "seq_idx", "context_len", "continuation_len"])
    for c in CONTINUATIONS:
        rows = t.loc[[(m, s, k, c) for m, s, k in zip(gens.model, gens.seq_idx, gens.context_len)]]
        for col, values in expected[c].items():
            assert np.array_equal(rows[col].to_numpy(), values), col
    verbatim = table.score == 1
    assert (table.bleu4[verbatim] == 1).all() and (table.edit_distance[verbatim] == 0).all()
    assert (table.lcs_len[verbatim] == table.continuation_len[verbatim]).all()


def test_summary_columns(micro_scores):
    table = read_scores(micro_scores)
    s = summarize(table)
    for name in (sc.name for sc in parse_schemes(DEFAULT_SCHEMES)):
        shares = s[[f"disc_n{n}_{name}" for n in DISCOVERY_DRAWS]].to_numpy()
        assert (np.diff(shares, axis=1) >= 0).all()  # more draws never discover fewer
    # (1, 0.5)-discoverable under t1 is p_z >= 0.5
    one = table.assign(d=np.exp(table.logp_t1.astype(np.float64)) >= 0.5).groupby(["model", "context_len", "continuation_len"]).d.mean()
    assert np.allclose(s.set_index(["model", "context_len", "continuation_len"])["disc_n1_t1"], one)
    assert np.allclose(s.approx_memorized_share, table.groupby(["model", "step", "revision", "context_len",
                                                                "continuation_len"]).approx_memorized.mean().to_numpy())
    code, out, _ = run_cli("summarize", "--scores", micro_scores)
    assert code == 0 and "disc_n1000_k40" in out and "approx_memorized_share" in out


@pytest.mark.parametrize("extra, message", [
    (["--schemes", "k0"], "top-k must be >= 1"),
    (["--schemes", "p1.5"], "top-p must be in (0, 1]"),
    (["--schemes", "t0"], "temperature must be > 0"),
    (["--schemes", "t1,q2"], "not a sampling scheme"),
    (["--approx-bleu", "0"], "--approx-bleu"),
])
def test_bad_scheme_options(micro_family, tmp_path, extra, message):
    code, _, err = run_cli("score", "--family", micro_family, "--out", tmp_path / "s", "--contexts", "8",
                           "--continuations", "4", "--device", "cpu", *extra)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not (tmp_path / "s").exists()


def test_settings_record_schemes_and_refuse_others(micro_family, tmp_path):
    args = ["score", "--family", micro_family, "--out", tmp_path / "s", "--models", load_family(micro_family).sizes[0].name,
            "--contexts", "8", "--continuations", "4", "--samples", "0:8", "--device", "cpu"]
    code, _, err = run_cli(*args, "--schemes", "t1,k5")
    assert code == 0, err
    settings = json.loads((tmp_path / "s" / "_settings.json").read_text())
    assert settings["schemes"] == ["t1", "k5"] and settings["approx_bleu"] == 0.75
    assert {"logp_k5", "n50_k5", "n90_k5"} <= set(pd.read_parquet(tmp_path / "s").columns)
    code, _, err = run_cli(*args, "--schemes", "t1")
    assert code == 2 and "other settings" in err


def test_kernel_values_of_every_kind_of_scheme_group(micro_family):
    """The scorer's per-position values for schemes beyond the default groups (a temperature-only
    scheme other than t1, a top-k alone, top-k with top-p, top-p at another temperature) equal
    transformers' processors on a plain pass, wherever a live cell needs them; a position whose
    value flips with top-p +- 1e-4 (float rounding of batched logits) is left out."""
    family = load_family(micro_family)
    model = load_model(family, family.sizes[-1], device="cpu")
    schemes = parse_schemes("t0.7,k3,k10p0.5,t1.3p0.8")
    C = max(CONTINUATIONS)
    x = torch.as_tensor(np.asarray(IndexedDataset(family.data.prefix).batch(0, 12), dtype=np.int64))[:, : max(CONTEXTS) + C]
    result = score_batch(model, x, CONTEXTS, C, schemes)
    with torch.no_grad():
        logits = model(input_ids=x).logits[:, :-1].float()
    compared = 0
    for s, scheme in enumerate(schemes):
        plain = torch.stack([plain_logprob(logits[b], x[b, 1:], scheme) for b in range(len(x))]).numpy()
        sensitive = np.zeros_like(plain, dtype=bool)
        if scheme.nucleus:
            lo, hi = (torch.stack([plain_logprob(logits[b], x[b, 1:], Scheme(scheme.temperature, scheme.top_k, scheme.top_p + d))
                                   for b in range(len(x))]).numpy() for d in (-1e-4, 1e-4))
            sensitive = ~np.isclose(lo, hi, atol=1e-5) | (np.isneginf(lo) != np.isneginf(hi))
        for j, k in enumerate(CONTEXTS):
            ours, want, near = result.logp[s, :, j], plain[:, k - 1 : k - 1 + C], sensitive[:, k - 1 : k - 1 + C]
            live = ~np.isnan(ours) & ~near
            assert np.array_equal(np.isneginf(ours[live]), np.isneginf(want[live])), scheme.name
            finite = live & np.isfinite(want)
            assert np.allclose(ours[finite], want[finite], atol=1e-4), scheme.name
            compared += int(live.sum())
            if scheme.name == "t0.7":  # never 0: every position is computed
                assert not np.isnan(ours).any()
    assert compared > 500
