"""Memorization predictor: splits, model, metrics, save/load and CLI on the micro family."""

from __future__ import annotations

import json

import numpy as np
import pandas as pd
import pytest
import torch

from dynamics.errors import MemdynError
from dynamics.family.spec import load_family
from dynamics.scoring.grid import score_classes
from predictor.data import balance, document_folds, fold_splits, owned_documents, split_by_document, touches
from predictor.metrics import classification_metrics, expected_calibration_error, token_metrics
from predictor.model import MemPredictor, PredictorConfig

torch.set_num_threads(1)
# 37k at context 16 / continuation 4 has all three classes in both micro documents
CELL = ["--model", "37k", "--context", "16", "--continuation", "4", "--test-size", "0.5"]  # half the documents held out: memorized ones on both sides
SMALL = ["--epochs", "3", "--d-model", "16", "--encoder-layers", "1", "--heads", "2"]


def invoke(*args):
    from typer.testing import CliRunner

    from dynamics.cli.predictor import app

    r = CliRunner().invoke(app, [str(a) for a in args])
    return r


@pytest.fixture(scope="module")
def trained(micro_family, micro_scores, tmp_path_factory):
    out = tmp_path_factory.mktemp("pred") / "p"
    r = invoke("train", "--family", micro_family, "--scores", micro_scores, "--out", out, *CELL, *SMALL, "--folds", "5")
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert "-fold cross-validation by document" in r.output
    return out




@pytest.fixture(scope="module")
def hidden_trained(micro_family, micro_scores, tmp_path_factory):
    """(dynamics directory, hidden-mode predictor directory) of 37k at context 16 / continuation 4."""
    from dynamics.decoding.collect import run_collection
    from dynamics.family.spec import load_family

    root = tmp_path_factory.mktemp("hidden")
    run_collection(load_family(micro_family), micro_scores, root / "dyn", per_group=30, context=16, continuation=4,
                   device="cpu", progress=False)
    r = invoke("train", "--family", micro_family, "--scores", micro_scores, "--dynamics", root / "dyn", "--input", "hidden",
               "--out", root / "h", *CELL, *SMALL)
    assert r.exit_code == 0, r.output + repr(r.exception)
    return root / "dyn", root / "h"


# ---------------------------------------------------------------------------- units


def test_score_classes_edges():
    assert score_classes([0.0, 0.2, 0.25, 0.99, 1.0]).tolist() == [0, 0, 1, 1, 2]
    assert score_classes([0.5, 0.75], edges=(0.25, 0.75)).tolist() == [1, 2]


def spanning_documents(seed: int, n: int, n_docs: int, spanning: float):
    """Sample -> (first_doc, last_doc) where a `spanning` share of samples run into the next document."""
    rng = np.random.default_rng(seed)
    first = np.sort(rng.integers(0, n_docs, n))
    last = first + (rng.random(n) < spanning)
    return first, last, pd.DataFrame({"first_doc": first, "last_doc": last})


def test_split_is_leak_free_with_spanning_samples():
    first, last, docs = spanning_documents(0, 300, 30, 0.3)
    for seed in range(5):
        train, test, owned = split_by_document(docs, seed)
        assert len(test) and not set(train) & set(test)
        train_docs = {d for a, b in zip(first[train], last[train]) for d in range(a, b + 1)}
        test_docs = {d for a, b in zip(first[test], last[test]) for d in range(a, b + 1)}
        assert not train_docs & test_docs
        assert set(owned) == train_docs and not touches(docs.iloc[test], owned).any()
    assert split_by_document(docs, 3)[1].tolist() == split_by_document(docs, 3)[1].tolist()  # seeded


def test_folds_pool_each_eligible_sample_once_and_never_leak():
    first, last, docs = spanning_documents(1, 400, 40, 0.2)
    for seed in range(3):
        groups, splits = document_folds(docs, 5, seed), fold_splits(docs, 5, seed)
        fold = {d: f for f, ds in enumerate(groups) for d in ds}
        eligible = [i for i in range(400) if len({fold[d] for d in range(first[i], last[i] + 1)}) == 1]
        tested = np.concatenate([test for _, test in splits])
        assert sorted(tested) == eligible and len(set(tested)) == len(tested)  # each eligible sample exactly once
        assert 0 < 400 - len(eligible) < (last > first).sum()  # only samples spanning two folds are left out
        for f, (train, test) in enumerate(splits):
            assert {fold[d] for i in test for d in (first[i], last[i])} == {f}
            assert not set(owned_documents(docs.iloc[train])) & set(groups[f])  # train and test documents are disjoint
    same = fold_splits(docs, 5, 7)
    assert all(np.array_equal(a[0], b[0]) and np.array_equal(a[1], b[1]) for a, b in zip(same, fold_splits(docs, 5, 7)))
    assert not all(np.array_equal(a[1], b[1]) for a, b in zip(same, fold_splits(docs, 5, 8)))
    few = docs[docs["first_doc"] < 3]
    assert len(fold_splits(few, 5, 0)) == len(owned_documents(few))  # at most one fold per document


