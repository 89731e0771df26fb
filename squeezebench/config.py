"""Settings beside the user's code: the ``[tool.squeezebench]`` table of a ``pyproject.toml``
(or the top level of a file named by ``--sb-config``).

Per model, per dataset, and per (model, dataset) pair — the most specific wins, then what the
model's definition declares, then defaults computed from the model — it holds the training
recipe, the baseline's top-1 floor, the allowed top-1 drop per technique, the layers structured
pruning must keep, and the calibration size; and the profiles (models × datasets × variants ×
backends × batches)::

    [tool.squeezebench]
    profile = "quick"                       # the profile used when --sb-profile is not given

    [tool.squeezebench.profiles.quick]
    models = ["models.cnn:small_cnn"]
    datasets = ["mnist"]
    variants = ["fp32", "int8-static", "prune50"]
    backends = ["torch-cpu", "onnxruntime"]
    batches = [1, 64]

    [tool.squeezebench.models."models.cnn:small_cnn"]
    recipe = { epochs = 2, lr = 0.05, optimizer = "sgd", nesterov = true }
    floor = 97.0
    keep-layers = ["features.0", "classifier"]
    allowed-drop = { quantize = 0.5, prune = 1.0 }

    [tool.squeezebench.datasets.mnist]
    calibration-images = 256

    [tool.squeezebench.pairs."models.cnn:small_cnn".mnist]
    floor = 98.0

Unknown keys and wrong types are refused when pytest starts, with the key's path, the file and
the fix. Command-line options override the file. Keys may be written with ``-`` or ``_``.
"""
from __future__ import annotations

import dataclasses
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any, Collection

try:
    import tomllib
except ModuleNotFoundError:  # Python 3.10
    import tomli as tomllib

FACT_KEYS = {  # per model / dataset / pair: key -> (python type(s), what it is)
    "recipe": (dict, "training recipe: TrainConfig fields, e.g. { epochs = 5, lr = 0.1 }"),
    "floor": ((int, float), "top-1 floor of the fp32 baseline, percent"),
    "allowed-drop": (dict, "top-1 drop allowed per technique kind, pp: { quantize = 0.5, prune = 1.0, "
                           "structured = 3.0, distill = 4.0, precision = 0.5, scratch = 4.0, share = 1.0 }"),
    "keep-layers": (list, "module names structured pruning must keep whole, e.g. [\"conv1\", \"fc3\"]"),
    "calibration-images": (int, "training images used to calibrate static int8"),
    "student-allowed-drop": ((int, float), "top-1 drop allowed when distilling into a smaller network, pp"),
    "parity-min": (dict, "share of top-1 predictions each runtime must share with the variant's reference, per "
                         "int8 method, a fraction: { static = 0.95, dynamic = 0.95, qat = 0.99 }"),
}
PROFILE_KEYS = {
    "models": (list, "model specs"), "datasets": (list, "dataset names or specs"),
    "pairs": (list, "[model, dataset] pairs, besides every model on every dataset"),
    "variants": (list, "variant ids"), "backends": (list, "backend names"), "batches": (list, "batch sizes"),
}
TOP_KEYS = {"profile", "profiles", "models", "datasets", "pairs", "gate"}
GATE_KEYS = {  # [tool.squeezebench.gate] and each of its groups: key -> what it is (squeezebench.reports.gate)
    "top1-tol": "top-1 drop that fails, percentage points",
    "size-tol": "growth of artifact or compressed bytes that fails, a fraction (0.01 = 1 %)",
    "latency-tol": "normalised slowdown that fails when also significant, a fraction (0.1 = 10 %)",
    "latency-alpha": "significance level of the latency rank test, in (0, 1)",
    "energy-tol": "growth of energy per image that fails, a fraction",
    "int8-share-tol": "drop of the share of MACs run in int8 that fails, 0..1",
}
INT8_METHODS = ("static", "dynamic", "qat")


class ConfigFileError(ValueError):
    """A config file that cannot be used; the message names the file, the key and the fix."""


