"""`memdyn membership` on the micro family: attack values, metrics, sampling, resumption, bad input."""

import json
import shutil
import zlib

import numpy as np
import pandas as pd
import pytest
import torch

from dynamics.bootstrap import draw_counts, weighted_auroc
from dynamics.capacity.attacks import ATTACKS, attack_metrics, score_samples
from dynamics.capacity.mia_plan import plan_membership
from dynamics.corpus import megatron
from dynamics.corpus.megatron import IndexedDataset
from dynamics.family.data import TrainingData
from dynamics.family.load import load_model, load_tokenizer
from dynamics.family.spec import load_family
from tests.conftest import run_cli

MODELS = "16k,37k"
REVISIONS = "step16,step200"


def _ref_path(micro_family):
    return micro_family / "models" / "149k" / "step200"


@pytest.fixture(scope="module")
def membership_run(micro_family, tmp_path_factory):
    out = tmp_path_factory.mktemp("membership") / "mia"
    args = ["membership", "--family", micro_family, "--members", "train", "--nonmembers", "heldout", "--out", out,
            "--models", MODELS, "--revisions", REVISIONS, "--reference", _ref_path(micro_family), "--chunk-size", "24",
            "--batch-size", "16", "--seed", "3", "--device", "cpu"]
    code, stdout, err = run_cli(*args)
    assert code == 0, err
    return out, args


def _plain_attacks(model, tokens: np.ndarray, texts: list[str]) -> dict:
    """The attacks from the whole [B, T, V] logits, written out directly from their definitions."""
    x = torch.from_numpy(tokens.astype(np.int64))
    with torch.no_grad():
        logp_all = torch.log_softmax(model(x).logits.double(), -1)[:, :-1]  # [B, T-1, V]
    logp = logp_all.gather(-1, x[:, 1:, None]).squeeze(-1)
    p = logp_all.exp()
    mu = (p * logp_all).sum(-1)
    sigma = ((p * logp_all**2).sum(-1) - mu**2).clamp(min=0).sqrt()
    n = logp.shape[1]
    loss = (-logp.mean(1)).numpy()
    out = {"loss": loss, "zlib": loss / np.array([len(zlib.compress(t.encode())) for t in texts])}
    for k in (10, 20):
        out[f"min_k_{k}"] = torch.sort(logp, 1).values[:, : max(1, int(n * k / 100))].mean(1).numpy()
    z = (logp - mu) / sigma
    out["min_k_pp_20"] = torch.sort(z, 1).values[:, : max(1, int(n * 0.2))].mean(1).numpy()
    return out


def test_attack_values_equal_a_plain_computation(micro_family, membership_run):
    out, _ = membership_run
    family = load_family(micro_family)
    table = pd.read_parquet(out / "attacks.parquet")
    tok = load_tokenizer(family)
    for split, prefix in (("member", family.data.prefix), ("nonmember", family.data.heldout_prefix)):
        rows = table[(table.model == "37k") & (table.revision == "step16") & (table.split == split)]
        ds = IndexedDataset(prefix)
        tokens = np.asarray(ds.batch(0, len(ds))[rows.sample_idx.to_numpy()])
        model = load_model(family, "37k", "step16", device="cpu")
        plain = _plain_attacks(model, tokens, tok.batch_decode(tokens.tolist()))
        for attack, values in plain.items():
            np.testing.assert_allclose(rows[attack].to_numpy(), values, rtol=2e-4, atol=2e-5, err_msg=attack)
        ref = load_model(load_family(_ref_path(micro_family)), "step200", device="cpu")
        ref_loss = _plain_attacks(ref, tokens, tok.batch_decode(tokens.tolist()))["loss"]
        np.testing.assert_allclose(rows.reference_loss.to_numpy(), ref_loss, rtol=2e-4)
        np.testing.assert_allclose(rows.reference.to_numpy(), rows.loss.to_numpy() - ref_loss, atol=1e-4)