def test_split_needs_two_documents():
    with pytest.raises(MemdynError, match="one training document"):
        split_by_document(pd.DataFrame({"first_doc": [0, 0], "last_doc": [0, 0]}), 0)


def test_balance_caps_each_level():
    levels = np.array([0] * 10 + [1] * 3 + [2] * 5)
    keep = balance(levels, 4, seed=0)
    assert np.bincount(levels[keep]).tolist() == [4, 3, 4]
    assert balance(levels, None, 0).tolist() == list(range(18))


@pytest.mark.parametrize("positional", ["learned", "sinusoidal"])
def test_batch_first_shapes_and_positions_matter(positional):
    torch.manual_seed(0)
    net = MemPredictor(PredictorConfig(vocab_size=50, max_len=12, d_model=16, n_layers=1, n_heads=2,
                                       dropout=0.0, positional=positional)).eval()
    x = torch.randint(0, 50, (3, 7))  # [B, T]
    out = net(x)
    assert out["logits"].shape == (3, 3) and out["score"].shape == (3,) and out["token_logits"].shape == (3, 7)
    perm = net(x[:, torch.randperm(7, generator=torch.Generator().manual_seed(1))])
    assert not torch.allclose(out["logits"], perm["logits"])  # no positions => mean pooling is permutation-invariant
    # batch items are independent (a swapped batch/sequence axis would mix them)
    assert torch.allclose(net(x[:1])["logits"], out["logits"][:1], atol=1e-6)
    hid = MemPredictor(PredictorConfig(input="hidden", n_features=9, n_channels=2, context_len=8, max_len=12, d_model=16,
                                       n_layers=1, n_heads=2)).eval()
    assert hid(torch.randn(2, 12, 9))["token_logits"].shape == (2, 12)


def test_metrics_on_known_inputs():
    y = np.array([0, 1, 2, 2])
    proba = np.array([[0.9, 0.05, 0.05], [0.1, 0.8, 0.1], [0.1, 0.1, 0.8], [0.6, 0.1, 0.3]])
    m = classification_metrics(y, proba)
    assert m["accuracy"] == 0.75
    assert m["macro_f1"] == pytest.approx((2 / 3 + 1 + 2 / 3) / 3)  # class 0: P 1/2 R 1; class 2: P 1 R 1/2
    assert m["auroc"] == 1.0  # memorized rows have the two highest memorized probabilities
    assert m["confusion"] == [[1, 0, 0], [0, 1, 0], [1, 0, 1]]
    # ECE: bins 0.9 (acc 1), 0.8 (2 rows, acc 1), 0.6 (acc 0) -> (0.1 + 2*0.2 + 0.6) / 4
    assert expected_calibration_error(proba, y) == pytest.approx((0.1 + 0.4 + 0.6) / 4)
    assert np.isnan(classification_metrics(np.array([0, 1]), proba[:2])["auroc"])
    t = token_metrics(np.array([[0.9, 0.8, 0.1], [0.7, 0.6, 0.95]]), np.array([[1, 1, 0], [1, 0, 1]]))
    # threshold 0.5 misses one token (0.6); ranking: the false 0.6 sits below the true 0.7..0.95, above the false 0.1
    assert t == {"token_accuracy": pytest.approx(5 / 6), "sequence_accuracy": 0.5, "token_auroc": pytest.approx(1.0)}


