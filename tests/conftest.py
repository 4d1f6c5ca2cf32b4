"""Shared fixtures: the micro family is trained once per test session and scored once."""

from __future__ import annotations

import os
import sys

os.environ.setdefault("HF_HUB_OFFLINE", "1")  # tests never touch the network
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
os.environ.setdefault("OMP_NUM_THREADS", "1")  # tiny models: one thread is as fast, and never oversubscribes

import pytest

MICRO_CONTEXTS = "8,16"
MICRO_CONTINUATIONS = "4,8,16"


def run_cli(*args: str) -> tuple[int, str, str]:
    """Run `memdyn ARGS` in this process; returns (exit code, stdout, stderr)."""
    import contextlib
    import io

    from dynamics.cli import main

    out, err = io.StringIO(), io.StringIO()
    argv = sys.argv
    sys.argv = ["memdyn", *map(str, args)]
    code = 0
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
            main()
    except SystemExit as e:
        code = e.code if isinstance(e.code, int) else 1
    finally:
        sys.argv = argv
    return code, out.getvalue(), err.getvalue()


@pytest.hookimpl(tryfirst=True)  # before pytest-xdist reads the marks
def pytest_collection_modifyitems(items):
    """For pytest-xdist's loadgroup (pyproject.toml): the tests of one module run in one process
    (their module fixtures are built once), except that every test using the micro run (a two-minute
    session fixture) goes to one process, whatever its module."""
    for item in items:
        group = "micro_workdir" if "micro_workdir" in getattr(item, "fixturenames", ()) else item.module.__name__
        item.add_marker(pytest.mark.xdist_group(group))


@pytest.fixture(scope="session")
def micro_family(tmp_path_factory):
    from dynamics.family.train import train_family

    out = tmp_path_factory.mktemp("family") / "micro"
    train_family("micro", out, seed=0, device="cpu")
    return out


@pytest.fixture(scope="session")
def micro_scores(micro_family, tmp_path_factory):
    """Final checkpoints of every size plus two checkpoints of the largest, on all samples."""
    out = tmp_path_factory.mktemp("scores") / "scores"
    code, _, err = run_cli(
        "score", "--family", micro_family, "--out", out, "--contexts", MICRO_CONTEXTS,
        "--continuations", MICRO_CONTINUATIONS, "--chunk-size", "128", "--device", "cpu",
    )
    assert code == 0, err
    return out


@pytest.fixture(scope="session")
def micro_workdir(micro_family, tmp_path_factory):
    """Every `memdyn run` stage on the micro preset, reusing the session's micro family (which the
    run recognises as finished); reports go to the sibling folder `reports/`."""
    import shutil

    root = tmp_path_factory.mktemp("run")
    shutil.copytree(micro_family, root / "runs" / "family")
    code, out, err = run_cli("run", "--workdir", root / "runs", "--preset", "micro", "--reports", root / "reports")
    assert code == 0, err
    assert "memorized share" in out and "all 9 stages done; this call took" in out
    return root / "runs"
