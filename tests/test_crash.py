"""Crash safety: every long stage killed with SIGKILL at seeded random moments (mid-chunk too),
then rerun, ends with exactly the files of an uninterrupted run and no temporaries; SIGINT and
SIGTERM end a command with status 130 and one line; two processes on one output never both
write; a full disk is one line, and the rerun after space is freed gives identical results."""

from __future__ import annotations

import hashlib
import os
import random
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pandas as pd
import pytest

from tests.conftest import MICRO_CONTEXTS, MICRO_CONTINUATIONS

ENV = os.environ | {"OMP_NUM_THREADS": "1", "HF_HUB_OFFLINE": "1", "TOKENIZERS_PARALLELISM": "false"}
TEMPORARY = re.compile(r"^\..*\.(tmp|lock|stale)$")
NGRAMS = [r"^data/.*\.ngrams/"]  # n-gram index a dynamics test may have built inside the session's family (a cache)


def memdyn(*args) -> list[str]:
    return [sys.executable, "-m", "dynamics.cli", *map(str, args)]


def run(cmd, timeout=600) -> subprocess.CompletedProcess:
    return subprocess.run(cmd, capture_output=True, text=True, env=ENV, timeout=timeout)


def timed(cmd) -> float:
    start = time.monotonic()
    result = run(cmd)
    assert result.returncode == 0, result.stderr[-3000:]
    return time.monotonic() - start


def kill_at(cmd, delays) -> int:
    """Start `cmd` once per delay and SIGKILL it after that many seconds (if still running);
    returns how many runs were killed (the callers require at least one)."""
    killed = 0
    for delay in delays:
        proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL, env=ENV)
        try:
            proc.wait(timeout=delay)
        except subprocess.TimeoutExpired:
            proc.send_signal(signal.SIGKILL)
            proc.wait()
            killed += 1
    return killed


def seeded_delays(seed: int, duration: float, n: int = 2) -> list[float]:
    """Moments spread over the run (the first seconds are interpreter start and imports; the second
    half is left out: a run resumed from earlier kills may finish sooner than the timed one, and on
    a shared machine the timed run itself may have been slowed, e.g. 61 s against 39 s for the
    same micro family training)."""
    rng = random.Random(seed)
    return sorted(duration * rng.uniform(0.3, 0.5) for _ in range(n))


def hashes(root: Path, skip=()) -> dict[str, str]:
    out = {}
    for path in sorted(p for p in root.rglob("*") if p.is_file()):
        name = str(path.relative_to(root))
        if not any(re.search(s, name) for s in skip):
            out[name] = hashlib.sha256(path.read_bytes()).hexdigest()
    return out


def assert_clean(root: Path) -> None:
    """No temporary left inside or beside `root`, and no lock."""
    left = [p for p in [*root.rglob(".*"), *root.parent.glob(f".{root.name}*")] if TEMPORARY.match(p.name)]
    assert left == [], left


def check_killed_then_rerun(cmd_for, reference: Path, out: Path, seed: int, skip=(), kills: int = 2) -> None:
    duration = timed(cmd_for(reference))
    assert kill_at(cmd_for(out), seeded_delays(seed, duration, kills)) >= 1
    result = run(cmd_for(out))
    assert result.returncode == 0, result.stderr[-3000:]
    assert hashes(out, skip) == hashes(reference, skip)
    assert_clean(out)


SCORE = ["--models", "37k", "--contexts", MICRO_CONTEXTS, "--continuations", MICRO_CONTINUATIONS,
         "--chunk-size", "24", "--batch-size", "8", "--samples", "0:96", "--device", "cpu"]


@pytest.fixture(scope="module")
def score_reference(micro_family, tmp_path_factory) -> tuple[Path, float]:
    """One uninterrupted `memdyn score` run of SCORE (its directory, its duration in seconds)."""
    out = tmp_path_factory.mktemp("crash") / "ref"
    return out, timed(memdyn("score", "--family", micro_family, "--out", out, *SCORE))


def test_scoring_killed_at_random_moments(micro_family, score_reference, tmp_path):
    ref, duration = score_reference
    out = tmp_path / "scores"
    cmd = memdyn("score", "--family", micro_family, "--out", out, *SCORE)
    assert kill_at(cmd, seeded_delays(1, duration, 3)) >= 1
    result = run(cmd)
    assert result.returncode == 0, result.stderr[-3000:]
    assert hashes(out) == hashes(ref)
    assert_clean(out)


