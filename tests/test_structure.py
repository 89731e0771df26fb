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


# -- backends own their formats; compression knows no runtime ------------------------------------
RUNTIMES = ("onnxruntime", "openvino", "nncf")


def test_compression_imports_no_runtime():
    """A compression step says what it produced (the variant's export spec); writing a runtime's
    format is that backend's exporter's job. Function-level imports count."""
    for p in sorted((ROOT / "squeezebench" / "compression").glob("*.py")):
        runtimes = {m for m in _imports(p) if m.split(".")[0] in RUNTIMES}
        assert not runtimes, f"{p.name} imports {sorted(runtimes)}: export in squeezebench/backends/ instead"


def _code_strings(path: Path) -> set[str]:
    """String constants of a file's code (docstrings left out)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docs = {id(n.body[0].value) for n in ast.walk(tree)
            if isinstance(n, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef))
            and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    return {n.value for n in ast.walk(tree)
            if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docs}


def test_compression_names_no_backend():
    """Which backend cannot run a variant is the backend's to say (``Backend.support_reason``)."""
    from squeezebench.backends import list_backends

    for p in sorted((ROOT / "squeezebench" / "compression").glob("*.py")):
        named = _code_strings(p) & set(list_backends())
        assert not named, f"{p.name} names backends {sorted(named)}"


def test_a_backend_with_a_new_format_is_one_module(tmp_path, monkeypatch):
    """Everything a backend with a new artifact format needs lives in one module (here: this
    test): an exporter for its format and a backend that loads it, each registered. The engine
    then exports, caches (keyed on the exporter's producers), loads and evaluates through it, and
    skips what it says it cannot run, without a line changed anywhere else."""
    import json

    import numpy as np
    import torch

    from conftest import new_tiny_workbench
    from squeezebench.backends import base
    from squeezebench.backends import Backend, BackendUnavailable, Exporter, Session
    from squeezebench.backends import register_backend, register_exporter
    from squeezebench.cache import ArtifactCache
    from squeezebench.keys import library_version, produced_by
    from squeezebench.models import create_model

    # Registered for this test only.
    monkeypatch.setattr(base, "_BACKENDS", dict(base._BACKENDS))
    monkeypatch.setattr(base, "_EXPORTERS", dict(base._EXPORTERS))

    # -- the one module: squeezebench/backends/numpy_backend.py -----------------------------------
    @produced_by("torch", "numpy")
    def write_npz(v, out: Path) -> str:
        np.savez(out / "weights.npz", **{k: t.detach().float().numpy() for k, t in v.model.state_dict().items()})
        (out / "arch.json").write_text(json.dumps(v.arch, sort_keys=True))
        return "weights.npz"

    @register_exporter
    class NumpyExporter(Exporter):
        format = "numpy"

        def writer(self, v):
            return write_npz

        def files(self, entry: Path, main: str) -> tuple[Path, ...]:
            return (entry / main, entry / "arch.json")

    class FuncSession(Session):
        def __init__(self, module, params):
            self.module, self.params, self.threads = module, params, 1

        def prepare(self, x):
            return x.float()

        def run(self, x):
            with torch.no_grad():
                return torch.func.functional_call(self.module, self.params, (x,))

        def to_numpy(self, out):
            return out.numpy()

    @register_backend
    class NumpyFunc(Backend):
        name = "numpy-func"
        artifact_format = "numpy"

        @classmethod
        def support_reason(cls, v):
            return "numpy weights are float: no int8" if v.export.quantization is not None else None

        def load(self, artifact):
            arch = json.loads((artifact.main.parent / "arch.json").read_text())
            module = create_model(arch["model"], tuple(arch["in_shape"]), arch["num_classes"], **arch["kwargs"])
            with np.load(artifact.main) as z:
                params = {k: torch.from_numpy(z[k]) for k in z.files}
            return FuncSession(module.eval(), params)
    # ----------------------------------------------------------------------------------------------

    keys: dict[str, dict] = {}
    real = ArtifactCache.get_or_build

    def spy(self, namespace, key, build):
        keys[namespace] = key
        return real(self, namespace, key, build)

    monkeypatch.setattr(ArtifactCache, "get_or_build", spy)
    wb = new_tiny_workbench(tmp_path)
    v = wb.baseline("lenet300_100", "tiny")
    assert "numpy" in v.formats and "numpy-func" not in v.unsupported
    a = wb.artifact(v, "numpy")
    assert a.format == "numpy" and {p.name for p in a.files} == {"weights.npz", "arch.json"}
    assert a.nbytes >= 4 * sum(p.numel() for p in v.model.parameters())
    assert keys["artifacts/numpy"]["versions"] == {"numpy": library_version("numpy"), "torch": library_version("torch")}
    ev = wb.evaluate(v, "numpy-func")
    assert ev.parity_agreement == 1.0 and ev.max_abs_logit_diff < 1e-4

    q = wb.variant("lenet300_100", "tiny", "int8-dynamic")
    assert "numpy" not in q.formats and q.unsupported["numpy-func"] == "numpy weights are float: no int8"
    assert q.unsupported_reason("numpy-func", "numpy") == "numpy weights are float: no int8"
    with pytest.raises(BackendUnavailable, match="no int8"):
        wb.session(q, "numpy-func")