def _norm(key: str) -> str:
    return key.replace("_", "-")


@dataclass(frozen=True)
class Config:
    """What a ``[tool.squeezebench]`` table says; empty when there is none."""

    source: str = "no config file"
    default_profile: str | None = None
    profiles: dict[str, dict[str, list]] = field(default_factory=dict)
    models: dict[str, dict[str, Any]] = field(default_factory=dict)
    datasets: dict[str, dict[str, Any]] = field(default_factory=dict)
    pairs: dict[tuple[str, str], dict[str, Any]] = field(default_factory=dict)
    # [tool.squeezebench.gate]: tolerance keys, and "groups" (test-id glob -> tolerance keys)
    gate: dict[str, Any] = field(default_factory=dict)

    def fact(self, key: str, model: str | None, dataset: str | None) -> Any:
        """The most specific value of ``key``: the pair's, else the model's, else the dataset's."""
        for scope in (self.pairs.get((model, dataset)) if model and dataset else None,
                      self.models.get(model) if model else None, self.datasets.get(dataset) if dataset else None):
            if scope and key in scope:
                return scope[key]
        return None

    def allowed_drop(self, kind: str, model: str | None, dataset: str | None) -> float | None:
        return self._entry("allowed-drop", kind, model, dataset)

    def _scopes(self) -> list[tuple[str, dict]]:
        return [(f"models.{m!r}", t) for m, t in self.models.items()] \
            + [(f"datasets.{d!r}", t) for d, t in self.datasets.items()] \
            + [(f"pairs.{m!r}.{d!r}", t) for (m, d), t in self.pairs.items()]

    def technique_kinds_named(self) -> set[str]:
        """The technique kinds the ``allowed-drop`` tables name."""
        return {kind for _, facts in self._scopes() for kind in facts.get("allowed-drop") or {}}

    def check_technique_kinds(self, known: Collection[str]) -> None:
        """Refuse an ``allowed-drop`` entry for a technique kind not in ``known`` (the registered
        techniques' kinds: ``squeezebench.compression.config_types()``, which this module, below
        the engine, cannot import). The pytest plugin calls this when it loads the config."""
        for where, facts in self._scopes():
            for kind in facts.get("allowed-drop") or {}:
                if kind not in known:
                    raise ConfigFileError(f"{self.source}: {where}.allowed-drop.{kind}: unknown technique kind; "
                                          f"known: {', '.join(sorted(known))}")

    def parity_min(self, method: str, model: str | None, dataset: str | None) -> float | None:
        """The user's parity minimum for an int8 ``method`` on the pair, if they set one."""
        return self._entry("parity-min", method, model, dataset)

    def _entry(self, key: str, name: str, model: str | None, dataset: str | None) -> float | None:
        """``key``'s ``name`` entry in the most specific scope that has one (pair, model, dataset)."""
        for scope in (self.pairs.get((model, dataset)) if model and dataset else None,
                      self.models.get(model) if model else None, self.datasets.get(dataset) if dataset else None):
            if scope and name in (scope.get(key) or {}):
                return float(scope[key][name])
        return None


def _known_items(where: str, table: Any, source: str, known: dict[str, str]):
    """(raw key, normalised key, value) of a table whose keys must all be ``known`` (key -> what)."""
    if not isinstance(table, dict):
        raise ConfigFileError(f"{source}: {where} must be a table, got {type(table).__name__}")
    for raw, value in table.items():
        key = _norm(raw)
        if key not in known:
            raise ConfigFileError(f"{source}: unknown key {where}.{raw}; known keys: "
                                  + ", ".join(f"{k} ({d})" for k, d in known.items()))
        yield raw, key, value