def test_resampled_auroc_and_its_interval():
    from predictor.metrics import interval, resampled_auroc
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    y = rng.integers(0, 3, 60)
    proba = rng.dirichlet(np.ones(3), 60)
    weights = rng.integers(0, 3, (20, 60))
    expected = [roc_auc_score(y == 2, proba[:, 2], sample_weight=w) for w in weights]
    assert resampled_auroc(y, proba, weights) == pytest.approx(expected, abs=1e-12)
    assert np.isnan(resampled_auroc(np.zeros(60, int), proba, weights)).all()  # no memorized row
    assert interval(np.array([np.nan, 0.2, 0.4, np.nan])) == pytest.approx((0.205, 0.395))  # undefined resamples left out
    assert np.isnan(interval(np.full(3, np.nan))).all()


# ---------------------------------------------------------------------------- micro family


def test_train_writes_predictor_and_baselines(trained, micro_scores):
    for name in ("config.json", "model.safetensors", "split.json", "metrics.json", "tokenizer"):
        assert (trained / name).exists()
    m = json.loads((trained / "metrics.json").read_text())
    assert set(m["baselines"]) == {"majority", "logistic", "gboost"}
    assert {"context_loss", "zlib_ratio", "log_context_duplicates"} <= set(m["baseline_features"])
    for s in ("natural", "balanced"):
        assert 0 <= m["predictor"][s]["accuracy"] <= 1 and len(m["predictor"][s]["confusion"]) == 3
    cv = json.loads((trained / "cv.json").read_text())
    assert cv["cv"]["folds"] >= 2 and set(cv["baselines"]) == {"majority", "logistic", "gboost"}
    # every sample is pooled once (in the natural set) or spans both documents
    assert cv["predictor"]["natural"]["n"] == cv["cv"]["n_evaluated"] == sum(f["n_test"] for f in cv["cv"]["per_fold"])
    n_cell = len(pd.read_parquet(micro_scores).query("model == '37k' and context_len == 16 and continuation_len == 4"))
    assert cv["cv"]["n_evaluated"] + cv["cv"]["n_straddling"] == n_cell and cv["cv"]["n_evaluated"] > m["predictor"]["natural"]["n"]
    # AUROC intervals over the documents of the evaluated samples, and each baseline's paired difference
    p = cv["predictor"]["natural"]
    assert p["auroc_lo"] <= p["auroc"] <= p["auroc_hi"]
    assert 1 <= p["memorized_documents"] <= p["documents"] < p["n"]
    for name in ("logistic", "gboost"):
        b = cv["baselines"][name]["natural"]
        assert b["auroc_lo"] <= b["auroc"] <= b["auroc_hi"]
        assert b["auroc_diff_lo"] <= b["auroc"] - p["auroc"] <= b["auroc_diff_hi"]


def test_cross_validation_is_seeded_and_fits_each_fold_on_other_documents(micro_family, micro_scores):
    from predictor.train import TrainSettings, cross_validate

    arch = {"d_model": 16, "n_layers": 1, "n_heads": 2}
    family = load_family(micro_family)
    run = lambda seed: cross_validate(family, model="37k", mode="context", scores=micro_scores, context=16, continuation=4,
                                      settings=TrainSettings(seed=seed, epochs=2), folds=2, arch=arch)
    a = run(0)
    assert a == run(0)  # same seed: same folds, same predictors, same metrics
    # fold 1 trains on document 1's samples and tests document 0's, and vice versa
    assert sorted(f["n_train"] for f in a["cv"]["per_fold"]) == sorted(f["n_test"] for f in a["cv"]["per_fold"])
    # 16k never memorizes 16 tokens; 37k memorizes 16 tokens in few documents, so one of 3 folds
    # holds them all and has none to train on: both said in one line, before any training
    with pytest.raises(MemdynError, match="memorized samples in the samples of 16k"):
        cross_validate(family, model="16k", mode="context", scores=micro_scores, context=16, continuation=16, folds=2)
    with pytest.raises(MemdynError, match=r"memorized samples in the training rows of cross-validation fold \d of 3.*fewer --folds"):
        cross_validate(family, model="37k", mode="context", scores=micro_scores, context=16, continuation=16, folds=3)


def test_saved_predictor_reloads_with_identical_predictions(trained, micro_family):
    from predictor.data import context_tokens
    from predictor.estimator import MemorizationPredictor
    from predictor.predict import predict_text
    from dynamics.family.spec import load_family

    x = context_tokens(load_family(micro_family), np.arange(10), 16)
    a = MemorizationPredictor.from_pretrained(trained).predict_outputs(x)
    b = MemorizationPredictor.from_pretrained(trained).predict_outputs(x)
    assert np.array_equal(a["proba"], b["proba"]) and np.array_equal(a["score"], b["score"])
    assert predict_text(trained, "def f(x):") == predict_text(trained, "def f(x):")


