"""Capacity: exact bit accounting, convergence detection, resumption, membership inference."""

import math

import numpy as np
import pandas as pd
import pytest
import torch

from dynamics.capacity import saturation, synthetic
from dynamics.capacity.bits import (
    memorized_bits,
    nll_bits,
    sequence_entropy_bits,
    token_logprobs,
    unintended_bits,
)
from dynamics.capacity.membership import (
    PAPER_VALIDATION_ROWS,
    fit_paper_rows,
    fit_sigmoid,
    loss_threshold_attack,
    sigmoid_f1,
)
from dynamics.errors import MemdynError

V, S = 16, 9
H = sequence_entropy_bits(S - 1, V)  # first token unscored: 8 * 4 = 32 bits


def _ids(n=5, seed=0):
    return torch.randint(0, V, (n, S), generator=torch.Generator().manual_seed(seed))


# --- bit accounting -----------------------------------------------------------------------------


def test_uniform_model_memorizes_zero_bits():
    ids = _ids()
    logits = torch.zeros(ids.shape[0], S, V)  # (B, S, V): uniform next-token distribution
    lp = token_logprobs(logits, ids)  # (B, S-1)
    assert lp.shape == (5, S - 1)
    torch.testing.assert_close(nll_bits(lp), torch.full((5,), H, dtype=torch.float64))
    assert memorized_bits(lp, H).abs().max().item() < 1e-9


def test_certain_model_memorizes_all_bits():
    ids = _ids()
    logits = torch.full((ids.shape[0], S, V), -1e4)
    logits[:, :-1].scatter_(-1, ids[:, 1:].unsqueeze(-1), 1e4)  # position t puts p=1 on token t+1
    lp = token_logprobs(logits, ids)
    torch.testing.assert_close(memorized_bits(lp, H), torch.full((5,), H, dtype=torch.float64))


def test_partial_knowledge_and_clipping():
    ids = _ids(n=2)
    # half the mass on the right token at every position: 1 bit per token -> H - (S-1) bits
    logits = torch.zeros(2, S, V)
    logits[:, :-1].scatter_(-1, ids[:, 1:].unsqueeze(-1), math.log(V - 1))
    lp = token_logprobs(logits, ids)
    torch.testing.assert_close(nll_bits(lp), torch.full((2,), float(S - 1), dtype=torch.float64))
    torch.testing.assert_close(memorized_bits(lp, H), torch.full((2,), H - (S - 1), dtype=torch.float64))
    # a model worse than uniform memorizes 0, never negative bits
    bad = torch.zeros(2, S, V)
    bad[:, :-1].scatter_(-1, ids[:, 1:].unsqueeze(-1), -5.0)
    assert memorized_bits(token_logprobs(bad, ids), H).min().item() == 0.0


def test_unintended_bits():
    lp_ref = torch.full((3, 4), math.log(0.25))  # 2 bits per token under the reference
    lp_t = torch.tensor([[math.log(0.5)] * 4, [math.log(0.25)] * 4, [math.log(0.125)] * 4])
    torch.testing.assert_close(unintended_bits(lp_t, lp_ref), torch.tensor([4.0, 0.0, 0.0], dtype=torch.float64))


def test_param_count_matches_paper_and_model():
    assert synthetic.gpt2_param_count(2048, 64, 1, 32) == 80_352
    assert synthetic.gpt2_param_count(2048, 64, 2, 128) == 667_136
    assert synthetic.gpt2_param_count(2048, 64, 8, 256) == 6_859_264
    cfg = synthetic.SweepConfig(name="t", vocab_size=V, seq_len=S, models=((2, 8),), data_fractions=(1.0,))
    synthetic.make_model(cfg, 2, 8, seed=0)  # asserts the formula against model.parameters()


# --- convergence ---------------------------------------------------------------------------------


def test_plateau_detection():
    steps = np.arange(1, 60)
    saturating = 1000 * (1 - np.exp(-steps / 8))  # flat after ~40 evals
    rising = 10 * steps  # still climbing linearly
    assert saturation.detect_plateau(saturating, window=5, rel_tol=0.005)
    assert not saturation.detect_plateau(rising, window=5, rel_tol=0.005)
    assert not saturation.detect_plateau(saturating[:15], window=5, rel_tol=0.005)
    assert not saturation.detect_plateau(saturating[:3], window=5, rel_tol=0.005)  # too short to tell


# --- resumption ------------------------------------------------------------------------------------

MICRO = synthetic.SweepConfig(
    name="micro", vocab_size=8, seq_len=6, models=((1, 8),), data_fractions=(0.5, 2.0),
    head_dim=4, lr=3e-2, warmup_steps=5, max_steps=40, eval_every=10, plateau_evals=2,
    lr_decays=1, n_nonmembers=20,
)