def test_family_training_killed_at_random_moments(tmp_path):
    check_killed_then_rerun(lambda out: memdyn("family", "train", "--preset", "micro", "--out", out, "--device", "cpu"),
                            tmp_path / "ref", tmp_path / "micro", seed=2)


def test_dynamics_killed_at_random_moments(micro_family, micro_scores, tmp_path):
    def cmd(out):
        return memdyn("dynamics", "--family", micro_family, "--scores", micro_scores, "--out", out, "--per-group", "6",
                      "--bootstrap", "20", "--no-umap", "--device", "cpu")
    check_killed_then_rerun(cmd, tmp_path / "ref", tmp_path / "dyn", seed=3, kills=1)


SWEEP = """
import sys
from dynamics.capacity.synthetic import SweepConfig, run_sweep
cfg = SweepConfig(name="crash-test", vocab_size=8, seq_len=6, models=((1, 8), (1, 12)), data_fractions=(0.5, 2.0),
                  head_dim=4, lr=3e-2, warmup_steps=5, max_steps=400, eval_every=10, plateau_evals=3, lr_decays=1,
                  plateau_tol=0.001, n_nonmembers=20, batch_size=4)
run_sweep(cfg, sys.argv[1], seed=0, threads=1, log=lambda *_: None)
"""


def test_capacity_sweep_killed_at_random_moments(tmp_path):
    """Wall times (train_seconds) differ between any two runs; every other byte is equal."""
    timing = [r"^capacity\.(parquet|csv)$", r"^runs/.*\.json$", r"^summary\.json$", r"^_manifest/parts/"]
    check_killed_then_rerun(lambda out: [sys.executable, "-c", SWEEP, str(out)], tmp_path / "ref", tmp_path / "cap",
                            seed=4, skip=timing)
    drop = ["train_seconds"]
    pd.testing.assert_frame_equal(pd.read_parquet(tmp_path / "cap" / "capacity.parquet").drop(columns=drop),
                                  pd.read_parquet(tmp_path / "ref" / "capacity.parquet").drop(columns=drop))


@pytest.mark.parametrize("signum", [signal.SIGINT, signal.SIGTERM])
def test_interrupt_during_score_is_one_line_and_resumes(micro_family, score_reference, tmp_path, signum):
    out = tmp_path / "scores"
    cmd = memdyn("score", "--family", micro_family, "--out", out, *SCORE)
    # a shell starts background jobs with SIGINT ignored, and Python then installs no handler for it:
    # give the command the default disposition a terminal's Ctrl-C meets, however pytest was started
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True, env=ENV,
                            preexec_fn=lambda: signal.signal(signal.SIGINT, signal.SIG_DFL))
    deadline = time.monotonic() + 120
    while not (out / "_manifest" / "parts").is_dir() and time.monotonic() < deadline and proc.poll() is None:
        time.sleep(0.05)  # wait until the first chunk is done: the signal lands mid-run
    proc.send_signal(signum)
    _, err = proc.communicate(timeout=120)
    assert proc.returncode == 130, err[-2000:]
    last = err.rstrip("\n").split("\n")[-1].split("\r")[-1]
    assert last.startswith("memdyn: interrupted") and "rerun" in last, err[-2000:]
    assert "Traceback" not in err
    result = run(cmd)
    assert result.returncode == 0, result.stderr[-3000:]
    assert hashes(out) == hashes(score_reference[0])


def test_second_process_on_the_same_output_refuses(micro_family, score_reference, tmp_path):
    out = tmp_path / "scores"
    cmd = memdyn("score", "--family", micro_family, "--out", out, *SCORE)
    first = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True, env=ENV)
    lock = tmp_path / ".scores.lock"
    deadline = time.monotonic() + 120
    while not lock.is_file() and time.monotonic() < deadline:
        time.sleep(0.02)
    second = run(cmd)
    _, err = first.communicate(timeout=300)
    assert first.returncode == 0, err[-2000:]
    assert second.returncode == 2 and f"in use by memdyn process {first.pid}" in second.stderr, second.stderr
    assert second.stderr.count("\n") == 1
    assert hashes(out) == hashes(score_reference[0])
    lock.write_text('{"pid": 999999999, "host": "%s", "started": "1"}' % os.uname().nodename)  # a dead holder
    result = run(cmd)
    assert result.returncode == 0, result.stderr
    assert not lock.exists()