def test_metrics_equal_sklearn(micro_family, membership_run):
    from sklearn.metrics import roc_auc_score, roc_curve

    out, _ = membership_run
    table, metrics = pd.read_parquet(out / "attacks.parquet"), pd.read_parquet(out / "metrics.parquet")
    assert set(metrics.attack) == set(ATTACKS)
    assert len(metrics) == 2 * 2 * len(ATTACKS)  # models x revisions x attacks
    own = metrics[metrics.attack != "reference"]
    assert own.auroc.between(0.5, 1).all() and (own.auroc < 1).any()  # members are recognised, not perfectly
    # the "reference" here is the family's largest model, which trained on the members too and knows
    # them better than the target: the ratio points the wrong way
    assert (metrics[metrics.attack == "reference"].auroc < 0.5).all()
    for _, row in metrics.iterrows():
        g = table[(table.model == row.model) & (table.revision == row.revision)]
        y = (g.split == "member").to_numpy()
        s = ATTACKS[row.attack] * g[row.attack].to_numpy()
        assert row.auroc == roc_auc_score(y, s)
        assert row.auroc_lo <= row.auroc <= row.auroc_hi
        fpr, tpr, _ = roc_curve(y, s)
        assert row["tpr_at_0.01_fpr"] == tpr[fpr <= 0.01].max()
        # under 1000 non-members, 0.1% FPR allows no false positive: the share of members above them all
        assert (~y).sum() < 1000 and row["tpr_at_0.001_fpr"] == np.mean(s[y] > s[~y].max())
        seen = np.mean(g.sample_idx[y] < row.step * load_family(micro_family).data.batch_size)
        assert row.members_seen == seen


def test_resampled_auroc_equals_sklearn_on_every_resample_with_ties():
    from sklearn.metrics import roc_auc_score

    rng = np.random.default_rng(0)
    m, n = rng.integers(0, 5, 40).astype(float), rng.integers(0, 4, 30).astype(float)
    im, jn = rng.integers(0, 40, (25, 40)), rng.integers(0, 30, (25, 30))
    expected = [roc_auc_score(np.r_[np.ones(40), np.zeros(30)], np.r_[m[a], n[b]]) for a, b in zip(im, jn)]
    assert weighted_auroc(m, n, draw_counts(im, 40), draw_counts(jn, 30)) == pytest.approx(expected, abs=1e-12)
    metrics, _ = attack_metrics(m, n, seed=1)
    assert metrics["auroc_lo"] < metrics["auroc"] < metrics["auroc_hi"]
    assert np.isnan(metrics["auroc_doc_lo"]) and np.isnan(metrics["auroc_doc_hi"])  # no documents given
    weights = rng.integers(0, 4, (6, 40)), rng.integers(1, 4, (6, 30))
    expected = [roc_auc_score(np.r_[np.ones(40), np.zeros(30)], np.r_[m, n], sample_weight=np.r_[a, b]) for a, b in zip(*weights)]
    assert weighted_auroc(m, n, *weights) == pytest.approx(expected, abs=1e-12)


def test_document_interval_resamples_documents():
    """Ten copies of each sample in one document each: resampling samples treats them as 10 times the
    evidence they are; resampling documents gives the interval of the distinct samples."""
    rng = np.random.default_rng(0)
    m, n = rng.normal(0.3, 1, 30), rng.normal(0, 1, 30)
    groups = (np.arange(30), np.arange(30))
    distinct, _ = attack_metrics(m, n, seed=1, groups=groups)
    copied, _ = attack_metrics(np.repeat(m, 10), np.repeat(n, 10), seed=1, groups=tuple(np.repeat(g, 10) for g in groups))
    assert copied["auroc"] == pytest.approx(distinct["auroc"])
    assert copied["auroc_hi"] - copied["auroc_lo"] < 0.5 * (distinct["auroc_hi"] - distinct["auroc_lo"])
    assert copied["auroc_doc_hi"] - copied["auroc_doc_lo"] == pytest.approx(distinct["auroc_doc_hi"] - distinct["auroc_doc_lo"], rel=0.25)
    assert metrics_equal(attack_metrics(m, n, seed=1, groups=groups)[0], distinct)  # seeded