ENGINE = ["workbench", "recipes", "training", "cache", "keys", "domain", "record", "fixtures", "pytest_plugin",
          "config", "metrics", "encoding", "settings", "trackers", "torch_int8"]


def _code_names(path: Path) -> set[str]:
    """Identifiers and string constants of a module's code (keys, names: no prose, so docstrings,
    help texts and messages, which may give examples, are excluded)."""
    tree = ast.parse(path.read_text(encoding="utf-8"))
    docstrings = {id(n.body[0].value) for n in ast.walk(tree)
                  if isinstance(n, (ast.Module, ast.FunctionDef, ast.ClassDef, ast.AsyncFunctionDef))
                  and n.body and isinstance(n.body[0], ast.Expr) and isinstance(n.body[0].value, ast.Constant)}
    out = set()
    for n in ast.walk(tree):
        if isinstance(n, ast.Constant) and isinstance(n.value, str) and id(n) not in docstrings \
                and not any(c.isspace() for c in n.value):
            out.add(n.value)
        elif isinstance(n, ast.Name):
            out.add(n.id)
    return out


@pytest.mark.parametrize("path", [ROOT / "squeezebench" / f"{m}.py" for m in ENGINE]
                         + sorted((ROOT / "squeezebench" / "compression").glob("*.py"))
                         + sorted((ROOT / "squeezebench" / "backends").glob("*.py")), ids=lambda p: p.stem)
def test_the_engine_names_no_model_or_dataset(path):
    """Recipes, floors, widths and dataset facts live beside the model and dataset definitions
    (squeezebench/models/, the loaders in squeezebench/data.py) or in the user's config."""
    named = {s for s in _code_names(path) for w in ("lenet", "mnist", "cifar", "resnet") if w in s.lower()}
    assert not named, f"{path.name} names {sorted(named)}"


def test_a_technique_is_one_module(tmp_path, monkeypatch):
    """A compression technique needs its module only: the package imports every module in it
    (so it registers), and what the engine asks of a technique (its token, its handler, what it
    needs the torch module for, its kind in the user's allowed-drop table, its plot group) is
    asked of the config, not listed anywhere else. Here the module is this test's few lines."""
    import pkgutil
    from dataclasses import dataclass

    import torch

    import squeezebench.compression as compression
    from conftest import new_tiny_workbench
    from squeezebench.compression import base
    from squeezebench.config import ConfigFileError, parse_config
    from squeezebench.reports.analysis import technique_family

    registered = {c.__module__.rpartition(".")[2] for c in base.config_types()}
    assert {m.name for m in pkgutil.iter_modules(compression.__path__)} - {"base"} <= registered

    monkeypatch.setattr(base, "_CONFIG_TYPES", list(base._CONFIG_TYPES))
    monkeypatch.setattr(base, "_HANDLERS", dict(base._HANDLERS))

    # -- the one module: squeezebench/compression/negate.py ----------------------------------------
    @dataclass(frozen=True)
    class NegateConfig(base.CompressionConfig):
        kind = "negate"

        def token(self) -> str:
            return "negate"

        @classmethod
        def parse(cls, token):
            return cls() if token == "negate" else None

        def needs_torch_module(self) -> str:
            return "negate weights"

    @base.register_handler(NegateConfig)
    def apply_negate(cfg, state):
        with torch.no_grad():
            state.model.fc3.weight.neg_()
        return state
    # ----------------------------------------------------------------------------------------------

    wb = new_tiny_workbench(tmp_path)
    v = wb.variant("lenet300_100", "tiny", "prune50+negate")
    assert v.chain[-1]["kind"] == "negate"
    assert torch.equal(v.model.fc3.weight, -wb.variant("lenet300_100", "tiny", "prune50").model.fc3.weight)
    assert technique_family("prune50+negate") == "prune+negate"
    user = parse_config({"models": {"lenet300_100": {"allowed-drop": {"negate": 2.0, "negat": 1.0}}}}, "t")
    with pytest.raises(ConfigFileError, match="allowed-drop.negat: unknown technique kind"):
        user.check_technique_kinds({c.kind for c in base.config_types()})
    ok = parse_config({"models": {"lenet300_100": {"allowed-drop": {"negate": 2.0}}}}, "t")
    ok.check_technique_kinds({c.kind for c in base.config_types()})
    assert ok.allowed_drop("negate", "lenet300_100", "tiny") == 2.0
