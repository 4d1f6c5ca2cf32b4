"""The package face and the front door: the README's Python example runs, imports stay light."""

from __future__ import annotations

import re
import shutil
import subprocess
import sys
from pathlib import Path

import pytest

README = Path(__file__).resolve().parents[1] / "README.md"


def test_readme_python_example_runs(micro_family, tmp_path, monkeypatch, capsys):
    block = re.search(r"## Python API.*?```python\n(.*?)```", README.read_text(), re.S)
    assert block, "README.md has no Python API example"
    (tmp_path / "runs").mkdir()
    shutil.copytree(micro_family, tmp_path / "runs" / "family")
    monkeypatch.chdir(tmp_path)
    names = {}
    exec(compile(block[1], "README.md", "exec"), names)
    assert "model" in capsys.readouterr().out and (tmp_path / "runs" / "api_scores" / "_settings.json").is_file()
    assert set(names["table"].model) == set(names["family"].size_names)


def test_cli_and_package_face_import_no_heavy_library():
    code = ("import sys, dynamics, dynamics.cli; "
            "print(sorted(m for m in ('torch', 'transformers', 'pandas', 'sklearn') if m in sys.modules))")
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True).stdout
    assert out.strip() == "[]", out


def test_package_face_names_resolve():
    import dynamics as md

    for name in md.__all__:
        assert getattr(md, name) is not None, name
    with pytest.raises(AttributeError, match="no attribute 'nope'"):
        md.nope
