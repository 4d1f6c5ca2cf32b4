import json

import pandas as pd
import pytest

from dynamics.family.spec import load_family
from tests.conftest import run_cli


def test_memdyn_run_end_to_end_and_resumes(micro_workdir):
    """`memdyn run` on the micro preset ran every stage; a second run finds everything done."""
    workdir = micro_workdir
    family = load_family(workdir / "family")
    scores = pd.read_parquet(workdir / "scores")
    assert set(scores.model) == set(family.size_names)
    checkpoints = pd.read_parquet(workdir / "scores_checkpoints")
    assert checkpoints.revision.nunique() == len(family.sizes[0].revisions)
    # the canaries are measured on their own: no scored sample holds a copy, every other one is scored
    from dynamics.corpus.megatron import IndexedDataset
    from dynamics.family.data import training_data

    canary = set(training_data(family).canary_samples.tolist())
    assert canary and set(scores.seq_idx) == set(range(len(IndexedDataset(family.data.prefix)))) - canary
    assert set(checkpoints.seq_idx) == set(scores.seq_idx)
    assert (workdir / "dynamics" / "tables").is_dir()
    trained = {p.name for p in (workdir / "predictor").iterdir() if (p / "metrics.json").is_file()}
    skipped = set(json.loads((workdir / "predictor" / "skipped.json").read_text()))
    assert trained | skipped == {f"{s}-{m}" for s in family.size_names for m in ("context", "hidden")} and trained
    reports = workdir.parent / "reports"
    assert (reports / family.name / "index.html").is_file()
    stamps = {p: p.stat().st_mtime_ns for p in workdir.glob("scores*/part-*.parquet")}
    # lock files a run killed just after finishing these outputs leaves; the rerun skips both stages
    stale = [workdir / ".capacity.lock", workdir / "predictor" / f".{sorted(trained)[0]}.lock"]
    for lock in stale:
        lock.write_text('{"pid": 99999999}')
    code, _, err = run_cli("run", "--workdir", workdir, "--preset", "micro", "--reports", reports)
    assert code == 0, err
    assert all(p.stat().st_mtime_ns == t for p, t in stamps.items())
    assert not any(lock.exists() for lock in stale)


def test_run_refuses_another_preset(micro_family, tmp_path):
    (tmp_path / "w").mkdir()
    (tmp_path / "w" / "run.json").write_text('{"preset": "tiny", "seed": 0}')
    code, _, err = run_cli("run", "--workdir", tmp_path / "w", "--preset", "micro")
    assert code == 2 and "holds a run with" in err


@pytest.mark.parametrize("setting", [["--dtype", "bf16"], ["--lr", "3e-3"]])
def test_run_refuses_a_family_of_other_training_settings_before_any_stage(micro_family, tmp_path, setting):
    """A work directory holding only a family (reused by `memdyn run`) trained in float32 at the
    preset's rates, asked for a bf16 run or one common rate: one line naming --workdir, nothing written."""
    import shutil

    shutil.copytree(micro_family, tmp_path / "w" / "family")
    before = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*"))
    code, out, err = run_cli("run", "--workdir", tmp_path / "w", "--preset", "micro", *setting,
                             "--reports", tmp_path / "reports")
    assert code == 2 and "trained with other settings" in err and "--workdir" in err and len(err.strip().splitlines()) == 1
    assert "[1/" not in out and sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*")) == before


def test_run_refuses_the_work_directory_of_a_run_at_one_common_rate(tmp_path):
    (tmp_path / "v").mkdir()
    (tmp_path / "v" / "run.json").write_text('{"format": 1, "preset": "micro", "seed": 0, "lr": 0.003}')
    code, _, err = run_cli("run", "--workdir", tmp_path / "v", "--preset", "micro", "--reports", tmp_path / "reports")
    assert code == 2 and "holds a run with" in err and "'lr': 0.003" in err


def test_readers_refuse_outputs_of_other_inputs(micro_workdir, tmp_path):
    """A predictor or capacity directory records what it was computed from; the reports' reader
    refuses one whose inputs are not the work directory's (e.g. left from an earlier run)."""
    import shutil

    from dynamics import manifest
    from dynamics.errors import MemdynError
    from dynamics.workdir import Workdir

    runs = tmp_path / "runs"
    shutil.copytree(micro_workdir, runs)
    assert Workdir(runs).capacity is not None and Workdir(runs).predictor
    settings = runs / "capacity" / "_settings.json"
    recorded = json.loads(settings.read_text())
    settings.write_text(json.dumps({**recorded, "models": {m: "step1" for m in recorded["models"]}}))
    with pytest.raises(MemdynError, match="computed from other inputs"):
        Workdir(runs).capacity
    settings.unlink()  # as a run stopped before the capacity stage's last file leaves it
    with pytest.raises(MemdynError, match="unfinished .* rerun `memdyn run"):
        Workdir(runs).capacity
    trained = next(p for p in (runs / "predictor").iterdir() if (p / "cv.json").is_file())
    config = json.loads((trained / "config.json").read_text())
    (trained / "config.json").write_text(json.dumps({**config, "scores": "0" * 64}))
    manifest.record_part(trained, "config.json", 1)  # a consistent directory, trained on other scores
    with pytest.raises(MemdynError, match="trained on other scores"):
        Workdir(runs).predictor


def test_run_recomputes_its_own_outputs_made_with_other_settings(micro_workdir, tmp_path):
    """Scores and dynamics that an earlier memdyn (or another preset) made in the work directory
    are computed again, not refused: the rerun gives the tables of a fresh run."""
    import shutil

    from dynamics.files import read_json, write_json

    workdir = tmp_path / "runs"
    shutil.copytree(micro_workdir, workdir)
    fresh = {d: read_json(workdir / d / "_settings.json") for d in ("scores", "dynamics")}
    table = pd.read_parquet(workdir / "scores")
    older = dict(fresh["scores"])
    older.pop("exclude_canaries")  # scores of a memdyn that scored every sample
    write_json(workdir / "scores" / "_settings.json", older)
    write_json(workdir / "dynamics" / "_settings.json", fresh["dynamics"] | {"per_group": 1})
    code, _, err = run_cli("run", "--workdir", workdir, "--preset", "micro", "--reports", tmp_path / "reports")
    assert code == 0, err
    assert {d: read_json(workdir / d / "_settings.json") for d in ("scores", "dynamics")} == fresh
    key = ["model", "revision", "seq_idx", "context_len", "continuation_len"]
    pd.testing.assert_frame_equal(pd.read_parquet(workdir / "scores").sort_values(key, ignore_index=True),
                                  table.sort_values(key, ignore_index=True))