def test_ensemble_averages_its_members():
    """An ensemble predicts its members' mean probabilities."""
    from predictor.model import MemPredictorEnsemble

    torch.manual_seed(0)
    cfg = PredictorConfig(vocab_size=50, max_len=12, d_model=16, n_layers=1, n_heads=2, members=2)
    net = MemPredictorEnsemble(cfg).eval()
    x = torch.randint(0, 50, (3, 12))
    outs = [m(x) for m in net.members]
    assert not torch.allclose(outs[0]["logits"], outs[1]["logits"])  # members start from their own initialisation
    mean = (outs[0]["logits"].softmax(-1) + outs[1]["logits"].softmax(-1)) / 2
    assert torch.allclose(net(x)["logits"].softmax(-1), mean, atol=1e-6)


def test_estimator_has_scikit_learn_shape(tmp_path):
    """Hyperparameters in __init__, fit returns self, predict_proba / predict, save_pretrained /
    from_pretrained round trip; bad hyperparameters name the parameter."""
    from predictor.estimator import MemorizationPredictor

    rng = np.random.default_rng(0)
    X, y = rng.integers(0, 40, (60, 8)), rng.integers(0, 3, 60)
    est = MemorizationPredictor(d_model=16, n_layers=1, n_heads=2, epochs=2, seed=3)
    assert est.fit(X, y, score=y / 2) is est
    proba = est.predict_proba(X)
    assert proba.shape == (60, 3) and np.allclose(proba.sum(1), 1) and np.array_equal(est.predict(X), proba.argmax(1))
    est.save_pretrained(tmp_path / "p", metadata={"note": "x"})
    again = MemorizationPredictor.from_pretrained(tmp_path / "p")
    assert again.get_params() == est.get_params() and again.metadata_["note"] == "x"
    assert np.array_equal(again.predict_proba(X), proba)
    with pytest.raises(MemdynError, match="d_model 15 must be a multiple of n_heads 2"):
        MemorizationPredictor(d_model=15, n_heads=2).fit(X, y, score=y / 2)
    with pytest.raises(MemdynError, match="lr must be > 0"):
        MemorizationPredictor(lr=-1).fit(X, y, score=y / 2)
    with pytest.raises(MemdynError, match="not fitted"):
        MemorizationPredictor().predict(X)


def test_saved_fold_predictor_is_evaluated_on_documents_it_never_saw(trained, micro_family, micro_scores):
    """With folds the saved predictor is a fold's (no extra fit): its metrics.json equals a fresh
    evaluation on the samples touching none of the training documents that split.json records."""
    from dynamics.family.spec import load_family
    from predictor.train import evaluate_predictor

    m = json.loads((trained / "metrics.json").read_text())
    assert m["split"]["kind"] == "fold" and 1 <= m["split"]["fold"] <= m["split"]["folds"]
    again = evaluate_predictor(trained, scores=micro_scores, family=load_family(micro_family), baselines=False)
    assert again["predictor"] == m["predictor"]


def test_eval_and_cross_size_transfer(trained, micro_scores):
    r = invoke("eval", "--model-dir", trained, "--scores", micro_scores)
    assert r.exit_code == 0, r.output + repr(r.exception)
    assert "predictor" in r.output and "logistic" in r.output
    r = invoke("eval", "--model-dir", trained, "--scores", micro_scores, "--model", "149k")
    # 149k memorizes most samples: either it evaluates, or it says which class is missing
    assert r.exit_code == 0 or "too few" in str(r.exception), repr(r.exception)
    if r.exit_code == 0:
        assert "trained on 37k" in r.output


def test_predict_cli_and_too_long_text(trained):
    r = invoke("predict", "--model-dir", trained, "--text", "import os")
    assert r.exit_code == 0 and r.output.split("\t")[0] in ("unmemorized", "partial", "memorized")
    r = invoke("predict", "--model-dir", trained, "--text", "x = 1\n" * 40)
    assert isinstance(r.exception, MemdynError) and "at most 16 tokens" in str(r.exception)


