import os
import signal
import subprocess
import sys
import time

import numpy as np
import pandas as pd
import pytest
import torch

from dynamics.corpus.megatron import IndexedDataset
from dynamics.errors import MemdynError
from dynamics.family.load import load_model
from dynamics.family.spec import load_family
from dynamics.scoring.table import read_generations, read_scores
from dynamics.scoring import kernel as scoring
from dynamics.scoring.kernel import NEAR_TIE, reference_scores, score_batch
from dynamics.scoring.grid import score_bins
from dynamics.scoring.transitions import summarize, transition_matrix
from tests.conftest import MICRO_CONTEXTS, MICRO_CONTINUATIONS, run_cli


def _memdyn(*args, **kw):
    return subprocess.Popen([sys.executable, "-m", "dynamics.cli", *map(str, args)], stdout=subprocess.PIPE,
                            stderr=subprocess.PIPE, env=os.environ | {"OMP_NUM_THREADS": "1"}, **kw)


def test_table_contract(micro_family, micro_scores):
    table = pd.read_parquet(micro_scores)
    family = load_family(micro_family)
    n = len(IndexedDataset(family.data.prefix))
    assert set(table.model) == set(family.size_names)
    assert len(table) == len(family.sizes) * n * 2 * 3
    assert not table.duplicated(["model", "revision", "seq_idx", "context_len", "continuation_len"]).any()
    assert np.allclose(table.score, table.matches / table.continuation_len)
    assert (table.prefix_len <= table.matches).all()
    gens = read_generations(micro_scores)
    assert len(gens) == len(family.sizes) * n * 2 and gens.generated.map(len).eq(16).all()
    # shorter continuations are prefixes of the longest generation
    data = IndexedDataset(family.data.prefix).batch(0, n)
    g = gens.set_index(["model", "seq_idx", "context_len"])
    for row in table.sample(50, random_state=0).itertuples():
        generated = g.loc[(row.model, row.seq_idx, row.context_len), "generated"][: row.continuation_len]
        true = data[row.seq_idx, row.context_len : row.context_len + row.continuation_len]
        assert (generated == true).sum() == row.matches


def test_scores_agree_with_plain_generate(micro_family, micro_scores):
    """Every cell equals transformers `generate` (greedy, fp32, one call per cell over all samples),
    except near-ties, which are counted and reported."""
    family = load_family(micro_family)
    ds = IndexedDataset(family.data.prefix)
    data = ds.batch(0, len(ds))
    table = read_scores(micro_scores).set_index(["model", "context_len", "continuation_len", "seq_idx"]).sort_index()
    cells = disagree = near_ties = 0
    for size in family.sizes:
        model = load_model(family, size, device="cpu")
        for k in map(int, MICRO_CONTEXTS.split(",")):
            for c in map(int, MICRO_CONTINUATIONS.split(",")):
                generated, gap = reference_scores(model, data, k, c)
                matches = (generated == data[:, k : k + c]).sum(1)
                rows = table.loc[(size.name, k, c)]
                assert rows.index.tolist() == list(range(len(data)))  # one row per sample, in order
                wrong = matches != rows.matches.to_numpy()
                excused = rows.near_tie.to_numpy() | (gap < NEAR_TIE)
                cells += len(data)
                near_ties += int((wrong & excused).sum())
                disagree += int((wrong & ~excused).sum())
    print(f"{cells} cells compared, {near_ties} near-ties, {disagree} disagreements")
    assert disagree == 0 and cells == len(family.sizes) * len(data) * 6


def test_losses_equal_a_plain_teacher_forced_pass(micro_family, micro_scores):
    """The stored mean NLL of the true continuation and of the context equal a plain full-logits
    cross-entropy over the same tokens."""
    family = load_family(micro_family)
    data = IndexedDataset(family.data.prefix)
    gens = read_generations(micro_scores).set_index(["model", "seq_idx", "context_len"])
    C = max(map(int, MICRO_CONTINUATIONS.split(",")))
    for size in family.sizes:
        model = load_model(family, size, device="cpu")
        for seq in range(0, len(data), 7):
            for k in map(int, MICRO_CONTEXTS.split(",")):
                x = torch.as_tensor(np.asarray(data[seq][: k + C], dtype=np.int64))[None]
                with torch.no_grad():
                    nll = torch.nn.functional.cross_entropy(model(input_ids=x).logits[0, :-1], x[0, 1:], reduction="none")
                row = gens.loc[(size.name, seq, k)]
                assert row.loss == pytest.approx(nll[k - 1 :].mean().item(), rel=1e-5)
                assert row.context_loss == pytest.approx(nll[: k - 1].mean().item(), rel=1e-5)


