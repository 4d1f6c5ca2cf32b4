"""Decoding dynamics: collection equals direct computation, statistics on known inputs, bad input."""

from __future__ import annotations

import json
import math
import os
import shutil
from collections import Counter

import numpy as np
import pandas as pd
import pytest
import torch

from dynamics.decoding.boundary import jump_values, shift_align
from dynamics.decoding.analyze import run_dynamics
from dynamics.decoding.collect import run_collection, select_sequences
from dynamics.decoding.store import read_hidden, read_model, read_settings
from dynamics.corpus.megatron import IndexedDataset
from dynamics.decoding.embeddings import embedding_tables
from dynamics.errors import MemdynError
from dynamics.family.load import load_model
from dynamics.family.spec import load_family
from dynamics.ngrams import ShardedNgramIndex
from dynamics.scoring.table import read_generations, read_scores
from dynamics.scoring.grid import main_cell
from dynamics.scoring.kernel import NEAR_TIE
from dynamics.decoding.words import log_odds, word_ngrams
from tests.conftest import MICRO_CONTEXTS, MICRO_CONTINUATIONS

PER_GROUP = 6
C = int(MICRO_CONTINUATIONS.split(",")[0])  # the smallest continuation (passed), at the default context:
K = main_cell([int(v) for v in MICRO_CONTEXTS.split(",")], [C])[0]  # the main cell's
ARGS = dict(per_group=PER_GROUP, layers="all", continuation=C, hidden_dtype="float32", device="cpu")
TABLES = ("curves", "jumps", "distances", "projections", "separation", "words")


@pytest.fixture(scope="module")
def dyn(micro_family, micro_scores, tmp_path_factory):
    """One run through the command line (the typer command the CLI registers)."""
    import typer
    from typer.testing import CliRunner

    from dynamics.cli.dynamics import dynamics as dynamics_command

    app = typer.Typer()
    app.command()(dynamics_command)
    out = tmp_path_factory.mktemp("dynamics") / "dyn"
    result = CliRunner().invoke(app, [
        "--family", str(micro_family), "--scores", str(micro_scores), "--out", str(out), "--per-group", str(PER_GROUP),
        "--layers", "all", "--continuation", str(C), "--hidden-dtype", "float32", "--device", "cpu",
        "--bootstrap", "100", "--no-umap", "--no-plots",
    ])
    assert result.exit_code == 0, (result.output, result.exception)
    return out


def _models(out):
    return list(read_settings(out)["models"].items())


def _grid(positions: pd.DataFrame, column: str, n_rows: int) -> np.ndarray:
    """A positions column as [n_rows, T]."""
    return positions.sort_values(["row", "position"])[column].to_numpy().reshape(n_rows, -1)


@torch.no_grad()
def _plain_pass(family, model, revision, fed):
    m = load_model(family, model, revision, device="cpu")
    return m(input_ids=torch.from_numpy(fed.astype(np.int64)), output_hidden_states=True)


# ----------------------------------------------------------------------------------- collection


def test_sampling_and_schema(dyn, micro_family, micro_scores):
    table = read_scores(micro_scores)
    family = load_family(micro_family)
    settings = read_settings(dyn)
    assert (settings["context_len"], settings["continuation_len"]) == (K, C)
    assert settings["models"] == {s.name: s.final for s in family.sizes}  # every model, last revision
    for model, revision in _models(dyn):
        meta, seqs, positions = read_model(dyn, model)
        assert meta["layers"] == list(range(family.size(model).layers + 1))
        assert seqs["row"].tolist() == list(range(len(seqs))) and seqs["seq_idx"].is_unique
        cell = table[(table.model == model) & (table.revision == revision) & (table.context_len == K) & (table.continuation_len == C)]
        truth = cell.set_index("seq_idx").loc[seqs.seq_idx]
        assert (truth["matches"].to_numpy() == seqs["matches"]).all() and (truth["prefix_len"].to_numpy() == seqs["prefix_len"]).all()
        available = cell["matches"].value_counts()
        drawn = seqs[seqs.level_draw]["matches"].value_counts()
        for level in range(C + 1):
            assert drawn.get(level, 0) == min(PER_GROUP, available.get(level, 0))
        assert seqs.random_draw.sum() == PER_GROUP
        assert set(seqs.group) <= {"unmemorized", "partial", "memorized"}
        assert ((seqs.group == "memorized") == (seqs.matches == C)).all()
        assert set(seqs.domain) <= {"code", "docs"}  # stdlib sources and pydoc topics
        samples = pd.read_parquet(family.root / "data" / "samples.parquet").query("split == 'train'").set_index("sample_idx")
        assert (seqs["document"].to_numpy() == samples.loc[seqs.seq_idx, "first_doc"].to_numpy()).all()
        assert len(positions) == len(seqs) * (K + C)
        assert sorted(positions.position.unique()) == list(range(-K, C))
        hidden = read_hidden(dyn, model, meta["layers"][-1])
        assert hidden.shape == (len(seqs), K + C, family.size(model).d_model) and hidden.dtype == np.float32
    seqs = select_sequences(cell, C, PER_GROUP, np.random.default_rng(1))
    assert not seqs.equals(select_sequences(cell, C, PER_GROUP, np.random.default_rng(2)))