def _mount_tmpfs(path: Path, size: str) -> bool:
    path.mkdir()
    return subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(path)],
                          capture_output=True).returncode == 0


def assert_disk_full(result: subprocess.CompletedProcess) -> None:
    """Exit status 2 and, as the last line, the one-line disk-full error (no traceback)."""
    assert result.returncode == 2, result.stderr[-2000:]
    last = result.stderr.rstrip("\n").split("\n")[-1].split("\r")[-1]
    assert last.startswith("memdyn: error: no space left on the device"), result.stderr[-2000:]
    assert "Traceback" not in result.stderr


def test_full_disk_is_one_line_and_the_rerun_completes(micro_family, score_reference, tmp_path):
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "4m"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        out = disk / "scores"
        cmd = memdyn("score", "--family", micro_family, "--out", out, *SCORE)
        filler = disk / "filler"
        free = shutil.disk_usage(disk).free
        filler.write_bytes(b"\0" * (free - 70_000))  # room for a few chunks, not for all
        result = run(cmd)
        assert_disk_full(result)
        assert_clean(out)
        code, _, err = _summarize(out)
        assert code == 2 and "missing" in err  # the unfinished table is refused, its finished parts intact
        filler.unlink()
        result = run(cmd)
        assert result.returncode == 0, result.stderr[-2000:]
        assert hashes(out) == hashes(score_reference[0])
    finally:
        subprocess.run(["umount", str(disk)])


def _summarize(scores):
    from tests.conftest import run_cli

    return run_cli("summarize", "--scores", scores)


PREDICTOR = ["--model", "37k", "--context", "16", "--continuation", "4", "--test-size", "0.5", "--folds", "2", "--epochs", "4",
             "--d-model", "16", "--encoder-layers", "1", "--heads", "2"]


def test_predictor_training_with_folds_killed_at_random_moments(micro_family, micro_scores, tmp_path):
    def cmd(out):
        return memdyn("predictor", "train", "--family", micro_family, "--scores", micro_scores, "--out", out, *PREDICTOR)
    check_killed_then_rerun(cmd, tmp_path / "ref", tmp_path / "pred", seed=5)
    assert not (tmp_path / ".pred.resume").exists()  # the epoch checkpoints go once the predictor is saved


@pytest.mark.slow
def test_memdyn_run_killed_at_random_moments(micro_family, micro_workdir, tmp_path):
    """Each kill lands in whatever stage is running then; the relaunch resumes from the cache, so
    three kills cost about one run. The reference is the session's uninterrupted micro run."""
    runs = tmp_path / "runs"
    shutil.copytree(micro_family, runs / "family")  # as micro_workdir does: the family is reused
    cmd = memdyn("run", "--preset", "micro", "--workdir", runs, "--reports", tmp_path / "reports")
    assert kill_at(cmd, [random.Random(6).uniform(8, 40) for _ in range(3)]) >= 1
    result = run(cmd, timeout=1800)
    assert result.returncode == 0, result.stderr[-3000:]
    assert hashes(runs) == hashes(micro_workdir)
    assert hashes(tmp_path / "reports") == hashes(micro_workdir.parent / "reports")
    assert_clean(runs)


def test_full_disk_during_family_training(micro_family, tmp_path):
    """torch and safetensors wrap ENOSPC in their own errors: still one line that says the disk is full."""
    disk = tmp_path / "disk"
    if not _mount_tmpfs(disk, "16m"):
        pytest.skip("cannot mount a tmpfs here (needs root)")
    try:
        out = disk / "micro"
        cmd = memdyn("family", "train", "--preset", "micro", "--out", out, "--device", "cpu")
        filler = disk / "filler"
        filler.write_bytes(b"\0" * (shutil.disk_usage(disk).free - 4_000_000))  # the family needs about 9 MB
        result = run(cmd)
        assert_disk_full(result)
        assert_clean(out)
        filler.unlink()
        result = run(cmd)
        assert result.returncode == 0, result.stderr[-2000:]
        assert hashes(out) == hashes(micro_family, NGRAMS)
    finally:
        subprocess.run(["umount", str(disk)])