def test_other_family_tokenizer_is_refused(trained, micro_scores, tmp_path):
    import shutil

    from predictor.predict import predict_text
    from predictor.train import evaluate_predictor

    other = tmp_path / "other"
    shutil.copytree(trained, other)
    cfg = json.loads((other / "config.json").read_text())
    cfg["vocab_hash"] = "0" * 64
    (other / "config.json").write_text(json.dumps(cfg))
    from dynamics import manifest

    manifest.record_part(other, "config.json", 1)  # a consistent directory of another vocabulary, not a damaged one
    with pytest.raises(MemdynError, match="another corpus or tokenizer"):
        evaluate_predictor(other, scores=micro_scores)
    with pytest.raises(MemdynError, match="not the tokenizer"):
        predict_text(other, "import os")


def test_bad_inputs(micro_family, micro_scores, tmp_path):
    r = invoke("train", "--family", micro_family, "--scores", micro_scores, "--out", tmp_path / "a",
               "--model", "999k", *SMALL)
    assert isinstance(r.exception, MemdynError) and "no model '999k'" in str(r.exception)
    # 16k never reproduces all 16 tokens at context 16: no memorized samples at all
    r = invoke("train", "--family", micro_family, "--scores", micro_scores, "--out", tmp_path / "b",
               "--model", "16k", "--context", "16", "--continuation", "16", *SMALL)
    assert isinstance(r.exception, MemdynError) and "too few" in str(r.exception) and "(0, need" in str(r.exception)
    r = invoke("train", "--family", micro_family, "--scores", micro_scores, "--out", tmp_path / "c", *CELL,
               "--input", "hidden", *SMALL)
    assert isinstance(r.exception, MemdynError) and "--dynamics" in str(r.exception)
    r = invoke("predict", "--model-dir", tmp_path, "--text", "x")
    assert isinstance(r.exception, MemdynError) and "not a memdyn predictor" in str(r.exception)
    r = invoke("train", "--family", micro_family, "--scores", micro_scores, "--out", tmp_path / "d", *CELL,
               "--epochs", "1", "--heads", "3")  # against the default width 64
    assert isinstance(r.exception, MemdynError) and "--d-model 64 must be a multiple of --heads 3" in str(r.exception)


def test_hidden_mode_token_metrics(hidden_trained):
    _, h = hidden_trained
    m = json.loads((h / "metrics.json").read_text())
    assert 0 <= m["predictor"]["tokens"]["token_accuracy"] <= 1
    assert "entropy_continuation" in m["baseline_features"]


def test_hidden_predict_is_deterministic_and_refuses_bad_inputs(hidden_trained, tmp_path):
    import shutil

    _, h = hidden_trained
    text = "def f(x):\n    return x + 1\n\nclass A:\n    pass\n"
    r = invoke("predict", "--model-dir", h, "--text", text)
    assert r.exit_code == 0, r.output + repr(r.exception)
    lines = r.output.splitlines()
    assert lines[0].split("\t")[0] in ("unmemorized", "partial", "memorized") and len(lines) == 1 + 4
    assert all("reproduced=" in line for line in lines[1:])
    assert invoke("predict", "--model-dir", h, "--text", text).output == r.output
    r = invoke("predict", "--model-dir", h, "--text", "x")
    assert isinstance(r.exception, MemdynError) and "at least 16" in str(r.exception)
    moved = tmp_path / "moved"
    shutil.copytree(h, moved)
    cfg = json.loads((moved / "config.json").read_text())
    from dynamics import manifest

    # consistent directories (config part re-recorded) whose family moved or lost a checkpoint
    (moved / "config.json").write_text(json.dumps({**cfg, "family_dir": str(tmp_path / "gone")}))
    manifest.record_part(moved, "config.json", 1)
    r = invoke("predict", "--model-dir", moved, "--text", text)
    assert isinstance(r.exception, MemdynError) and "is gone" in str(r.exception) and "--family" in str(r.exception)
    (moved / "config.json").write_text(json.dumps({**cfg, "revision": "step999999"}))
    manifest.record_part(moved, "config.json", 1)
    r = invoke("predict", "--model-dir", moved, "--text", text)
    assert isinstance(r.exception, MemdynError) and "step999999" in str(r.exception)


