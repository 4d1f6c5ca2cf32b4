"""dynamics.workers: jobs in single-threaded worker processes that stop with their parent."""

import multiprocessing
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
