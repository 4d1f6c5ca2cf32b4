"""One writer per output directory: a lock file beside the directory, held with flock(2) by the
writing process and holding its pid and host (for the message).

A second `memdyn` process started on the same output refuses at once with a one-line error that
names the holder (it does not wait: two identical commands are almost always a mistake, and the
first one's result is the one to keep). The kernel drops a process's flock when it dies (killed,
crashed), so a lock file left behind is simply taken over by the next command; no pid guessing.
Under a launcher (`torchrun`, `accelerate launch`) the processes of one launch share the output
legitimately: only rank 0 takes the lock.

The lock is a sibling, `<parent>/.<name>.lock`, not a file inside the directory: stages replace
their whole output directory atomically, and a failed check must not leave the directory behind.
"""

from __future__ import annotations

import contextlib
import fcntl
import functools
import inspect
import json
import os
import socket
from pathlib import Path
from typing import Iterator

from dynamics.errors import MemdynError
from dynamics.files import check_output_location, remove_temporaries

# lock path -> [depth, open descriptor holding the flock]: a process may lock what it already
# holds (nested stages)
_held: dict[Path, list] = {}
_made: dict[Path, list[Path]] = {}  # lock path -> folders created to hold it


def lock_path(out: str | os.PathLike) -> Path:
    out = Path(out).absolute()
    return out.parent / f".{out.name}.lock"


def _launch_rank() -> int:
    """This process's rank under torchrun / accelerate launch (0 outside a launcher)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _holder(fd: int) -> dict:
    try:
        obj = json.loads(os.pread(fd, 4096, 0) or b"{}")
        return obj if isinstance(obj, dict) else {}
    except (OSError, ValueError):
        return {}


def _try_lock(path: Path) -> int | None:
    """An open descriptor of `path` holding its exclusive flock, or None when a live process holds it."""
    while True:
        fd = os.open(path, os.O_RDWR | os.O_CREAT, 0o644)
        try:
            fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
        except BlockingIOError:
            holder = _holder(fd)
            os.close(fd)
            raise _InUse(holder) from None
        try:  # the file may have been released (unlinked) between our open and flock: retry on the new one
            if os.fstat(fd).st_ino == os.stat(path).st_ino:
                return fd
        except FileNotFoundError:
            pass
        os.close(fd)


class _InUse(Exception):
    def __init__(self, holder: dict):
        self.holder = holder


def acquire(out: str | os.PathLike, option: str = "--out", kind: str = "dir") -> Path | None:
    """Take the lock of output `out` (checked writable first; kind: dir or file); returns the lock's
    path (None when this rank does not lock)."""
    check_output_location(out, option, kind)
    path = lock_path(out)
    if path in _held:
        _held[path][0] += 1
        return path
    if _launch_rank() != 0:
        return None
    made = _make_parents(path.parent, out, option)
    try:
        try:
            fd = _try_lock(path)
        except FileNotFoundError:  # the folder was made by another process, whose clean-up just removed it
            made = _make_parents(path.parent, out, option)
            fd = _try_lock(path)
    except _InUse as e:
        _remove_empty(made)
        raise MemdynError(
            f"{option} {out} is in use by memdyn process {e.holder.get('pid', '?')} on {e.holder.get('host', '?')}; "
            f"wait for it to finish") from None
    except OSError as e:
        _remove_empty(made)
        raise MemdynError(f"{option} {out}: cannot create the lock file {path} ({e.strerror}); "
                          "choose a writable location") from None
    os.ftruncate(fd, 0)
    os.pwrite(fd, json.dumps({"pid": os.getpid(), "host": socket.gethostname()}).encode(), 0)
    _held[path] = [1, fd]
    _made[path] = made
    remove_temporaries(out)  # no other writer now: what stands there was left by a killed one
    return path


def release(path: Path | None) -> None:
    if path is None:
        return
    _held[path][0] -= 1
    if _held[path][0] == 0:
        _, fd = _held.pop(path)
        with contextlib.suppress(FileNotFoundError):
            path.unlink()  # before the flock is dropped, so a waiting process retries on a new file
        os.close(fd)
        _remove_empty(_made.pop(path, []))


def _make_parents(parent: Path, out, option: str) -> list[Path]:
    """Create the missing folders above the output; returns those this process made, deepest
    first, so that a failed command that wrote nothing removes them again. Another process may
    make one of them at the same moment (the pipeline's workers lock sibling outputs in a folder
    that does not exist yet): that one is used, not made, and never removed by this process."""
    missing = []
    p = parent
    while not p.exists():
        missing.append(p)
        p = p.parent
    if not p.is_dir() or not os.access(p, os.W_OK | os.X_OK):
        raise MemdynError(f"{option} {out}: {p} is not a writable directory; choose another location")
    made = []
    for d in reversed(missing):
        try:
            d.mkdir()
            made.append(d)
        except FileExistsError:
            if not d.is_dir():
                raise MemdynError(f"{option} {out}: {d} is not a directory; choose another location") from None
    return made[::-1]


def _remove_empty(dirs: list[Path]) -> None:
    for d in dirs:  # deepest first
        try:
            d.rmdir()
        except OSError:
            return  # holds something now: the command's output


@contextlib.contextmanager
def output_lock(out: str | os.PathLike, option: str = "--out", kind: str = "dir") -> Iterator[None]:
    """Hold the lock of output `out` for the block (see the module docstring)."""
    path = acquire(out, option, kind)
    try:
        yield
    finally:
        release(path)


def locks_output(param: str = "out", option: str = "--out", kind: str = "dir"):
    """Decorator: the function holds the lock of its output argument `param` while it runs (one
    line on each stage that writes a directory)."""
    def wrap(fn):
        signature = inspect.signature(fn)

        @functools.wraps(fn)
        def locked(*args, **kwargs):
            with output_lock(signature.bind(*args, **kwargs).arguments[param], option, kind):
                return fn(*args, **kwargs)
        return locked
    return wrap


def clear_stale_locks(root: str | os.PathLike, option: str = "--workdir") -> None:
    """Take and release the lock of every output under `root` that has a lock file: one left by a
    killed writer goes (with its temporaries), one held by a live process refuses now, before any
    work. A resumed run calls it: a stage it finds done never takes its lock again (memdyn run
    skips finished predictors, for one), so a kill between an output's last write and its lock's
    release would leave the lock file among the results."""
    for path in sorted(Path(root).rglob(".*.lock")):
        out = path.with_name(path.name[1 : -len(".lock")])
        with output_lock(out, option, "file" if out.is_file() else "dir"):
            pass