def test_models_that_transform_their_logits_take_the_full_logits_path(micro_family, monkeypatch):
    """A model whose logits are not its output embedding of the last hidden state (scaled or
    capped logits) is scored from its own full logits, with the same results."""
    family = load_family(micro_family)
    model = load_model(family, family.sizes[-1], device="cpu")
    x = torch.as_tensor(np.asarray(IndexedDataset(family.data.prefix).batch(0, 6), dtype=np.int64))
    contexts, C = list(map(int, MICRO_CONTEXTS.split(","))), max(map(int, MICRO_CONTINUATIONS.split(",")))
    assert scoring._has_plain_head(model)
    split = score_batch(model, x, contexts, C)
    monkeypatch.setattr(scoring, "_has_plain_head", lambda model: False)
    full = score_batch(model, x, contexts, C)
    assert np.array_equal(split.generated, full.generated)
    assert np.allclose(split.loss, full.loss, rtol=1e-6) and np.allclose(split.context_loss, full.context_loss, rtol=1e-6)


def test_memorization_is_found(micro_family, micro_scores):
    """The micro family memorizes: the largest model far more than the smallest."""
    s = summarize(read_scores(micro_scores))
    s = s[(s.context_len == 16) & (s.continuation_len == 16)].set_index("model")  # the micro grid's main cell
    sizes = load_family(micro_family).size_names  # smallest first
    assert s.loc[sizes[-1], "memorized"] > 10 * max(1, s.loc[sizes[0], "memorized"])


def test_kill_and_resume_gives_identical_table(micro_family, micro_scores, tmp_path):
    args = ["score", "--family", micro_family, "--out", tmp_path / "s", "--contexts", MICRO_CONTEXTS,
            "--continuations", MICRO_CONTINUATIONS, "--chunk-size", "32", "--device", "cpu"]
    proc = _memdyn(*args)
    deadline = time.time() + 120
    while time.time() < deadline and len(list((tmp_path / "s").glob("part-*.parquet"))) < 2:
        time.sleep(0.05)
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    done = sorted((tmp_path / "s").glob("part-*.parquet"))
    assert 2 <= len(done)
    stamps = {p: p.stat().st_mtime_ns for p in done}
    code, _, err = run_cli(*args)
    assert code == 0, err
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())  # finished chunks were not redone
    keys = ["model", "revision", "seq_idx", "context_len", "continuation_len"]
    a = read_scores(tmp_path / "s").sort_values(keys).reset_index(drop=True)
    b = read_scores(micro_scores).sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


def test_moved_work_directory_resumes(micro_family, tmp_path):
    """Scores record the data's content, not its path: a family and scores moved elsewhere resume
    without redoing finished chunks."""
    import shutil

    shutil.copytree(micro_family, tmp_path / "a" / "family")
    args = ["--contexts", "8", "--continuations", "4", "--samples", "0:40", "--chunk-size", "20", "--device", "cpu"]
    largest = load_family(micro_family).sizes[-1].name
    code, _, err = run_cli("score", "--family", tmp_path / "a" / "family", "--out", tmp_path / "a" / "s",
                           "--models", largest, *args)
    assert code == 0, err
    (tmp_path / "a").rename(tmp_path / "b")
    done = {p: p.stat().st_mtime_ns for p in (tmp_path / "b" / "s").glob("part-*.parquet")}
    code, _, err = run_cli("score", "--family", tmp_path / "b" / "family", "--out", tmp_path / "b" / "s",
                           "--models", largest, *args)
    assert code == 0, err
    assert len(done) == 2 and all(p.stat().st_mtime_ns == t for p, t in done.items())


def test_scores_of_another_format_are_refused(micro_family, tmp_path):
    """A scores directory written by another format version (or before versions) is refused, not mixed."""
    import json

    args = ["score", "--family", micro_family, "--out", tmp_path / "s", "--models", load_family(micro_family).sizes[0].name,
            "--contexts", "8", "--continuations", "4", "--samples", "0:40", "--chunk-size", "20", "--device", "cpu"]
    code, _, err = run_cli(*args)
    assert code == 0, err
    settings = tmp_path / "s" / "_settings.json"
    recorded = json.loads(settings.read_text())
    assert recorded["format"] == 1
    settings.write_text(json.dumps({k: v for k, v in recorded.items() if k != "format"}))
    code, _, err = run_cli(*args)
    assert code == 2 and "format none" in err and err.count("\n") == 1, err