def metrics_equal(a: dict, b: dict) -> bool:
    return a.keys() == b.keys() and all(x == y or (np.isnan(x) and np.isnan(y)) for x, y in zip(a.values(), b.values()))


def test_metrics_by_duplication(micro_family, membership_run):
    """Members seen once and members touching a duplicated document, each against the non-members of
    its kind (held-out documents are duplicated by the same rule), at each model's last checkpoint:
    the AUROC equals scikit-learn's on that subset."""
    from sklearn.metrics import roc_auc_score

    out, _ = membership_run
    table, strata = pd.read_parquet(out / "attacks.parquet"), pd.read_parquet(out / "metrics_by_duplication.parquet")
    data = load_family(micro_family).data
    copies = {split: TrainingData(prefix).samples["max_doc_copies"]
              for split, prefix in (("member", data.prefix), ("nonmember", data.heldout_prefix))}
    assert set(strata.stratum) == {"seen once", "duplicated"} and strata.matched.all()
    for row in strata.itertuples():
        g = table[(table.model == row.model) & (table.revision == row.revision)]
        assert row.step == table[table.model == row.model].step.max()
        member = (g.split == "member").to_numpy()
        duplicated = np.where(member, g.sample_idx.map(copies["member"]), g.sample_idx.map(copies["nonmember"])) > 1
        keep = duplicated if row.stratum == "duplicated" else ~duplicated
        assert row.n_members == (member & keep).sum() and row.n_nonmembers == (~member & keep).sum()
        assert row.auroc == roc_auc_score(member[keep], ATTACKS[row.attack] * g[row.attack].to_numpy()[keep])
    last = strata.groupby(["model", "attack"]).n_members.sum()
    assert (last == (table.split == "member").sum() // table.groupby(["model", "revision"]).ngroups).all()


def test_metrics_count_the_documents_of_each_side(micro_family, membership_run):
    out, _ = membership_run
    table, metrics = pd.read_parquet(out / "attacks.parquet"), pd.read_parquet(out / "metrics.parquet")
    data = load_family(micro_family).data
    doc_ids = {split: TrainingData(prefix).samples["doc_ids"]
               for split, prefix in (("member", data.prefix), ("nonmember", data.heldout_prefix))}
    for row in metrics.itertuples():
        g = table[(table.model == row.model) & (table.revision == row.revision)]
        for split, counted in (("member", row.member_documents), ("nonmember", row.nonmember_documents)):
            docs = {d for ids in doc_ids[split].loc[g.sample_idx[g.split == split]] for d in ids}
            assert counted == len(docs) > 1
        assert np.isfinite(row.auroc_doc_lo) and row.auroc_doc_lo <= row.auroc_doc_hi  # documents resampled


def test_balanced_seeded_sampling(micro_family, tmp_path):
    family = load_family(micro_family)
    plan = lambda seed, samples=None: plan_membership(family, tmp_path / "o", "train", "heldout", samples=samples, seed=seed)  # noqa: E731
    a, b, c = plan(1, 20), plan(1, 20), plan(2, 20)
    assert a.settings.n == 20 and all(len(a.indices[s]) == 20 for s in ("member", "nonmember"))
    assert all(np.array_equal(a.indices[s], b.indices[s]) for s in a.indices)
    assert not np.array_equal(a.indices["member"], c.indices["member"])
    full = plan(0)  # the smaller pool (held out, less what the training data also holds) sets the count
    train, held = (IndexedDataset(p) for p in (family.data.prefix, family.data.heldout_prefix))
    assert full.settings.n == len(held) - full.settings.dropped_nonmembers < len(train)
    trained = {tuple(r) for r in np.asarray(train.batch(0, len(train))).tolist()}
    drawn = np.asarray(held.batch(0, len(held)))[full.indices["nonmember"]]
    assert not any(tuple(r) in trained for r in drawn.tolist())
    # canary copies sit only in training samples: members holding one would be told apart as text
    canaries = TrainingData(family.data.prefix).canary_samples
    assert full.settings.dropped_members == len(canaries) > 0
    assert not np.isin(full.indices["member"], canaries).any()
    assert not (tmp_path / "o").exists()  # planning writes nothing


def test_results_of_other_settings_are_refused_or_replaced(micro_family, tmp_path):
    from dynamics.errors import MemdynError
    from dynamics.files import settings_record

    family, out = load_family(micro_family), tmp_path / "mia"
    current = plan_membership(family, tmp_path / "unused", "train", "heldout", samples=8).settings
    out.mkdir()
    older = {k: v for k, v in json.loads(json.dumps(settings_record(current.__dict__))).items() if k != "dropped_members"}
    (out / "_settings.json").write_text(json.dumps(older))  # results of a memdyn before dropped_members
    with pytest.raises(MemdynError, match="dropped_members"):
        plan_membership(family, out, "train", "heldout", samples=8)
    plan_membership(family, out, "train", "heldout", samples=8, replace_stale=True)  # `memdyn run` recomputes them
    assert not out.exists()


def test_rerun_after_a_kill_gives_the_same_tables(membership_run, tmp_path):
    out, args = membership_run
    copy = tmp_path / "mia"
    shutil.copytree(out, copy)
    parts = sorted((copy / "_parts").glob("*.parquet"))
    for p in parts[::3]:  # as if killed before these jobs were written
        p.unlink()
    for name in ("attacks.parquet", "metrics.parquet", "metrics.csv"):
        (copy / name).unlink()
    code, _, err = run_cli(*[copy if a == out else a for a in args])
    assert code == 0, err
    for name in ("attacks.parquet", "metrics.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(copy / name), pd.read_parquet(out / name))


def test_rerun_recomputes_a_truncated_part(membership_run, tmp_path):
    """A damaged part is recomputed rather than read (it was a pyarrow stack trace); a part whose
    record is missing (killed between the two writes) is adopted when it reads whole."""
    out, args = membership_run
    copy = tmp_path / "mia"
    shutil.copytree(out, copy)
    parts = sorted((copy / "_parts").glob("*.parquet"))
    parts[0].write_bytes(parts[0].read_bytes()[:500])
    (copy / "_manifest" / "parts" / "_parts" / f"{parts[1].name}.json").unlink()
    code, _, err = run_cli(*[copy if a == out else a for a in args])
    assert code == 0, err
    for name in ("attacks.parquet", "metrics.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(copy / name), pd.read_parquet(out / name))


def _write(prefix, rows):
    megatron.write(prefix, [np.asarray(r) for r in rows], np.uint16)
    return str(prefix)


def _bad(micro_family, tmp_path, *extra, members="train", nonmembers="heldout"):
    out = tmp_path / "never"
    code, _, err = run_cli("membership", "--family", micro_family, "--members", members, "--nonmembers", nonmembers,
                           "--out", out, "--device", "cpu", *extra)
    assert code == 2 and err.count("\n") == 1 and err.startswith("memdyn: error:"), err
    assert not out.exists()
    return err


def test_bad_inputs(micro_family, tmp_path):
    family = load_family(micro_family)
    train = IndexedDataset(family.data.prefix)
    rows = np.asarray(train.batch(0, len(train)))
    other_vocab = _write(tmp_path / "vocab", np.full((8, rows.shape[1]), 5000))
    assert "another tokenizer" in _bad(micro_family, tmp_path, nonmembers=other_vocab)
    overlap = _write(tmp_path / "overlap", np.r_[rows[:3], rows[:3] * 0 + 7])
    assert "also occur" in _bad(micro_family, tmp_path, nonmembers=overlap)
    empty = _write(tmp_path / "empty", [])
    assert "holds no samples" in _bad(micro_family, tmp_path, nonmembers=empty)
    assert "--samples" in _bad(micro_family, tmp_path, "--samples", "0")
    assert "--nonmembers" in _bad(micro_family, tmp_path, nonmembers=str(tmp_path / "missing"))
    busy = tmp_path / "busy"
    busy.mkdir()
    (busy / "notes.txt").write_text("mine")
    code, _, err = run_cli("membership", "--family", micro_family, "--members", "train", "--nonmembers", "heldout",
                           "--out", busy, "--device", "cpu")
    assert code == 2 and "not empty" in err and sorted(p.name for p in busy.iterdir()) == ["notes.txt"]


def test_reference_with_another_tokenizer(micro_family, tmp_path):
    from transformers import AutoTokenizer

    from dynamics.corpus.tokenizer import train_tokenizer

    train_tokenizer(["another corpus entirely " * 50], 300, tmp_path / "tok")
    other = tmp_path / "other_tok"
    shutil.copytree(_ref_path(micro_family), other)
    AutoTokenizer.from_pretrained(tmp_path / "tok").save_pretrained(other)
    assert "another tokenizer" in _bad(micro_family, tmp_path, "--reference", other)
    bigger = tmp_path / "other_vocab"
    shutil.copytree(_ref_path(micro_family), bigger)
    config = json.loads((bigger / "config.json").read_text())
    (bigger / "config.json").write_text(json.dumps(config | {"vocab_size": config["vocab_size"] + 100}))
    assert "vocabulary of" in _bad(micro_family, tmp_path, "--reference", bigger)


def test_score_samples_without_texts_gives_nan_zlib(micro_family):
    family = load_family(micro_family)
    train = IndexedDataset(family.data.prefix)
    s = score_samples(load_model(family, "16k", device="cpu"), np.asarray(train.batch(0, 4)), 2, torch.device("cpu"))
    assert np.isnan(s["zlib"]).all() and np.isfinite(s["loss"]).all()


def test_capacity_bits_come_from_the_attack_scores(micro_family):
    """The capacity stage's per-sample bits (text.py) are the loss attack's NLL, and still equal the
    plain full-logits NLL in bits it computed before."""
    from dynamics.capacity.bits import model_token_logprobs, nll_bits
    from dynamics.capacity.text import _sample_bits

    family = load_family(micro_family)
    train = IndexedDataset(family.data.prefix)
    samples = np.asarray(train.batch(0, 10))
    model = load_model(family, "37k", device="cpu")
    plain = nll_bits(model_token_logprobs(model, torch.from_numpy(samples.astype(np.int64)), 4)).numpy()
    np.testing.assert_allclose(_sample_bits(model, samples, 4, torch.device("cpu")), plain, rtol=1e-5)


def test_report_section_states_the_numbers(membership_run, tmp_path):
    from dynamics.report.document import Figure, Table
    from dynamics.workdir import Workdir
    from dynamics.report.membership import membership_section

    out, _ = membership_run
    shutil.copytree(out, tmp_path / "membership")
    metrics = pd.read_parquet(out / "metrics.parquet")
    section = membership_section(Workdir(tmp_path), "37k")
    figures = [b for b in section.blocks if isinstance(b, Figure)]
    assert [f.name for f in figures] == ["membership_roc", "membership_steps"]
    best = metrics[(metrics.model == "37k") & (metrics.step == 200)].sort_values("auroc").iloc[-1]
    assert f"AUROC {best.auroc:.3f}" in figures[0].caption and best.attack in figures[0].caption
    table = next(b for b in section.blocks if isinstance(b, Table)).frame
    assert list(table.model.unique()) == ["37k"] and len(table) == len(ATTACKS)
    missing = membership_section(Workdir(tmp_path / "elsewhere"))
    assert "has not run" in missing.blocks[0].text


def test_membership_stage_of_memdyn_run(micro_workdir):
    """`memdyn run` attacks every size at every checkpoint, with the family's reference model."""
    family = load_family(micro_workdir / "family")
    metrics = pd.read_parquet(micro_workdir / "membership" / "metrics.parquet")
    assert set(metrics.model) == set(family.size_names) and set(metrics.attack) == set(ATTACKS)
    assert metrics.groupby("model").revision.nunique().eq(len(family.sizes[0].revisions)).all()
    final = metrics[metrics.step == metrics.step.max()]
    assert (final[final.attack == "loss"].auroc > 0.5).all()
    assert (micro_workdir / "membership" / f"roc-{family.size_names[-1]}.png").is_file()


def test_explicit_model_and_prefixes(micro_family, tmp_path):
    """As on real Pythia: a model given by path (with its tokenizer), members and non-members given as
    Megatron prefixes; the same numbers as through the family."""
    family = load_family(micro_family)
    model_dir = tmp_path / "model"
    shutil.copytree(micro_family / "models" / "16k" / "step200", model_dir)
    load_tokenizer(family).save_pretrained(model_dir)
    train, held = (IndexedDataset(p) for p in (family.data.prefix, family.data.heldout_prefix))
    trained = {tuple(r) for r in np.asarray(train.batch(0, len(train))).tolist()}
    clean = [r for r in np.asarray(held.batch(0, len(held))) if tuple(r.tolist()) not in trained]
    nonmembers = _write(tmp_path / "nonmembers", clean)
    out = tmp_path / "mia"
    code, _, err = run_cli("membership", "--family", model_dir, "--members", family.data.prefix, "--nonmembers", nonmembers,
                           "--out", out, "--samples", "40", "--seed", "5", "--device", "cpu")
    assert code == 0, err
    t = pd.read_parquet(out / "attacks.parquet")
    assert t.groupby("split").size().to_dict() == {"member": 40, "nonmember": 40} and t.revision.nunique() == 1
    rows = t[t.split == "member"]
    tokens = np.asarray(train.batch(0, len(train))[rows.sample_idx.to_numpy()])
    plain = _plain_attacks(load_model(family, "16k", device="cpu"), tokens, load_tokenizer(family).batch_decode(tokens.tolist()))
    np.testing.assert_allclose(rows.loss.to_numpy(), plain["loss"], rtol=2e-4)
    assert "reference" not in t  # no reference model given, none in an explicit family


def test_two_processes_give_the_same_tables(membership_run, tmp_path):
    """torchrun with two CPU processes: each takes every other job, the main one writes the tables."""
    import os
    import subprocess
    import sys

    out, args = membership_run
    other = tmp_path / "mia"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node", "2", "-m", "dynamics.cli",
           *[str(other if a == out else a) for a in args[1:]]]
    cmd.insert(cmd.index("dynamics.cli") + 1, "membership")
    result = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "membership [0]" in result.stderr and "membership [1]" in result.stderr
    for name in ("attacks.parquet", "metrics.parquet"):
        pd.testing.assert_frame_equal(pd.read_parquet(other / name), pd.read_parquet(out / name))


def test_missing_family_reference_is_refused_before_work(micro_family, tmp_path):
    family_dir = tmp_path / "family"
    shutil.copytree(micro_family, family_dir)
    manifest = json.loads((family_dir / "family.json").read_text())
    names = [s["name"] for s in manifest["sizes"]]
    manifest["references"] = {"sizes": {n: f"references/{n}/step999" for n in names}}
    (family_dir / "family.json").write_text(json.dumps(manifest))
    assert "missing" in _bad(family_dir, tmp_path)
