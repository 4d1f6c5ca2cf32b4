"""One writer per output directory: a lock file beside the directory, holding the writer's pid,
host and process start time.

A second `memdyn` process started on the same output refuses at once with a one-line error that
names the holder (it does not wait: two identical commands are almost always a mistake, and the
first one's result is the one to keep). A lock left by a process that no longer exists on this
host (killed, the machine rebooted) is taken over. Under a launcher (`torchrun`, `accelerate
launch`) the processes of one launch share the output legitimately: only rank 0 takes the lock.

The lock is a sibling, `<parent>/.<name>.lock`, not a file inside the directory: stages replace
their whole output directory atomically, and a failed check must not leave the directory behind.
"""

from __future__ import annotations

import contextlib
import functools
import inspect
import json
import os
import socket
import uuid
from pathlib import Path
from typing import Iterator

from dynamics.errors import MemdynError
from dynamics.files import check_output_location, remove_temporaries

_held: dict[Path, int] = {}  # lock path -> depth: a process may lock what it already holds (nested stages)
_made: dict[Path, list[Path]] = {}  # lock path -> folders created to hold it


def lock_path(out: str | os.PathLike) -> Path:
    out = Path(out).absolute()
    return out.parent / f".{out.name}.lock"


def _start_time(pid: int) -> str | None:
    """The process's start time in clock ticks since boot (Linux), which tells a live holder from
    an unrelated process that reused its pid."""
    try:
        return Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()[19]
    except (OSError, IndexError):
        return None


def _alive(holder: dict) -> bool:
    pid = holder.get("pid")
    if not isinstance(pid, int) or pid <= 0:
        return False
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:
        return True  # exists, owned by someone else
    started = holder.get("started")
    return started is None or _start_time(pid) in (None, started)


def _read(path: Path) -> dict | None:
    try:
        obj = json.loads(path.read_text())
        return obj if isinstance(obj, dict) else {}
    except FileNotFoundError:
        return None
    except (OSError, ValueError):
        return {}  # half-written by a process killed while taking it: stale


def _launch_rank() -> int:
    """This process's rank under torchrun / accelerate launch (0 outside a launcher)."""
    try:
        return int(os.environ.get("RANK", "0"))
    except ValueError:
        return 0


def _try_create(path: Path, me: dict) -> bool:
    try:
        fd = os.open(path, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o644)
    except FileExistsError:
        return False
    with os.fdopen(fd, "w") as f:
        json.dump(me, f)
    return True


def acquire(out: str | os.PathLike, option: str = "--out", kind: str = "dir") -> Path | None:
    """Take the lock of output `out` (checked writable first; kind: dir or file); returns the lock's
    path (None when this rank does not lock)."""
    check_output_location(out, option, kind)
    path = lock_path(out)
    if path in _held:
        _held[path] += 1
        return path
    if _launch_rank() != 0:
        return None
    made = _make_parents(path.parent, out, option)
    host = socket.gethostname()
    me = {"pid": os.getpid(), "host": host, "started": _start_time(os.getpid())}
    for _ in range(5):  # another process may take over a stale lock between our steps
        try:
            if _try_create(path, me):
                _held[path] = 1
                _made[path] = made
                remove_temporaries(out)  # no other writer now: what stands there was left by a killed one
                return path
        except OSError as e:
            _remove_empty(made)
            raise MemdynError(f"{option} {out}: cannot create the lock file {path} ({e.strerror}); "
                              "choose a writable location") from None
        holder = _read(path)
        if holder is None:
            continue  # released meanwhile
        if holder and (holder.get("host") != host or _alive(holder)):
            _remove_empty(made)
            raise MemdynError(
                f"{option} {out} is in use by memdyn process {holder.get('pid')} on {holder.get('host')}; wait for it "
                f"to finish (if that process is gone, remove {path})")
        stale = path.with_name(f"{path.name}.{uuid.uuid4().hex}.stale")
        with contextlib.suppress(FileNotFoundError):
            os.replace(path, stale)  # atomic: of two processes taking over, one moves the stale lock
            stale.unlink()
    _remove_empty(made)
    raise MemdynError(f"{option} {out}: could not take the lock {path}; remove it if no memdyn process uses {out}")


def release(path: Path | None) -> None:
    if path is None:
        return
    _held[path] -= 1
    if _held[path] == 0:
        del _held[path]
        with contextlib.suppress(FileNotFoundError):
            path.unlink()
        _remove_empty(_made.pop(path, []))


def _make_parents(parent: Path, out, option: str) -> list[Path]:
    """Create the missing folders above the output (returned, so that a failed command that wrote
    nothing removes them again)."""
    missing = []
    p = parent
    while not p.exists():
        missing.append(p)
        p = p.parent
    if not p.is_dir() or not os.access(p, os.W_OK | os.X_OK):
        raise MemdynError(f"{option} {out}: {p} is not a writable directory; choose another location")
    for d in reversed(missing):
        d.mkdir()
    return missing


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
