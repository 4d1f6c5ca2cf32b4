"""Manifests: an output directory records every part it holds (row count, size, checksum), so a
reader can tell a complete directory from one with a missing, extra, truncated or altered part.

Layout inside an output directory DIR:
  DIR/_manifest/expected.json       the parts the stage set out to write (a union over reruns)
  DIR/_manifest/parts/<part>.json   one record per finished part: {rows, bytes, sha256}

One small record file per part (written atomically after the part itself) instead of one shared
file: processes of a launch write parts at the same time and never contend for the manifest. A
part that exists without its record (a kill between the two writes) counts as unrecorded; the
writer checks and adopts it or recomputes it, and a reader refuses it.
"""

from __future__ import annotations

import hashlib
import json
import os
from pathlib import Path
from typing import Callable, Iterable

from dynamics.errors import MemdynError
from dynamics.files import write_json

MANIFEST = "_manifest"


def _records(root: Path) -> Path:
    return root / MANIFEST / "parts"


def _record_path(root: Path, name: str) -> Path:
    return _records(root) / f"{name}.json"


def checksum(path: str | os.PathLike) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            h.update(block)
    return h.hexdigest()


def expect(root: str | os.PathLike, names: Iterable[str]) -> None:
    """Record the parts a stage is going to write (added to those expected by earlier runs)."""
    root = Path(root)
    path = root / MANIFEST / "expected.json"
    old = set(_read(path, "parts", default=[])) if path.is_file() else set()
    new = old | set(names)
    if new != old:
        write_json(path, {"parts": sorted(new)})


def expected(root: str | os.PathLike) -> list[str] | None:
    path = Path(root) / MANIFEST / "expected.json"
    return _read(path, "parts", default=None) if path.is_file() else None


def record_part(root: str | os.PathLike, name: str, rows: int) -> None:
    """Record a finished part DIR/name (call right after writing it)."""
    root = Path(root)
    part = root / name
    write_json(_record_path(root, name), {"rows": int(rows), "bytes": part.stat().st_size, "sha256": checksum(part)})


def forget_part(root: str | os.PathLike, name: str) -> None:
    """Drop a damaged part and its record, so that it is recomputed."""
    root = Path(root)
    for path in (_record_path(root, name), root / name):
        if path.is_file():
            path.unlink()


def recorded(root: str | os.PathLike) -> dict[str, dict]:
    base = _records(Path(root))
    if not base.is_dir():
        return {}
    out = {}
    for path in base.rglob("*.json"):
        name = str(path.relative_to(base))[: -len(".json")]
        out[name] = _read(path, None, default=None)
    return out


def part_status(root: str | os.PathLike, name: str, record: dict | None = None, deep: bool = True) -> str:
    """ok | missing | unrecorded | truncated | altered (deep=False checks the size only)."""
    root = Path(root)
    part = root / name
    if record is None:
        rec_path = _record_path(root, name)
        record = _read(rec_path, None, default=None) if rec_path.is_file() else None
    if not part.is_file():
        return "missing"
    if not isinstance(record, dict) or not {"rows", "bytes", "sha256"} <= record.keys():
        return "unrecorded"
    if part.stat().st_size != record["bytes"]:
        return "truncated" if part.stat().st_size < record["bytes"] else "altered"
    if deep and checksum(part) != record["sha256"]:
        return "altered"
    return "ok"


def verify(root: str | os.PathLike, parts_glob: Iterable[str], rebuild: str, what: str, prefix: str = "") -> dict[str, dict]:
    """Refuse an output directory that is not exactly what its manifest says: a part expected but
    missing, a part (or any file matching `parts_glob`) not recorded, a truncated or altered part.
    Returns the records. `rebuild` is the command that completes or rebuilds the directory;
    `prefix` limits the check to the parts whose names start with it (one model's folder)."""
    root = Path(root)
    records = {k: v for k, v in recorded(root).items() if k.startswith(prefix)}
    if not recorded(root) and expected(root) is None:
        raise MemdynError(f"{root} has no manifest of its parts ({MANIFEST}/): it was written by an older memdyn "
                          f"or is not a memdyn {what} directory; rebuild it with `{rebuild}`")
    on_disk = {str(p.relative_to(root)) for g in parts_glob for p in root.glob(g) if p.is_file()}
    for name in sorted(on_disk - records.keys()):
        raise MemdynError(f"{root / name} is not in the {what} directory's manifest (an extra or unfinished part); "
                          f"remove it, or rerun `{rebuild}` to rebuild it")
    for name in sorted({n for n in expected(root) or [] if n.startswith(prefix)} | records.keys()):
        status = part_status(root, name, records.get(name))
        if status != "ok":
            raise MemdynError(f"{what} part {root / name} is {status}; rerun `{rebuild}` to recompute it")
    return records


def _read(path: Path, key: str | None, default):
    try:
        obj = json.loads(path.read_text())
        return obj[key] if key else obj
    except (OSError, ValueError, KeyError, TypeError):
        if default is not None or key is None:
            return default
        raise MemdynError(f"{path} is unreadable or truncated; remove it and rerun the command that wrote it") from None



def settle(root: str | os.PathLike, name: str, rows: int, count_rows: Callable[[Path], int]) -> bool:
    """Whether part `name` is finished and intact, for a writer about to resume. A part without a
    record (a kill between the part and its record, or a directory from before manifests) is
    adopted when `count_rows` reads the expected number of rows from it; anything else not ok is
    removed, so the caller recomputes it."""
    root = Path(root)
    status = part_status(root, name)
    if status == "unrecorded":
        try:
            if count_rows(root / name) == rows:
                record_part(root, name, rows)
                return True
        except Exception:  # unreadable: recomputed below
            pass
    elif status == "ok":
        return True
    forget_part(root, name)
    return False


def parquet_rows(path: Path) -> int:
    """Rows of a Parquet file from its footer (reads no data; fails on a truncated or foreign file)."""
    import pyarrow.parquet as pq

    return pq.ParquetFile(path).metadata.num_rows


def rows_of(path: Path) -> int:
    """Rows of a part: a Parquet file's row count, an .npy array's first dimension, else 1."""
    if path.suffix == ".parquet":
        return parquet_rows(path)
    if path.suffix == ".npy":
        import numpy as np

        array = np.load(path, mmap_mode="r")
        return int(array.shape[0]) if array.ndim else 1
    return 1


def record_tree(root: str | os.PathLike, sub: str) -> None:
    """Record every file below DIR/sub (a folder written whole, e.g. by atomic_path)."""
    root = Path(root)
    for path in sorted(p for p in (root / sub).rglob("*") if p.is_file()):
        record_part(root, str(path.relative_to(root)), rows_of(path))


def tree_done(root: str | os.PathLike, sub: str, marker: str) -> bool:
    """Whether the folder DIR/sub (finished when it holds `marker`) is whole and intact, for a
    writer about to resume. A folder without records (written whole by atomic_path, then killed
    before recording, or from before manifests) is adopted; a damaged one is removed with its
    records, so the caller recomputes it."""
    root = Path(root)
    folder = root / sub
    if not (folder / marker).is_file():
        return False
    records = {k: v for k, v in recorded(root).items() if k.startswith(f"{sub}/")}
    files = {str(p.relative_to(root)) for p in folder.rglob("*") if p.is_file()}
    if not records:
        record_tree(root, sub)
        return True
    if files == records.keys() and all(part_status(root, f, records[f]) == "ok" for f in files):
        return True
    import shutil

    shutil.rmtree(folder)
    for name in records:
        forget_part(root, name)
    return False
