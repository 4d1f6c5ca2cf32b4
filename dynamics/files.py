"""Atomic file and directory writes, so that a crash never leaves a half-written output behind."""

from __future__ import annotations

import contextlib
import errno
import glob
import json
import hashlib
import os
import shutil
import sys
import tempfile
from pathlib import Path
from typing import Callable, Iterator

from dynamics.errors import MemdynError


@contextlib.contextmanager
def atomic_path(path: str | os.PathLike, replaces: Callable[[Path], bool] | None = None) -> Iterator[Path]:
    """Yield a temporary sibling of `path`; it replaces `path` only if the block finishes.

    Works for files and for directories (e.g. a `save_pretrained` checkpoint). What stands at `path`
    is never destroyed unless it is ours to replace: a file by a file, an empty directory, or a
    directory that `replaces(path)` recognises as an earlier output of the same kind.
    """
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent))
    target = tmp / path.name
    try:
        yield target
        if path.is_symlink() or path.exists():
            check_replaceable(path, target.is_dir(), replaces)
            if path.is_dir() and not path.is_symlink():
                shutil.rmtree(path)
        os.replace(target, path)
    except Exception as e:
        full = disk_full_error(e, path)  # before the temporary is removed, which frees space again
        if full is not None:
            raise full from None
        raise
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def disk_full_error(e: BaseException, path: str | os.PathLike) -> MemdynError | None:
    """A failed write because the disk (or quota) is full, as one line; None for other errors.
    Writers below us (torch.save, pyarrow) wrap ENOSPC in their own exception types, so a write
    error on a filesystem with almost no free space left counts too."""
    if isinstance(e, MemdynError):
        return None
    full = isinstance(e, OSError) and e.errno in (errno.ENOSPC, errno.EDQUOT)
    if not full and isinstance(e, Exception):  # torch.save: RuntimeError; safetensors: SafetensorError
        try:
            full = shutil.disk_usage(_existing_parent(Path(path))).free < 1 << 20
        except OSError:
            full = False
    if not full:
        return None
    return MemdynError(f"no space left on the device while writing {path}: free some space and rerun the same "
                       "command (finished parts are kept, the unfinished one was removed)")


def _existing_parent(path: Path) -> Path:
    return next((p for p in [path, *path.parents] if p.exists()), Path("."))


def check_output_location(path: str | os.PathLike, option: str, kind: str = "dir") -> Path:
    """An output location must be writable: refuse a file where a directory is wanted (and the
    reverse), a read-only directory, or a location under a file or a read-only folder."""
    path = Path(path)
    if path.exists():
        if kind == "dir" and not path.is_dir():
            raise MemdynError(f"{option} {path} is a file; give the path of a directory to write")
        if kind == "file" and path.is_dir():
            raise MemdynError(f"{option} {path} is a directory; give the path of a file to write")
        if path.is_dir() and not os.access(path, os.W_OK | os.X_OK):
            raise MemdynError(f"{option} {path} is a read-only directory; choose a writable location")
    parent = _existing_parent(path.parent if str(path.parent) else Path("."))
    if not parent.is_dir() or not os.access(parent, os.W_OK | os.X_OK):
        raise MemdynError(f"{option} {path}: {parent} is not a writable directory; choose another location")
    return path


def check_replaceable(path: Path, new_is_dir: bool, replaces: Callable[[Path], bool] | None = None) -> None:
    """Refuse to replace something memdyn did not write: a directory by a file (or the reverse), or a
    non-empty directory that `replaces` does not recognise."""
    if path.is_dir() and not path.is_symlink():
        if not new_is_dir:
            raise MemdynError(f"{path} is a directory; give the path of a file to write")
        if any(path.iterdir()) and not (replaces and replaces(path)):
            raise MemdynError(f"{path} is a non-empty directory that memdyn did not write; choose another path or remove it")
    elif new_is_dir:
        raise MemdynError(f"{path} is a file; give the path of a directory to write")


def check_output_file(path: str | os.PathLike, option: str, is_ours: Callable[[Path], bool]) -> Path:
    """An output file named by the user: refuse a directory, an unwritable parent, or an existing file
    that `is_ours` does not recognise as an earlier output of the same command (never overwritten)."""
    path = Path(path)
    if path.is_dir():
        raise MemdynError(f"{option} {path} is a directory; give the path of a file to write")
    if path.exists() and not is_ours(path):
        raise MemdynError(f"{option} {path} exists and was not written by this command; choose another path or remove it")
    parent = path.parent if str(path.parent) else Path(".")
    existing = next((p for p in [parent, *parent.parents] if p.exists()), Path("."))
    if not existing.is_dir() or not os.access(existing, os.W_OK | os.X_OK):
        raise MemdynError(f"{option} {path}: {existing} is not a writable directory; choose another path")
    return path


def csv_header(path: str | os.PathLike) -> str:
    """The first line of a CSV file memdyn may have written before ('' for anything unreadable)."""
    try:
        with open(path, encoding="utf-8") as f:
            return f.readline().rstrip("\n")
    except (OSError, UnicodeDecodeError):
        return ""


def write_json(path: str | os.PathLike, obj) -> None:
    with atomic_path(path) as tmp:
        tmp.write_text(json.dumps(obj, indent=2, sort_keys=False) + "\n")


class CorruptFile(MemdynError, ValueError):
    """A file memdyn wrote earlier that no longer parses (truncated, overwritten); a ValueError too,
    for callers that already turn bad content into their own message."""


