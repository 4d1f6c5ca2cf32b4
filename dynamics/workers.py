"""Single-threaded worker processes for CPU work made of many small independent jobs.

The embedded family's models and the predictors are small: a second torch thread speeds one of
their jobs up by only 1.2-1.7x (tiny family, 2 cores: a context predictor 55 s on one thread and
46 s on two; a scoring batch of the 617k model 56 and 41 ms), so one single-threaded job per core
finishes sooner. Each job must write its own output (atomically) and give the same result in
whichever worker it runs.
"""

from __future__ import annotations

import contextlib
import multiprocessing
import os
import sys
from concurrent.futures import ProcessPoolExecutor, as_completed
from typing import Callable, Iterator


def check_workers(workers) -> None:
    from dynamics.errors import MemdynError

    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise MemdynError(f"workers must be an integer >= 1, got {workers!r}")


def cpu_workers(jobs: int) -> int:
    """How many workers `jobs` jobs use: one per core, at most one per job (0 for no jobs)."""
    return min(jobs, os.cpu_count() or 1)


@contextlib.contextmanager
def worker_pool(workers: int) -> Iterator[ProcessPoolExecutor]:
    """A pool of `workers` single-threaded processes that die with this one (a SIGKILLed run must
    not leave jobs running on, holding their output locks). Spawned, not forked: a fork of a
    process whose OpenMP pool has run can hang in the child."""
    pool = ProcessPoolExecutor(max(workers, 1), multiprocessing.get_context("spawn"), initializer=_start_worker,
                               initargs=(os.getpid(),))
    try:
        yield pool
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)  # a failed job stops the rest
        raise
    pool.shutdown()


def _start_worker(parent: int) -> None:
    import torch

    torch.set_num_threads(1)
    if sys.platform.startswith("linux"):
        import ctypes
        import signal

        ctypes.CDLL(None).prctl(1, signal.SIGKILL)  # PR_SET_PDEATHSIG
    if os.getppid() != parent:  # the parent died before prctl took effect
        os._exit(1)


def run_jobs(fn: Callable, jobs: list[tuple], *, device, workers: int = 1, launched: int = 1,
             done: Callable = lambda result: None) -> None:
    """fn(*job, device) for every job, then done(its result): in this process, or, with workers > 1
    on a CPU outside a launcher (`launched`: the launch's number of processes), in that many
    single-threaded workers, finishing in any order. fn must be picklable (module level, or a
    functools.partial of one)."""
    if workers > 1 and launched == 1 and str(device).startswith("cpu"):
        with worker_pool(min(workers, cpu_workers(len(jobs)))) as pool:
            for future in as_completed([pool.submit(fn, *job, "cpu") for job in jobs]):
                done(future.result())
    else:
        for job in jobs:
            done(fn(*job, device))