def test_hidden_predict_features_match_the_dynamics(hidden_trained, micro_family):
    """The features predict computes for a training context equal those `memdyn dynamics` stored
    (up to their float16 storage), and its greedy continuation is the scorer's (off near-ties)."""
    from dynamics.decoding.store import read_model
    from dynamics.family.load import load_model
    from dynamics.family.spec import load_family
    from predictor.data import context_tokens, hidden_dataset
    from predictor.predict import hidden_inputs
    from predictor.store import load_predictor

    dyn, h = hidden_trained
    config = load_predictor(h)[1]
    family = load_family(micro_family)
    data = hidden_dataset(family, dyn, "37k")
    _, seqs, pos = read_model(dyn, "37k")
    k, c = config["context_len"], config["continuation_len"]
    generated = pos.sort_values(["row", "position"])["generated"].to_numpy().reshape(len(seqs), k + c)[:, k:]
    model = load_model(family, "37k", config["revision"], device="cpu")
    rows = np.flatnonzero(~seqs["near_tie"].to_numpy())[:8]
    for row, context in zip(rows, context_tokens(family, seqs["seq_idx"].to_numpy()[rows], k)):
        x, gen = hidden_inputs(model, context, c, config["layer"], config["hidden_dtype"])
        assert gen.tolist() == generated[row].tolist()
        np.testing.assert_allclose(x, data.inputs[row], rtol=1e-2, atol=1e-3)  # float16-stored hidden states


def test_surprisal_channel_is_the_teacher_forced_nll_of_the_fed_tokens(hidden_trained, micro_family, micro_scores):
    """Over the context the surprisal channel averages to the scorer's context loss (same alignment);
    over the continuation it is the surprisal of the model's own greedy tokens, never the true ones."""
    from dynamics.scoring.table import read_generations
    from predictor.data import HIDDEN_CHANNELS, hidden_dataset
    from dynamics.family.spec import load_family

    dyn, _ = hidden_trained
    data = hidden_dataset(load_family(micro_family), dyn, "37k")
    k = data.context_len
    surprisal = data.inputs[..., -len(HIDDEN_CHANNELS) + HIDDEN_CHANNELS.index("surprisal")]  # [n, T]
    gens = read_generations(micro_scores)
    gens = gens[(gens["model"] == "37k") & (gens["revision"] == data.revision) & (gens["context_len"] == k)]
    expected = gens.set_index("seq_idx").loc[data.rows["seq_idx"], "context_loss"].to_numpy()
    np.testing.assert_allclose(surprisal[:, 1:k].mean(1), expected, rtol=1e-4, atol=1e-5)
    np.testing.assert_allclose(data.rows["max_surprisal_continuation"], surprisal[:, k:].max(1), rtol=1e-6)
    assert (surprisal[:, 0] == 0).all() and (surprisal >= 0).all()


def test_hidden_predictor_reloads_with_its_channel_statistics(hidden_trained, micro_family, tmp_path):
    import shutil

    from dynamics.family.spec import load_family
    from predictor.data import hidden_dataset
    from predictor.estimator import MemorizationPredictor

    dyn, h = hidden_trained
    est = MemorizationPredictor.from_pretrained(h)
    assert est.config_.n_channels == 2 and not torch.allclose(est.net_.members[0].channel_std, torch.ones(2))
    x = hidden_dataset(load_family(micro_family), dyn, "37k").inputs
    a, b = est.predict_outputs(x), MemorizationPredictor.from_pretrained(h).predict_outputs(x)
    assert all(np.array_equal(a[key], b[key]) for key in a)
    broken = tmp_path / "broken"  # weights that do not fit the recorded architecture
    shutil.copytree(h, broken)
    config = json.loads((broken / "config.json").read_text())
    config["predictor"]["hidden_proj"] += 1
    (broken / "config.json").write_text(json.dumps(config))
    with pytest.raises(MemdynError, match="damaged or incompatible predictor"):
        MemorizationPredictor.from_pretrained(broken)


def test_channel_pooling_ignores_padding():
    torch.manual_seed(0)
    cfg = PredictorConfig(input="hidden", n_features=6, n_channels=2, context_len=3, max_len=6, d_model=8,
                          n_layers=1, n_heads=2, hidden_proj=2)
    net = MemPredictor(cfg).eval()
    x = torch.randn(1, 6, 6)
    mask = torch.tensor([[True] * 5 + [False]])
    padded = x.clone()
    padded[0, 5] = 1e3  # a padded position with extreme channels must change nothing
    assert torch.allclose(net(x, mask)["logits"], net(padded, mask)["logits"], atol=1e-5)
