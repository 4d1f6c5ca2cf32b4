"""Single-threaded worker processes for CPU work made of many small independent jobs.

The embedded family's models and the predictors are small: a second torch thread speeds one of
their jobs up by only 1.2-1.7x (tiny family, 2 cores: a context predictor 55 s on one thread and
46 s on two; a scoring batch of the 617k model 56 and 41 ms), so one single-threaded job per core
finishes sooner. Each job must write its own output (atomically) and give the same result in
whichever worker it runs.
"""

from __future__ import annotations

import atexit
import functools
import multiprocessing
import os
from typing import Callable


# what this process's jobs reuse from one job to the next: slot -> (key, object)
_kept: dict = {}


def kept(slot: str, key, make: Callable):
    """The object in `slot` made for `key`, made now if the slot holds another key (the old one is
    freed first: a process keeps one model, not every model it scored). For the jobs of run_jobs,
    which frees them all when its jobs are done."""
    if slot not in _kept or _kept[slot][0] != key:
        _kept.pop(slot, None)
        _kept[slot] = (key, make())
    return _kept[slot][1]


def check_workers(workers) -> None:
    from dynamics.errors import MemdynError

    if not isinstance(workers, int) or isinstance(workers, bool) or workers < 1:
        raise MemdynError(f"workers must be an integer >= 1, got {workers!r}")


def cores() -> int:
    """The cores this process may run on (its CPU affinity: a container or `taskset` may allow
    fewer than the machine has)."""
    if hasattr(os, "sched_getaffinity"):
        return max(1, len(os.sched_getaffinity(0)))
    return os.cpu_count() or 1


def cpu_workers(jobs: int) -> int:
    """How many workers `jobs` jobs use: one per core, at most one per job (0 for no jobs)."""
    return min(jobs, cores())


def run_jobs(fn: Callable, jobs: list[tuple], *, device, workers: int = 1, launched: int = 1,
             done: Callable = lambda result: None) -> None:
    """fn(*job, device) for every job, then done(its result): in this process, or, with workers > 1
    on a CPU outside a launcher (`launched`: the launch's number of processes), in that many
    single-threaded workers, finishing in any order. fn must be picklable (module level, or a
    functools.partial of one).

    The workers are forked from a forkserver (`_context`), never from this process (a fork of a
    process whose OpenMP pool has run can hang in the child), and die with this process: a failed
    job or an interrupt stops the others at once, and a SIGKILLed run leaves no job running on,
    holding its output lock."""
    if not (workers > 1 and launched == 1 and str(device).startswith("cpu")):
        try:
            for job in jobs:
                done(fn(*job, device))
        finally:
            _kept.clear()  # (in a worker they end with the worker)
        return
    if not jobs:
        return
    from concurrent.futures import ProcessPoolExecutor, as_completed
    from concurrent.futures.process import BrokenProcessPool

    from dynamics.errors import MemdynError

    before, ours = set(multiprocessing.active_children()), set()
    pool = ProcessPoolExecutor(min(workers, cpu_workers(len(jobs))), _context(),
                               initializer=_start_worker, initargs=(os.getpid(),))
    try:
        futures = [pool.submit(fn, *job, "cpu") for job in jobs]  # (the workers start here)
        ours = set(multiprocessing.active_children()) - before
        for future in as_completed(futures):
            done(future.result())
    except BrokenProcessPool:
        raise MemdynError("a worker process died (killed, or out of memory); finished work is kept, and "
                          "rerunning the same command resumes") from None
    except BaseException:
        pool.shutdown(wait=False, cancel_futures=True)
        for process in ours:  # stop the running jobs now, not after they finish
            process.kill()
        for process in ours:
            process.join()
        raise
    pool.shutdown()


# what every worker's jobs import (the model code, the tables), imported once by the forkserver
_PRELOAD = ["torch", "transformers", "transformers.models.gpt_neox.modeling_gpt_neox", "pandas", "pyarrow.parquet",
            "dynamics.workers"]


@functools.cache
def _context():
    """Workers fork from one forkserver process that imports torch and the model code once, before
    any OpenMP pool exists (so forking it is safe, where forking this process can hang), and
    serves every pool of this process: a pool of two starts in 0.07 s, after 5 s for the first,
    where two spawned processes importing torch and transformers took 7.4-7.7 s (2 cores, 76-81 G
    MAC/s)."""
    import signal
    import threading
    from multiprocessing import forkserver

    context = multiprocessing.get_context("forkserver")
    context.set_forkserver_preload(_PRELOAD)
    # Ctrl-C reaches the whole process group: the server, seconds into its imports, would print a
    # traceback. Started with SIGINT ignored (kept across exec), it never sees one; this process
    # reports the interrupt in one line
    if threading.current_thread() is threading.main_thread():
        previous = signal.signal(signal.SIGINT, signal.SIG_IGN)
        try:
            forkserver.ensure_running()
        finally:
            signal.signal(signal.SIGINT, previous)
    # wait out the server's imports with one process that does nothing: a pool's workers then
    # start at once, so an interrupt finds them started (and kills them), not still queued at the
    # server, which would start them after this process has cleaned up (each printing a traceback)
    idle = context.Process(target=int, daemon=True)
    idle.start()
    idle.join()
    # at exit, stop the server and wait for it: the workers it reaped then count in this process's
    # resource usage (the CPU time and peak memory `/usr/bin/time` reports), as spawned ones did
    atexit.register(getattr(forkserver._forkserver, "_stop", lambda: None))
    return context


def _start_worker(parent: int) -> None:
    import signal

    import torch

    torch.set_num_threads(1)
    # Ctrl-C reaches the whole process group: the parent reports it in one line and stops its
    # workers, instead of each of them printing a traceback
    signal.signal(signal.SIGINT, signal.SIG_IGN)
    _exit_with(parent)


def _exit_with(parent: int) -> None:
    """End this worker the moment process `parent` ends, SIGKILL included. (Its parent process is
    the forkserver, which stays as long as any process it started does, so a parent-death signal
    would never come.) A thread waits on a pidfd of `parent` (Linux 5.3+), elsewhere it polls."""
    import threading
    import time

    def alive() -> bool:
        try:
            os.kill(parent, 0)
        except ProcessLookupError:
            return False
        return True

    def watch() -> None:
        try:
            pidfd = os.pidfd_open(parent)
        except (AttributeError, OSError):  # no pidfd here, or `parent` is gone already
            while alive():
                time.sleep(0.2)
        else:
            import select

            select.select([pidfd], [], [])  # readable once `parent` has exited
        os._exit(1)

    threading.Thread(target=watch, daemon=True, name="memdyn-exit-with-parent").start()