def _check_facts(where: str, table: Any, source: str) -> dict[str, Any]:
    out = {}
    for raw, key, value in _known_items(where, table, source, {k: d for k, (_, d) in FACT_KEYS.items()}):
        types, what = FACT_KEYS[key]
        if isinstance(value, bool) or not isinstance(value, types):
            raise ConfigFileError(f"{source}: {where}.{raw} must be {what}; got {value!r}")
        if key == "recipe":
            _check_recipe(f"{where}.{raw}", value, source)
        elif key == "allowed-drop":
            for kind, pp in value.items():  # kind names: Config.check_technique_kinds
                if isinstance(pp, bool) or not isinstance(pp, (int, float)) or not 0 <= pp < 100:
                    raise ConfigFileError(f"{source}: {where}.{raw}.{kind} must be percentage points in [0, 100), "
                                          f"got {pp!r}")
        elif key == "parity-min":
            for method, share in value.items():
                if method not in INT8_METHODS:
                    raise ConfigFileError(f"{source}: {where}.{raw}.{method}: unknown int8 method; known: "
                                          + ", ".join(INT8_METHODS))
                if isinstance(share, bool) or not isinstance(share, (int, float)) or not 0 < share <= 1:
                    raise ConfigFileError(f"{source}: {where}.{raw}.{method} must be a fraction in (0, 1], "
                                          f"e.g. 0.97 for 97 %; got {share!r}")
        elif key == "keep-layers" and not all(isinstance(x, str) for x in value):
            raise ConfigFileError(f"{source}: {where}.{raw} must list module names (strings), got {value!r}")
        elif key == "calibration-images" and value < 1:
            raise ConfigFileError(f"{source}: {where}.{raw} must be >= 1, got {value!r}")
        out[key] = value
    return out


def _check_recipe(where: str, recipe: dict, source: str) -> None:
    from squeezebench.training import TrainConfig

    names = {f.name for f in dataclasses.fields(TrainConfig)}
    for k in recipe:
        if k not in names:
            raise ConfigFileError(f"{source}: unknown recipe field {where}.{k}; TrainConfig fields: "
                                  + ", ".join(sorted(names)))
    try:
        TrainConfig(**recipe)
    except (TypeError, ValueError) as e:
        raise ConfigFileError(f"{source}: {where}: {e}") from None


def _check_profile(where: str, table: Any, source: str) -> dict[str, list]:
    if not isinstance(table, dict):
        raise ConfigFileError(f"{source}: {where} must be a table, got {type(table).__name__}")
    out = {}
    for key, value in table.items():
        if key not in PROFILE_KEYS:
            raise ConfigFileError(f"{source}: unknown key {where}.{key}; known keys: {', '.join(PROFILE_KEYS)}")
        if not isinstance(value, list) or not value:
            raise ConfigFileError(f"{source}: {where}.{key} must be a non-empty list of {PROFILE_KEYS[key][1]}, "
                                  f"got {value!r}")
        if key == "pairs":
            bad = [v for v in value if not (isinstance(v, list) and len(v) == 2 and all(isinstance(x, str) for x in v))]
            if bad:
                raise ConfigFileError(f"{source}: {where}.pairs must hold [model, dataset] pairs; bad: {bad!r}")
            out[key] = [list(v) for v in value]
            continue
        kind = int if key == "batches" else str
        bad = [v for v in value if isinstance(v, bool) or not isinstance(v, kind) or (kind is int and v < 1)]
        if bad:
            raise ConfigFileError(f"{source}: {where}.{key} must hold "
                                  f"{'positive integers' if kind is int else 'strings'}; bad: {bad!r}")
        out[key] = list(value)
    missing = {"models", "datasets"} - set(out)
    if missing and ("pairs" not in out or len(missing) == 1):
        raise ConfigFileError(f"{source}: {where} needs {' and '.join(sorted(missing))}"
                              + ("" if "pairs" in out else " (or pairs)"))
    return out


def _check_tolerances(where: str, table: Any, source: str) -> dict[str, float]:
    out = {}
    for raw, key, value in _known_items(where, table, source, GATE_KEYS):
        if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
            raise ConfigFileError(f"{source}: {where}.{raw} must be a number >= 0 ({GATE_KEYS[key]}); got {value!r}")
        if key == "latency-alpha" and not 0 < value < 1:
            raise ConfigFileError(f"{source}: {where}.{raw} must be in (0, 1), e.g. 0.001; got {value!r}")
        out[key] = float(value)
    return out


