"""Output locks: processes that lock sibling outputs in a folder that does not exist yet."""

from __future__ import annotations

import multiprocessing
import os
from pathlib import Path

from dynamics.lock import output_lock


def test_a_folder_made_by_another_process_meanwhile_is_used_and_kept(tmp_path, monkeypatch):
    # `memdyn run` trains its predictors in two workers that lock runs/predictor/<size>-<mode> at
    # the same moment: both see runs/predictor missing, and one of them makes it first
    shared = tmp_path / "runs" / "predictor"
    real_mkdir = Path.mkdir

    def raced_mkdir(self, *args, **kwargs):
        if self == shared:
            os.mkdir(self)  # the other worker wins
        return real_mkdir(self, *args, **kwargs)

    monkeypatch.setattr(Path, "mkdir", raced_mkdir)
    with output_lock(shared / "617k-context"):
        assert (shared / ".617k-context.lock").is_file()
    monkeypatch.undo()
    # the folder this process did not make stays for its maker; the one it made above it too
    # (it holds the other's folder)
    assert shared.is_dir() and not any(shared.iterdir())


def _lock_sibling(folder: str, name: str, barrier) -> None:
    barrier.wait()
    with output_lock(Path(folder) / name):
        (Path(folder) / name).mkdir()


def test_workers_lock_siblings_in_a_missing_folder_at_once(tmp_path):
    ctx = multiprocessing.get_context("spawn")
    for attempt in range(3):
        folder = tmp_path / str(attempt) / "predictor"
        barrier = ctx.Barrier(4)
        workers = [ctx.Process(target=_lock_sibling, args=(str(folder), f"out{i}", barrier)) for i in range(4)]
        for w in workers:
            w.start()
        for w in workers:
            w.join(60)
        assert [w.exitcode for w in workers] == [0] * 4
        assert sorted(p.name for p in folder.iterdir()) == [f"out{i}" for i in range(4)]  # no lock left


def test_a_folder_removed_by_its_maker_meanwhile_is_made_again(tmp_path, monkeypatch):
    # the other worker made runs/predictor, failed (a size without memorized samples) and removed
    # it again, between this process's check and the creation of its lock file
    import dynamics.lock as lock

    shared = tmp_path / "runs" / "predictor"
    shared.mkdir(parents=True)
    real_try_lock = lock._try_lock
    calls = []

    def raced_try_lock(path):
        calls.append(path)
        if len(calls) == 1:
            shared.rmdir()
        return real_try_lock(path)

    monkeypatch.setattr(lock, "_try_lock", raced_try_lock)
    with output_lock(shared / "617k-context"):
        assert (shared / ".617k-context.lock").is_file()
    assert len(calls) == 2
    assert not shared.exists()  # made by this process the second time, and empty: removed again