@pytest.mark.parametrize("launcher", ["accelerate", "torchrun"])
def test_two_processes_give_the_same_table(micro_family, micro_scores, tmp_path, launcher):
    """Two CPU processes split the chunks and write the table of one process. On a CPU,
    `accelerate launch --cpu --num_processes 2` starts ONE process unless MPI is set up; its
    torchrun-based launcher (--multi_gpu) and torchrun itself start two, which gloo connects."""
    largest = load_family(micro_family).sizes[-1].name
    launch = {
        "accelerate": ["-m", "accelerate.commands.launch", "--multi_gpu", "--num_processes", "2", "--num_machines", "1",
                       "--mixed_precision", "no", "--dynamo_backend", "no", "-m"],
        "torchrun": ["-m", "torch.distributed.run", "--nproc_per_node", "2", "-m"],
    }[launcher]
    cmd = [sys.executable, *launch, "dynamics.cli", "score", "--family", str(micro_family), "--out", str(tmp_path / "s"),
           "--models", largest, "--contexts", MICRO_CONTEXTS, "--continuations", MICRO_CONTINUATIONS,
           "--chunk-size", "64", "--device", "cpu"]
    result = subprocess.run(cmd, capture_output=True, text=True, env=os.environ | {"OMP_NUM_THREADS": "1"}, timeout=600)
    assert result.returncode == 0, result.stderr[-3000:]
    assert "score [0]" in result.stderr and "score [1]" in result.stderr  # both ranks took chunks
    keys = ["model", "revision", "seq_idx", "context_len", "continuation_len"]
    a = read_scores(tmp_path / "s").sort_values(keys).reset_index(drop=True)
    b = read_scores(micro_scores)
    b = b[b.model == largest].sort_values(keys).reset_index(drop=True)
    pd.testing.assert_frame_equal(a, b)


def test_checkpoints_and_first_memorized(micro_family, tmp_path):
    largest = load_family(micro_family).sizes[-1].name
    code, _, err = run_cli("score", "--family", micro_family, "--out", tmp_path / "s", "--models", largest,
                           "--revisions", "step16,step100,step200", "--contexts", "16", "--continuations", "4",
                           "--samples", "0:120", "--device", "cpu")
    assert code == 0, err
    table = read_scores(tmp_path / "s")
    assert sorted(table.step.unique()) == [16, 100, 200]
    first = pd.read_parquet(tmp_path / "s" / "_first_memorized.parquet")
    assert len(first) == len(table.seq_idx.unique()) and (first.steps_scored == 3).all()
    mem = table[table.score == 1].groupby("seq_idx").step.min()
    got = first.set_index("seq_idx").first_memorized_step.dropna()
    pd.testing.assert_series_equal(got.sort_index(), mem.sort_index().astype(float), check_names=False)
    code, out, _ = run_cli("transitions", "--scores", tmp_path / "s", "--from", f"{largest}@step16", "--to", f"{largest}@step200")
    assert code == 0 and ">0.8" in out


def test_transitions_and_bins():
    assert list(score_bins([0, 0.2, 0.21, 0.4, 0.8, 0.81, 1.0])) == [0, 0, 1, 1, 3, 4, 4]
    table = pd.DataFrame({
        "model": ["a"] * 4 + ["b"] * 4, "revision": "step1", "step": 1, "seq_idx": [0, 1, 2, 3] * 2,
        "context_len": 32, "continuation_len": 16, "score": [0.0, 0.0, 1.0, 1.0, 0.0, 1.0, 1.0, 1.0],
        "matches": 0, "prefix_len": 0,
    })
    m = transition_matrix(table, "a", "b")
    assert m.loc["<=0.2", "<=0.2"] == 0.5 and m.loc["<=0.2", ">0.8"] == 0.5 and m.loc[">0.8", ">0.8"] == 1.0
    assert list(m["n"]) == [2, 0, 0, 0, 2]
    s = summarize(table).set_index("model")
    assert s.loc["b", "memorized"] == 3 and s.loc["a", "unmemorized_share"] == 0.5
    with pytest.raises(MemdynError, match="no scores for model 'c'"):
        transition_matrix(table, "a", "c")