def _check_gate(table: Any, source: str) -> dict[str, Any]:
    if not isinstance(table, dict):
        raise ConfigFileError(f"{source}: gate must be a table, got {type(table).__name__}")
    rest = {k: v for k, v in table.items() if k != "groups"}
    out: dict[str, Any] = _check_tolerances("gate", rest, source)
    groups = table.get("groups", {})
    if not isinstance(groups, dict):
        raise ConfigFileError(f"{source}: gate.groups must be a table of test-id globs, e.g. "
                              "[tool.squeezebench.gate.groups.\"*-b1\"] latency-tol = 0.15")
    out["groups"] = {glob: _check_tolerances(f"gate.groups.{glob!r}", t, source) for glob, t in groups.items()}
    return out


def parse_config(table: dict, source: str) -> Config:
    """Validate a ``[tool.squeezebench]`` table (already parsed from TOML)."""
    if not isinstance(table, dict):
        raise ConfigFileError(f"{source}: [tool.squeezebench] must be a table")
    for key in table:
        if key not in TOP_KEYS:
            raise ConfigFileError(f"{source}: unknown key tool.squeezebench.{key}; known keys: "
                                  + ", ".join(sorted(TOP_KEYS)))
    profiles = {}
    for name, p in (table.get("profiles") or {}).items():
        profiles[name] = _check_profile(f"profiles.{name}", p, source)
    default = table.get("profile")
    if default is not None and not isinstance(default, str):
        raise ConfigFileError(f"{source}: profile must be a profile name (string), got {default!r}")
    models = {m: _check_facts(f"models.{m!r}", t, source) for m, t in (table.get("models") or {}).items()}
    datasets = {d: _check_facts(f"datasets.{d!r}", t, source) for d, t in (table.get("datasets") or {}).items()}
    pairs = {}
    for m, per in (table.get("pairs") or {}).items():
        if not isinstance(per, dict):
            raise ConfigFileError(f"{source}: pairs.{m!r} must be a table of datasets")
        for d, t in per.items():
            pairs[(m, d)] = _check_facts(f"pairs.{m!r}.{d!r}", t, source)
    gate = _check_gate(table["gate"], source) if "gate" in table else {}
    return Config(source, default, profiles, models, datasets, pairs, gate)


def load_config(path: str | Path | None = None, rootdir: str | Path | None = None) -> Config:
    """The config of ``path`` (a pyproject.toml's ``[tool.squeezebench]``, or any TOML file's top
    level), else of ``<rootdir>/pyproject.toml`` if it has that table, else an empty Config."""
    if path is None:
        if rootdir is None:
            return Config()
        candidate = Path(rootdir) / "pyproject.toml"
        if not candidate.is_file():
            return Config()
        data = _read(candidate)
        table = (data.get("tool") or {}).get("squeezebench")
        return Config() if table is None else parse_config(table, f"{candidate} [tool.squeezebench]")
    p = Path(path)
    if not p.is_file():
        raise ConfigFileError(f"{p}: no such config file (--sb-config names a pyproject.toml with a "
                              "[tool.squeezebench] table, or a TOML file with those keys at its top level)")
    data = _read(p)
    if p.name == "pyproject.toml" or "tool" in data:
        table = (data.get("tool") or {}).get("squeezebench")
        if table is None:
            raise ConfigFileError(f"{p}: has no [tool.squeezebench] table")
        return parse_config(table, f"{p} [tool.squeezebench]")
    return parse_config(data, str(p))


def _read(p: Path) -> dict:
    try:
        return tomllib.loads(p.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError) as e:
        raise ConfigFileError(f"{p}: cannot read ({e})") from None
    except tomllib.TOMLDecodeError as e:
        raise ConfigFileError(f"{p}: not valid TOML ({e})") from None