def test_entropy_and_greedy_refeed_match_direct_computation(dyn, micro_family, micro_scores):
    family = load_family(micro_family)
    gens = read_generations(micro_scores)
    for model, revision in _models(dyn):
        _, seqs, positions = read_model(dyn, model)
        fed, true = _grid(positions, "generated", len(seqs)), _grid(positions, "token", len(seqs))
        # the fed continuation is the scorer's greedy generation, and gives the scored matches
        g = gens[(gens.model == model) & (gens.revision == revision) & (gens.context_len == K)].set_index("seq_idx")
        assert (np.stack([v[:C] for v in g.loc[seqs.seq_idx, "generated"]]) == fed[:, K:]).all()
        assert (fed[:, :K] == true[:, :K]).all()
        assert ((fed[:, K:] == true[:, K:]).sum(1) == seqs.matches).all()

        logits = _plain_pass(family, model, revision, fed).logits.double()  # [n, T, V]
        direct = -(logits.softmax(-1) * logits.log_softmax(-1)).sum(-1).numpy()  # predicts token p + 1
        entropy = _grid(positions, "entropy_nats", len(seqs))
        assert np.isnan(entropy[:, 0]).all()
        np.testing.assert_allclose(entropy[:, 1:], direct[:, :-1], rtol=1e-5, atol=1e-5)
        np.testing.assert_allclose(_grid(positions, "entropy_bits", len(seqs)), entropy / math.log(2), rtol=1e-5)
        surprisal = _grid(positions, "surprisal_nats", len(seqs))  # -log p of the fed token, same pass
        nll = -logits.log_softmax(-1)[:, :-1].gather(-1, torch.from_numpy(fed[:, 1:].astype(np.int64))[..., None])[..., 0]
        assert np.isnan(surprisal[:, 0]).all()
        np.testing.assert_allclose(surprisal[:, 1:], nll.numpy(), rtol=1e-5, atol=1e-5)
        # one pass over context + generation reproduces greedy decoding: the argmax at each
        # generated position's predecessor is that generated token (except at recorded near-ties)
        argmax = logits[:, K - 1 : K - 1 + C].argmax(-1).numpy()
        clear = (g.loc[seqs.seq_idx, "min_gap"] >= NEAR_TIE).to_numpy()
        assert clear.sum() > 0.8 * len(seqs)
        assert (argmax[clear] == fed[clear, K:]).all()
        top1 = _grid(positions, "top1", len(seqs))
        assert top1[clear, K:].all()
        assert (top1[:, 1:] == (logits[:, :-1].argmax(-1).numpy() == fed[:, 1:])).all()


def test_hidden_states_match_plain_forward(dyn, micro_family):
    family = load_family(micro_family)
    for model, revision in _models(dyn):
        meta, seqs, positions = read_model(dyn, model)
        states = _plain_pass(family, model, revision, _grid(positions, "generated", len(seqs))).hidden_states
        for layer in meta["layers"]:
            np.testing.assert_allclose(read_hidden(dyn, model, layer), states[layer].numpy(), rtol=1e-5, atol=1e-5)


def test_ngram_counts_equal_brute_force(dyn, micro_family):
    stream = IndexedDataset(load_family(micro_family).data.prefix).tokens().astype(np.int64)
    counts = {n: Counter(map(tuple, np.lib.stride_tricks.sliding_window_view(stream, n).tolist())) for n in range(1, 6)}
    windows = np.lib.stride_tricks.sliding_window_view(stream, K + C)
    for model, _ in _models(dyn):
        _, seqs, positions = read_model(dyn, model)
        for name, column in (("orig", "token"), ("gen", "generated")):
            tokens = _grid(positions, column, len(seqs))
            for n in range(1, 6):
                expect = np.array([[counts[n][tuple(row[p - n + 1 : p + 1])] if p >= n - 1 else -1 for p in range(K + C)]
                                   for row in tokens.tolist()])
                assert (_grid(positions, f"{name}_n{n}", len(seqs)) == expect).all(), (model, name, n)
            span = [(windows == row).all(1).sum() for row in tokens]
            assert seqs["span_count" if name == "orig" else "gen_span_count"].tolist() == span
        assert (seqs.span_count >= 1).all()  # a training sample occurs in its own training data