@pytest.mark.parametrize("extra, message", [
    (["--contexts", "30", "--continuations", "4"], "longer than the samples"),
    (["--models", "huge"], "has no model 'huge'"),
    (["--revisions", "step999"], "no revision 'step999'"),
    (["--samples", "50:50"], "selects no samples"),
    (["--samples", "1-5"], "START:END"),
    (["--contexts", "a,b"], "--contexts must be"),
])
def test_bad_score_inputs(micro_family, tmp_path, extra, message):
    base = ["score", "--family", micro_family, "--out", tmp_path / "s", "--device", "cpu"]
    defaults = {"--contexts": "8", "--continuations": "4"}
    for flag, value in defaults.items():
        if flag not in extra:
            base += [flag, value]
    code, _, err = run_cli(*base, *extra)
    assert code == 2 and message in err and len(err.strip().splitlines()) == 1
    assert not any((tmp_path / "s").glob("part-*"))


def test_other_settings_are_refused(micro_family, micro_scores):
    code, _, err = run_cli("score", "--family", micro_family, "--out", micro_scores, "--contexts", "8",
                           "--continuations", "4", "--device", "cpu")
    assert code == 2 and "other settings" in err
    assert len(list(micro_scores.glob("part-*.parquet"))) > 0


def test_worker_processes_write_the_same_table(micro_family, tmp_path):
    """score(workers=2) spreads the chunks over two single-threaded processes: the same table as
    one single-threaded process; workers < 1 is refused before anything is written."""
    from dynamics.scoring.table import score

    family = load_family(micro_family)
    kw = dict(contexts=[8, 16], continuations=[4, 16], models=family.size_names[:2], revisions=["step100", "step200"],
              samples=(0, 64), chunk_size=16, device="cpu", progress=False)
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        score(family, tmp_path / "one", **kw)
    finally:
        torch.set_num_threads(threads)
    score(family, tmp_path / "two", workers=2, **kw)
    keys = ["model", "revision", "seq_idx", "context_len", "continuation_len"]
    one, two = (read_scores(tmp_path / d).sort_values(keys).reset_index(drop=True) for d in ("one", "two"))
    pd.testing.assert_frame_equal(one, two)
    with pytest.raises(MemdynError, match="workers must be an integer >= 1, got 0"):
        score(family, tmp_path / "zero", workers=0, **kw)
    assert not (tmp_path / "zero").exists()


def test_exclude_canaries_scores_only_samples_without_a_copy(micro_family, tmp_path):
    """--exclude-canaries draws among (or keeps of a range) the training samples that hold no canary
    copy; asking for more of them than there are, a range of canary samples only, or other data than
    the family's training data is one line before any file."""
    from dynamics.family.data import training_data
    from dynamics.scoring.table import score

    family = load_family(micro_family)
    canary = set(training_data(family).canary_samples.tolist())
    n_data = len(IndexedDataset(family.data.prefix))
    assert 0 < len(canary) < n_data
    kw = dict(contexts=[8], continuations=[4], models=family.size_names[:1], device="cpu", progress=False)
    score(family, tmp_path / "drawn", sample=100, exclude_canaries=True, seed=3, **kw)
    drawn = set(read_scores(tmp_path / "drawn").seq_idx)
    assert len(drawn) == 100 and not drawn & canary
    score(family, tmp_path / "range", samples=(0, 64), exclude_canaries=True, **kw)
    assert set(read_scores(tmp_path / "range").seq_idx) == set(range(64)) - canary

    pool = n_data - len(canary)
    first = min(canary)
    for args, message in [
        (["--sample", str(pool + 1)], f"between 1 and the {pool} samples in {family.data.prefix}.bin that hold no canary copy"),
        (["--samples", f"{first}:{first + 1}"], "holds no sample without a canary copy"),
        (["--data", f"{family.data.prefix.rsplit('/', 1)[0]}/reference"], "needs memdyn's per-sample table"),
    ]:
        code, _, err = run_cli("score", "--family", micro_family, "--out", tmp_path / "bad", "--contexts", "8",
                               "--continuations", "4", "--exclude-canaries", "--device", "cpu", *args)
        assert code == 2 and message in err and len(err.strip().splitlines()) == 1, err
        assert not (tmp_path / "bad").exists()