def read_json(path: str | os.PathLike):
    try:
        return json.loads(Path(path).read_text())
    except (ValueError, UnicodeDecodeError) as e:
        raise CorruptFile(f"{path} is truncated or not valid JSON ({e}); restore it, or remove its directory and "
                          "rerun the command that wrote it") from None


SETTINGS_FORMAT = 1  # raised whenever an output directory's format changes


def settings_fingerprint(directory, settings_file: str = "_settings.json") -> str | None:
    """What an output directory holds, independent of where it lies: the sha256 of its settings
    file (its parts are fixed by them); None when there is no such directory or file."""
    if directory is None or not (Path(directory) / settings_file).is_file():
        return None
    return hashlib.sha256((Path(directory) / settings_file).read_bytes()).hexdigest()


def settings_record(settings: dict) -> dict:
    """What a settings file holds: the settings and the format version of the directory."""
    return {"format": SETTINGS_FORMAT, **settings}


def dtype_setting(dtype: str) -> dict:
    """What a settings file records of a precision: {} for fp32, so that outputs made before the
    precision was a setting (all fp32) still match their settings."""
    return {} if dtype == "fp32" else {"dtype": dtype}


def check_output_dir(out: Path, settings_file: str, settings: dict, what: str, replace_stale: bool = False) -> bool:
    """An output directory belongs to one set of settings and one format version: refuse a directory
    written with other settings or by another version, or one that holds something else, before
    any work starts. replace_stale: a directory of this format with other settings (an earlier
    memdyn's outputs in a work directory `memdyn run` owns) is removed instead, and True returned;
    anything else is still refused."""
    path = Path(out) / settings_file
    if path.is_file():
        try:
            old = read_json(path)
        except (OSError, UnicodeDecodeError, ValueError):
            raise MemdynError(f"{path} is unreadable or truncated; remove {out} and rerun to recompute the {what}") from None
        if not isinstance(old, dict) or old.get("format") != SETTINGS_FORMAT:
            version = old.get("format", "none") if isinstance(old, dict) else "none"
            raise MemdynError(f"{out} holds {what} in format {version}, not this memdyn's {SETTINGS_FORMAT}; "
                              f"recompute them into another --out")
        new = settings_record(settings)
        if old != new:
            if replace_stale:
                # moved aside in one rename, then removed: a kill leaves the old directory whole or a
                # temporary that the next holder of the output's lock clears (remove_temporaries);
                # removed in place, it could lose its settings file first and then be refused as foreign
                aside = Path(tempfile.mkdtemp(prefix=f".{Path(out).name}.", suffix=".tmp", dir=Path(out).parent))
                os.replace(out, aside / "stale")
                shutil.rmtree(aside)
                return True
            diff = ", ".join(f"{k}: {old.get(k)!r} -> {v!r}" for k, v in new.items() if old.get(k) != v)
            raise MemdynError(f"{out} holds {what} computed with other settings ({diff}); use another --out")
    elif Path(out).exists() and any(p for p in Path(out).iterdir() if not p.name.startswith(".")):
        raise MemdynError(f"{out} is not empty and holds no memdyn {what}; choose another --out")
    return False


def save_figure(fig, path: str | os.PathLike, fmt: str, **kwargs) -> None:
    """fig.savefig to `path`, atomically and byte-for-byte reproducible: no date stamp, no software
    version, and SVG element ids from a fixed salt instead of random ones."""
    import matplotlib

    metadata = {"svg": {"Date": None}, "png": {"Software": None}, "pdf": {"CreationDate": None, "Producer": None}}
    with matplotlib.rc_context({"svg.hashsalt": "memdyn"}), atomic_path(path) as tmp:
        fig.savefig(tmp, format=fmt, metadata=metadata.get(fmt), **kwargs)


def remove_temporaries(root: str | os.PathLike) -> None:
    """Remove what killed writers left: atomic_path's temporaries (`.<name>.<random>.tmp`) inside
    `root` and beside it. Call it only while holding the output's lock (no live writer then)."""
    root = Path(root)
    if not root.parent.is_dir():
        return
    stale = list(root.parent.glob(f".{glob.escape(root.name)}.*.tmp"))
    if root.is_dir():
        stale += [p for p in root.rglob(".*.tmp") if p.is_dir()]
    for path in stale:
        shutil.rmtree(path, ignore_errors=True)


def check_output_folder(out: str | os.PathLike, option: str, is_ours: Callable[[Path], bool]) -> Path:
    """An output directory without a settings file: refuse a file, an unwritable location, or a
    non-empty directory that `is_ours` does not recognise as this command's earlier output."""
    out = check_output_location(out, option, "dir")
    if out.is_dir() and any(not p.name.startswith(".") for p in out.iterdir()) and not is_ours(out):
        raise MemdynError(f"{option} {out} is a non-empty directory that memdyn did not write; choose another path or remove it")
    return out


def canonical(obj):
    """A copy of a state to pickle (torch.save) that writes the same bytes for the same content,
    whatever its history: pickle shares a string it meets twice only if it is one object, and a
    state restored from a checkpoint holds copies where a fresh one holds interned literals."""
    if isinstance(obj, dict):
        return {canonical(k): canonical(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return type(obj)(canonical(v) for v in obj)
    if isinstance(obj, str):
        return sys.intern(obj)
    return obj