def test_same_seed_same_outputs(dyn, micro_family, micro_scores, tmp_path):
    out = tmp_path / "again"
    run_dynamics(load_family(micro_family), micro_scores, out, use_umap=False, plots=False, n_resamples=100,
                 progress=False, **ARGS)
    files = sorted(p.relative_to(dyn) for p in dyn.rglob("*") if p.is_file())
    assert files == sorted(p.relative_to(out) for p in out.rglob("*") if p.is_file())
    for f in files:
        if f.suffix == ".parquet":
            pd.testing.assert_frame_equal(pd.read_parquet(dyn / f), pd.read_parquet(out / f))
        else:
            assert (dyn / f).read_bytes() == (out / f).read_bytes(), f


def test_moved_work_directory_resumes(dyn, micro_family, micro_scores, tmp_path):
    """The settings record what was scored and collected, not where: a family, scores and dynamics
    copied elsewhere are recognised, and nothing is collected again."""
    import shutil

    for src, name in ((micro_family, "family"), (micro_scores, "scores"), (dyn, "dyn")):
        shutil.copytree(src, tmp_path / name, copy_function=shutil.copy2)
    done = {p: p.stat().st_mtime_ns for p in (tmp_path / "dyn").rglob("sequences.parquet")}
    run_dynamics(load_family(tmp_path / "family"), tmp_path / "scores", tmp_path / "dyn", use_umap=False, plots=False,
                 n_resamples=100, progress=False, **ARGS)
    assert done and all(p.stat().st_mtime_ns == t for p, t in done.items())


def test_analysis_tables(dyn):
    tables = {t: pd.read_parquet(dyn / "tables" / f"{t}.parquet") for t in TABLES}
    assert all((dyn / "tables" / f"{t}.csv").is_file() for t in TABLES)
    curves, jumps = tables["curves"], tables["jumps"]
    entropy = curves[(curves.metric == "entropy_nats") & (curves["align"] == "boundary") & (curves.grouping == "class")]
    assert set(entropy.position) == set(range(-K + 1, C))  # position -K (p = 0) has no prediction
    ok = entropy[entropy.n >= 2]
    assert ((ok.ci_lo <= ok["mean"] + 1e-12) & (ok["mean"] <= ok.ci_hi + 1e-12)).all()
    assert set(jumps["align"]) == {"boundary", "mismatch"} and set(jumps.metric) >= {"entropy_nats", "orig_n1"}
    # the intervals resample the documents the sequences start in: fewer units than sequences
    assert ((1 <= jumps.documents) & (jumps.documents <= jumps.n)).all() and (jumps.documents < jumps.n).any()
    # the mismatch alignment holds only partially memorized sequences
    mismatch = jumps[(jumps["align"] == "mismatch") & (jumps.grouping == "level")]
    assert set(mismatch.group.astype(int)) <= set(range(1, C))
    d = tables["distances"]
    assert np.allclose(d[d.level_a == d.level_b][["cosine", "l2"]], 0, atol=1e-6)
    one = d[(d.model == d.model.iloc[0]) & (d.layer == d.layer.max()) & (d.step == 0)]
    pivot = one.pivot(index="level_a", columns="level_b", values="l2").to_numpy()
    np.testing.assert_allclose(pivot, pivot.T, atol=1e-9)
    sep = tables["separation"]
    assert set(sep.contrast) == {"memorized_vs_unmemorized", "levels"}
    assert set(tables["projections"].method) == {"pca"}


def test_words_table_on_decoded_samples(dyn, micro_family):
    from dynamics.family.load import load_tokenizer
    from dynamics.decoding.words import words_table

    meta, seqs, positions = read_model(dyn, _models(dyn)[-1][0])
    seqs = seqs.assign(matches=np.where(seqs.matches > 0, C, 0))  # the micro models memorize ~nothing: relabel
    table = words_table(seqs, _grid(positions, "token", len(seqs)), load_tokenizer(load_family(micro_family)), meta, top=5)
    assert set(table.domain) == {"all", "code"} and (table.model == meta["model"]).all()
    assert set(table.order) <= {1, 2, 3} and len(table) <= 2 * 2 * 5
    for _, part in table.groupby("domain"):
        assert part.z.is_monotonic_decreasing and part.z.iloc[0] > 0 > part.z.iloc[-1]


