"""dynamics.workers: jobs in single-threaded worker processes that stop with their parent."""

import multiprocessing
import sys
import time

import pytest

from dynamics.errors import MemdynError
from dynamics.workers import check_workers, cores, run_jobs

two_cores = pytest.mark.skipif(cores() < 2, reason="needs two cores for two workers")


def _no_children_left(within: float = 10.0) -> bool:
    """No worker left alive (polled: the executor's thread may still be reaping a killed one)."""
    end = time.monotonic() + within
    while multiprocessing.active_children() and time.monotonic() < end:
        time.sleep(0.1)
    return not multiprocessing.active_children()


def _sleep_or_fail(seconds: float, device: str) -> tuple[float, int]:
    if seconds < 0:
        raise MemdynError("job failed")
    time.sleep(seconds)
    import torch

    return seconds, torch.get_num_threads()


def test_jobs_run_here_with_one_worker_and_in_single_threaded_workers_with_more():
    here = []
    run_jobs(_sleep_or_fail, [(0,), (0,)], device="cpu", workers=1, done=here.append)
    assert here == [(0, here[0][1])] * 2
    there = []
    run_jobs(_sleep_or_fail, [(0,), (0,), (0,)], device="cpu", workers=2, done=there.append)
    assert there == [(0, 1)] * 3
    assert _no_children_left(), multiprocessing.active_children()


@two_cores
def test_a_failed_job_stops_the_other_workers_at_once():
    start = time.monotonic()
    with pytest.raises(MemdynError, match="job failed"):
        run_jobs(_sleep_or_fail, [(120,), (-1,)], device="cpu", workers=2)
    assert time.monotonic() - start < 60  # not the 120 s of the other job
    assert _no_children_left(), multiprocessing.active_children()


@two_cores
def test_an_interrupt_stops_the_workers_at_once():
    def interrupt(result):
        raise KeyboardInterrupt

    start = time.monotonic()
    with pytest.raises(KeyboardInterrupt):
        run_jobs(_sleep_or_fail, [(120,), (0,)], device="cpu", workers=2, done=interrupt)
    assert time.monotonic() - start < 60  # not the 120 s of the other job
    assert _no_children_left(), multiprocessing.active_children()


def test_bad_worker_counts_are_refused():
    for bad in (0, -1, 1.5, True, "2"):
        with pytest.raises(MemdynError, match="workers must be an integer >= 1"):
            check_workers(bad)


def _record_pid_and_sleep(folder: str, device: str) -> None:
    import os
    from pathlib import Path

    Path(folder, f"{os.getpid()}.pid").touch()
    time.sleep(120)


@two_cores
@pytest.mark.skipif(not sys.platform.startswith("linux"), reason="reads the workers' state in Linux's /proc")
def test_a_sigkilled_parent_leaves_no_worker_running(tmp_path):
    """The workers' parent is the forkserver: it exits with this process, and they die with it."""
    import os
    import signal
    import subprocess

    script = ("from functools import partial; from dynamics.workers import run_jobs; import tests.test_workers as t; "
              f"run_jobs(partial(t._record_pid_and_sleep, {str(tmp_path)!r}), [(), ()], device='cpu', workers=2)")
    parent = subprocess.Popen([sys.executable, "-c", script], cwd=os.path.dirname(os.path.dirname(__file__)))
    deadline = time.monotonic() + 60
    while len(list(tmp_path.glob("*.pid"))) < 2 and time.monotonic() < deadline:
        time.sleep(0.1)
    pids = [int(p.stem) for p in tmp_path.glob("*.pid")]
    assert len(pids) == 2, "the workers did not start"
    parent.send_signal(signal.SIGKILL)
    parent.wait()

    def alive(pid: int) -> bool:  # (a killed worker nobody has reaped yet is a zombie: dead)
        try:
            with open(f"/proc/{pid}/stat") as f:
                return f.read().rsplit(")", 1)[1].split()[0] != "Z"
        except FileNotFoundError:
            return False

    deadline = time.monotonic() + 10
    while any(alive(pid) for pid in pids) and time.monotonic() < deadline:
        time.sleep(0.1)
    assert not any(alive(pid) for pid in pids)
