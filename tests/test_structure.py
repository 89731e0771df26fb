"""Structural rules of the code base: no import cycles among the engine's modules (a cycle held
together by function-level imports counts), domain types at the bottom of the graph."""
from __future__ import annotations

import ast
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
TOOL = ROOT.parent / "shared" / "tools" / "import_cycles.py"


def test_no_import_cycles():
    if not TOOL.is_file():
        pytest.skip(f"{TOOL} not found (the project's import-cycle checker lives in ../shared/tools)")
    r = subprocess.run([sys.executable, str(TOOL), str(ROOT), "--package", "squeezebench"],
                       capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and "no import cycles" in r.stdout, r.stdout + r.stderr


def _imports(path: Path) -> set[str]:
    """Every module a file imports, at any depth (function-level and TYPE_CHECKING included)."""
    out = set()
    for node in ast.walk(ast.parse(path.read_text(encoding="utf-8"))):
        if isinstance(node, ast.Import):
            out |= {a.name for a in node.names}
        elif isinstance(node, ast.ImportFrom) and node.module:
            out.add(node.module)
    return out


@pytest.mark.parametrize("module", ["domain", "keys", "settings"])
def test_bottom_modules_import_nothing_of_ours(module):
    mine = {m for m in _imports(ROOT / "squeezebench" / f"{module}.py")
            if m.split(".")[0] in ("squeezebench", "models", "fixtures", "reports")}
    assert not mine, f"squeezebench/{module}.py must stay at the bottom of the import graph; imports {mine}"


def test_compression_knows_no_workbench_and_backends_no_compression():
    for p in (ROOT / "squeezebench" / "compression").glob("*.py"):
        assert "squeezebench.workbench" not in _imports(p), f"{p.name} imports the workbench"
    for p in (ROOT / "squeezebench" / "backends").glob("*.py"):
        assert not any(m.startswith("squeezebench.compression") for m in _imports(p)), f"{p.name} imports compression"