def test_figures(dyn, tmp_path):
    from dynamics.decoding.plots import write_figures

    tables = {t: pd.read_parquet(dyn / "tables" / f"{t}.parquet") for t in TABLES[:-1]}
    largest = tables["curves"].sort_values("params")["model"].iloc[-1]
    paths = write_figures({t: v[v.model == largest] for t, v in tables.items()}, tmp_path)
    names = {p.name for p in paths}
    for stem in ("curve_entropy_nats_level", "curve_orig_n1_class", "jump_entropy_nats", "distance_cosine_step0",
                 "projection_pca", "separation"):
        assert {f"{stem}.png", f"{stem}.svg"} <= names
    assert all(p.stat().st_size > 1000 for p in paths)


# ----------------------------------------------------------------------------------- bad input


def _expect_refused(family, scores, out, match, **kw):
    with pytest.raises(MemdynError, match=match):
        run_collection(family, scores, out, progress=False, **{**ARGS, **kw})
    assert not out.exists()  # refused before any work


def test_bad_inputs_fail_before_work(micro_family, micro_scores, tmp_path):
    family = load_family(micro_family)
    out = tmp_path / "out"
    for key, value in (("family", "another-family"), ("corpus_hash", "0" * 64)):
        other = tmp_path / f"scores-{key}"
        shutil.copytree(micro_scores, other)
        settings = json.loads((other / "_settings.json").read_text())
        (other / "_settings.json").write_text(json.dumps({**settings, key: value}))
        _expect_refused(family, other, out, "--scores .* was computed for family")
    _expect_refused(family, micro_scores, out, "--layers 0,9: model .* has hidden states 0..1", layers=[0, 9])
    _expect_refused(family, micro_scores, out, "layers must be 'last', 'all' or a list", layers="last,2")
    from dynamics.cli.parse import hidden_layers

    with pytest.raises(MemdynError, match="--layers must be last, all or comma-separated"):
        hidden_layers("last,2")
    _expect_refused(family, micro_scores, out, "--per-group", per_group=0)
    _expect_refused(family, micro_scores, out, "no scores for context", context=7)
    ShardedNgramIndex.build(np.arange(500, dtype=np.uint16) % 7, tmp_path / "other.ngrams", bounds=[0, 500])
    _expect_refused(family, micro_scores, out, "built over other data", ngram_index=tmp_path / "other.ngrams")
    with pytest.raises(MemdynError, match="--jump-window"):
        run_dynamics(family, micro_scores, out, m=0, progress=False, **ARGS)
    assert not out.exists()


# ----------------------------------------------------------------------------------- statistics


def test_jump_statistic_and_alignment_on_known_inputs():
    positions = np.arange(-4, 2)
    x = np.array([[1.0, 2, 3, 4, 10, 0], [5, 5, 5, 5, 5, 5], [np.nan, np.nan, 1, 3, 0, 9]])
    assert jump_values(x, positions, m=3).tolist() == [7.0, 0.0, -2.0]  # 10 - mean(2, 3, 4); NaN skipped
    assert jump_values(x, positions, m=1).tolist() == [6.0, 0.0, -3.0]
    aligned, rel = shift_align(x, positions, np.array([1, 0, -2]))  # put position 1 / 0 / -2 at 0
    assert rel.tolist() == list(range(-5, 4))
    at0 = aligned[:, rel == 0][:, 0]
    assert at0.tolist() == [0.0, 5.0, 1.0]
    assert np.isnan(aligned).sum() == aligned.size - np.isfinite(x).sum()  # nothing lost, padding only


def test_log_odds_on_known_inputs():
    t = log_odds(Counter({"a": 3, "b": 1}), Counter({"a": 1, "b": 3}), Counter({"a": 4, "b": 4})).set_index("ngram")
    # delta_a = log(7/5) - log(5/7); var = 1/7 + 1/5 (Monroe et al. 2008, eq. 16, 18-20)
    assert t.loc["a", "log_odds"] == pytest.approx(2 * math.log(1.4))
    assert t.loc["a", "z"] == pytest.approx(2 * math.log(1.4) / math.sqrt(1 / 7 + 1 / 5))
    assert t.loc["b", "z"] == pytest.approx(-t.loc["a", "z"])
    # an n-gram used equally often relative to each group's size is neutral
    t = log_odds(Counter({"x": 2, "y": 2}), Counter({"x": 4, "y": 4}), Counter({"x": 6, "y": 6})).set_index("ngram")
    assert t["z"].abs().max() < 1e-12
    grams = word_ngrams("def f(x):\n    return X", 3)
    assert {"def", "f", "(", "x", "):", "return", "def f", "f (", "return x", "def f ("} <= set(grams)
    assert len(grams) == 7 + 6 + 5  # 7 words, lower-cased