def test_resumption_recomputes_only_missing(tmp_path, monkeypatch):
    calls = []
    real = synthetic.run_job

    def counting(cfg, job, *a, **k):
        calls.append(job.key)
        return real(cfg, job, *a, **k)

    monkeypatch.setattr(synthetic, "run_job", counting)
    jobs = MICRO.jobs()
    assert len(jobs) == 2
    synthetic.run_sweep(MICRO, tmp_path, seed=3, log=lambda *_: None)
    first = pd.read_parquet(tmp_path / "capacity.parquet")
    assert sorted(calls) == sorted(j.key for j in jobs)
    for f in ("capacity.csv", "memorization.png", "memorization.svg", "summary.json"):
        assert (tmp_path / f).exists()

    (tmp_path / "runs" / f"{jobs[1].key}.json").unlink()
    calls.clear()
    synthetic.run_sweep(MICRO, tmp_path, seed=3, log=lambda *_: None)
    assert calls == [jobs[1].key]
    second = pd.read_parquet(tmp_path / "capacity.parquet")
    # identical apart from wall time: same seed -> same training -> same bits
    pd.testing.assert_frame_equal(first.drop(columns="train_seconds"), second.drop(columns="train_seconds"))
    with pytest.raises(MemdynError, match="other settings"):  # never mix runs of two settings
        synthetic.run_sweep(MICRO, tmp_path, seed=4, log=lambda *_: None)
    assert set(first.columns) >= {"n_layer", "d_model", "params", "n_samples", "dataset_bits",
                                  "memorized_bits", "bits_per_param", "converged", "f1", "f1_median", "auroc"}


def test_sweep_splits_across_two_processes(tmp_path):
    """Under torchrun the jobs split by rank (both ranks train) and the table equals one process's."""
    import os
    import subprocess
    import sys

    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "dynamics.cli", "capacity",
           "synthetic", "--preset", "smoke", "--out", str(tmp_path / "two"), "--threads", "1"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"}, timeout=300)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "capacity[0]" in result.stderr and "capacity[1]" in result.stderr
    synthetic.run_sweep(synthetic.PRESETS["smoke"], tmp_path / "one", seed=0, threads=1, log=lambda *_: None)
    two, one = (pd.read_parquet(tmp_path / d / "capacity.parquet").drop(columns="train_seconds") for d in ("two", "one"))
    pd.testing.assert_frame_equal(two, one)


def test_bad_inputs():
    with pytest.raises(MemdynError, match="fp16"):
        synthetic.resolve_dtype("fp16", torch.device("cpu"))
    assert synthetic.resolve_dtype("bf16", torch.device("cpu")) == torch.bfloat16
    huge = synthetic.SweepConfig(name="huge", vocab_size=50_000, seq_len=2048, models=((48, 8192),),
                                 data_fractions=(1.0,))
    with pytest.raises(MemdynError, match="GiB"):
        synthetic.check_memory(huge, huge.jobs(), torch.float32, torch.device("cpu"))


# --- membership inference ---------------------------------------------------------------------------


def test_attack_separable_and_identical():
    rng = np.random.default_rng(0)
    members, non = rng.uniform(0, 1, 400), rng.uniform(2, 3, 400)
    r = loss_threshold_attack(members, non, seed=0)
    assert r.auroc == 1.0 and r.f1 == 1.0 and r.f1_oracle == 1.0 and r.f1_median == 1.0
    same = rng.normal(size=4000)
    r = loss_threshold_attack(same[:2000], same[2000:], seed=0)
    assert abs(r.auroc - 0.5) < 0.03
    # with no signal the best rule is "everyone is a member": F1 = 2/3 at balanced classes
    assert abs(r.f1 - 2 / 3) < 0.03 and r.f1_oracle >= r.f1 - 1e-9
    assert abs(r.f1_median - 0.5) < 0.03  # the paper's floor


def test_sigmoid_fit_recovers_constants():
    c = (0.95, -4.0, 2.5)
    tpp = np.logspace(-1, 2.5, 25)
    f1 = sigmoid_f1(np.log10(tpp), *c)
    fit = fit_sigmoid(tpp, f1)
    np.testing.assert_allclose([fit.c1, fit.c2, fit.c3], c, rtol=1e-3, atol=1e-3)
    assert fit.rmse < 1e-6
    assert abs(fit.tokens_per_param_at(0.7) - tpp[np.argmin(abs(f1 - 0.7))]) / fit.tokens_per_param_at(0.7) < 0.2


def test_paper_rows_fit():
    fit = fit_paper_rows()
    assert fit.rmse < 0.02 and fit.c2 < 0
    for params, n, f1 in PAPER_VALIDATION_ROWS:
        assert abs(fit.predict([n * 64 / params])[0] - f1) < 0.03
