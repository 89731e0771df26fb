"""squeezebench as an installed plugin: pytest finds it through its ``pytest11`` entry points
in a directory with no conftest, a user package named ``models`` keeps working beside it, and
the wheel installs no top-level package but ``squeezebench``."""
from __future__ import annotations

import subprocess
import sys
import zipfile
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]


def test_plugin_loads_through_its_entry_point_without_conftest(pytester: pytest.Pytester):
    assert not list(pytester.path.glob("conftest.py"))
    pytester.makepyfile(test_user="""
        def test_plugin_and_fixtures(pytestconfig, request):
            pm = pytestconfig.pluginmanager
            assert pm.has_plugin("squeezebench") and pm.has_plugin("squeezebench-fixtures")
            wb = request.getfixturevalue("workbench")
            assert type(wb).__module__ == "squeezebench.workbench"
            assert pytestconfig.getoption("sb_profile") is None
    """)
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--sb-cache-dir", str(pytester.path / "cache"))
    r.assert_outcomes(passed=1)
    help_text = pytester.runpytest_subprocess("--help").stdout.str()
    assert "--sb-profile" in help_text and "squeezebench" in help_text


def test_a_user_package_named_models_keeps_working(pytester: pytest.Pytester):
    """The user's own ``models`` package is theirs; squeezebench's registry is ``squeezebench.models``."""
    pkg = pytester.mkpydir("models")
    (pkg / "__init__.py").write_text("from torch import nn\n\n"
                                     "class MyCNN(nn.Sequential):\n"
                                     "    def __init__(self):\n"
                                     "        super().__init__(nn.Flatten(), nn.Linear(4, 2))\n")
    pytester.makepyfile(test_user="""
        import models
        from models import MyCNN
        from squeezebench.models import create_model, list_models

        def test_both(workbench):
            assert models.__file__.startswith(str(__import__("pathlib").Path(__file__).parent))
            assert MyCNN()[1].out_features == 2
            assert "lenet5" in list_models()
            assert create_model("lenet5", (1, 28, 28), 10) is not None
    """)
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider", "--sb-cache-dir", str(pytester.path / "cache"))
    r.assert_outcomes(passed=1)


def test_console_command_and_python_m_reports():
    exe = Path(sys.executable).with_name("squeezebench")
    if not exe.exists():
        pytest.skip(f"{exe} not found: the package is not installed in this interpreter's environment")
    r = subprocess.run([str(exe), "compare", "--help"], capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("usage: squeezebench compare"), r.stdout + r.stderr
    r = subprocess.run([sys.executable, "-m", "reports", "--help"], cwd=ROOT, capture_output=True, text=True, timeout=120)
    assert r.returncode == 0 and r.stdout.startswith("usage: python -m reports"), r.stdout + r.stderr


@pytest.mark.slow
def test_wheel_holds_only_the_squeezebench_package(tmp_path):
    r = subprocess.run([sys.executable, "-m", "pip", "wheel", "--no-deps", "--no-build-isolation", "-q",
                        "-w", str(tmp_path), str(ROOT)], capture_output=True, text=True, timeout=600)
    assert r.returncode == 0, r.stdout[-2000:] + r.stderr[-2000:]
    wheel = next(tmp_path.glob("squeezebench-*.whl"))
    names = zipfile.ZipFile(wheel).namelist()
    top = {n.split("/")[0] for n in names}
    assert {t for t in top if not t.endswith(".dist-info")} == {"squeezebench"}, top
    for must in ("squeezebench/reports/data/study_tables.csv", "squeezebench/models/lenet.py",
                 "squeezebench/fixtures.py", "squeezebench/pytest_plugin.py"):
        assert must in names, must
    entry_points = zipfile.ZipFile(wheel).read(next(n for n in names if n.endswith("entry_points.txt"))).decode()
    assert "[pytest11]" in entry_points and "squeezebench = squeezebench.pytest_plugin" in entry_points
    assert "squeezebench = squeezebench.cli:main" in entry_points