def test_embedding_separation_on_known_inputs():
    rng = np.random.default_rng(0)
    n, T, d = 40, K + C, 6
    levels = np.repeat([0, C], n // 2)
    hidden = rng.normal(0, 0.01, (n, T, d)).astype(np.float32)
    hidden[levels == 0, :, 0] += 1.0  # level 0 points along axis 0, level C along axis 1
    hidden[levels == C, :, 1] += 1.0
    seqs = pd.DataFrame({"row": np.arange(n), "seq_idx": np.arange(n), "matches": levels})
    meta = {"model": "toy", "params": 1, "context_len": K, "continuation_len": C}
    distances, projections, separation = embedding_tables(seqs, hidden, meta, layer=1, use_umap=False)
    cross = distances[(distances.level_a == 0) & (distances.level_b == C)]
    assert len(cross) == C
    np.testing.assert_allclose(cross.cosine, 1.0, atol=0.05)
    np.testing.assert_allclose(cross.l2, math.sqrt(2), atol=0.05)
    sep = separation.set_index("contrast").loc["memorized_vs_unmemorized"]
    assert sep.silhouette > 0.9 and sep.probe_accuracy == 1.0 and sep.chance_accuracy == 0.5
    means = projections[projections.kind == "level_mean"]
    assert len(means) == 2 * C and (projections.layer == 1).all()


def test_umap_kernels_compiled_without_numbas_cache_are_cached():
    """The kernels umap-learn compiles without numba's cache, anew in every process, still exist
    under the names memdyn caches them by (an umap-learn that renamed one would compile it in every
    process again, silently), and are cached once umap is imported through memdyn."""
    import importlib

    from numba.core.caching import NullCache

    from dynamics.decoding.embeddings import _UNCACHED_UMAP_KERNELS, _import_umap

    _import_umap()
    for module, name in _UNCACHED_UMAP_KERNELS:
        assert not isinstance(getattr(importlib.import_module(module), name)._cache, NullCache), f"{module}.{name}"


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("MEMDYN_SLOW"), reason="UMAP compiles with numba (~20-40 s); set MEMDYN_SLOW=1")
def test_umap_projection_is_seeded():
    rng = np.random.default_rng(0)
    hidden = rng.normal(size=(30, K + C, 8)).astype(np.float32)
    seqs = pd.DataFrame({"row": np.arange(30), "seq_idx": np.arange(30), "matches": np.arange(30) % (C + 1)})
    meta = {"model": "toy", "params": 1, "context_len": K, "continuation_len": C}
    a = embedding_tables(seqs, hidden, meta, 0, seed=3, use_umap=True)[1]
    b = embedding_tables(seqs, hidden, meta, 0, seed=3, use_umap=True)[1]
    assert set(a.method) == {"pca", "umap"}
    pd.testing.assert_frame_equal(a, b)


@pytest.mark.slow
@pytest.mark.skipif(not os.environ.get("MEMDYN_SLOW"), reason="UMAP compiles with numba (~20-40 s); set MEMDYN_SLOW=1")
def test_umap_keeps_clusters_and_places_level_means_among_their_sequences():
    rng = np.random.default_rng(1)
    n, d = 60, 8
    levels = np.repeat([0, C], n // 2)
    hidden = rng.normal(0, 0.05, (n, K + C, d)).astype(np.float32)
    hidden[levels == 0, :, 0] += 1.0
    hidden[levels == C, :, 1] += 1.0
    seqs = pd.DataFrame({"row": np.arange(n), "seq_idx": np.arange(n), "matches": levels})
    meta = {"model": "toy", "params": 1, "context_len": K, "continuation_len": C}
    p = embedding_tables(seqs, hidden, meta, 0, seed=0, use_umap=True)[1]
    p = p[p.method == "umap"]
    points = p[p.kind == "sequence"]
    centre = {lv: points[points.level == lv][["x", "y"]].to_numpy().mean(0) for lv in (0, C)}
    for lv, other in ((0, C), (C, 0)):
        xy = p[(p.kind == "level_mean") & (p.level == lv)][["x", "y"]].to_numpy()
        assert len(xy) == C
        assert (np.linalg.norm(xy - centre[lv], axis=1) < np.linalg.norm(xy - centre[other], axis=1)).all()
