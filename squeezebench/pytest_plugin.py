"""The pytest side of squeezebench: options, test generation from a profile, machine info.

Thin on purpose: every decision lives in the engine (profiles, workbench, backends)."""
from __future__ import annotations

import os
from collections.abc import Generator
from pathlib import Path

import pytest

from squeezebench.profiles import PROFILES, Case, get_profile
from squeezebench.settings import ENV_CACHE_DIR, ENV_DATA_DIR, ENV_SHARED_CACHE, available_cores, user_cache_dir

ENV_PROFILE = "SQUEEZEBENCH_PROFILE"
ENV_MACHINE = "SQUEEZEBENCH_MACHINE"
DEFAULT_MIN_TIME = 1.0
MIN_ROUNDS = 5
DEFAULT_ENERGY_WINDOW = 1.0
NO_PROFILE = ("squeezebench: nothing to benchmark: name a profile (--sb-profile, $SQUEEZEBENCH_PROFILE, or "
              "`profile` in [tool.squeezebench]) or give --sb-models and --sb-datasets")


def _csv(value: str | None) -> tuple[str, ...] | None:
    return tuple(v.strip() for v in value.split(",") if v.strip()) if value else None


def pytest_addoption(parser: pytest.Parser) -> None:
    g = parser.getgroup("squeezebench", "squeezebench (compressed-model benchmarks)")
    g.addoption("--sb-profile", default=None,
                help=f"benchmark profile: one of the config file's [tool.squeezebench.profiles], or the built-in "
                     f"{', '.join(PROFILES)} (env {ENV_PROFILE}). Default: the config's `profile`; without one, "
                     "--sb-models x --sb-datasets")
    g.addoption("--sb-config", default=None,
                help="settings file: a pyproject.toml with a [tool.squeezebench] table, or a TOML file with "
                     "those keys at its top level (recipes, floors, allowed drops, layers to keep, "
                     "calibration size, profiles). Default: the rootdir's pyproject.toml, if it has the table")
    g.addoption("--sb-data-dir", "--data-dir", dest="sb_data_dir", default=None,
                help=f"dataset root (env {ENV_DATA_DIR}); a directory you name is only read, never "
                     f"written. Default: {user_cache_dir() / 'data'} with downloads")
    g.addoption("--sb-cache-dir", default=None,
                help=f"cache for trained models, variants and artifacts (env {ENV_CACHE_DIR}). "
                     f"Default: {user_cache_dir()}")
    g.addoption("--sb-threads", type=int, default=None,
                help=f"threads each backend may use, recorded per record. Default: all available "
                     f"cores ({available_cores()})")
    g.addoption("--sb-models", default=None,
                help="comma list of models: registry names (lenet300_100, lenet5, mlp_student, resnet20), "
                     "package.module:callable (a function (in_shape, num_classes) -> nn.Module, or a "
                     "zero-argument factory), torchvision:<name> (untrained, adapted to the dataset), "
                     "timm:<name> (needs timm) or onnx:<path> (an exported model file, weights included: "
                     "runtime-side variants fp32, fp16, int8-static, int8-dynamic on onnxruntime and openvino). "
                     "Default: the profile's")
    g.addoption("--sb-datasets", default=None,
                help="comma list of datasets: mnist, cifar10, folder:<path> for an image-folder "
                     "tree <path>/{train,test}/<class>/*, or package.module:callable returning "
                     "(x_train, y_train, x_test, y_test) or (train_dataset, test_dataset). Default: the profile's")
    g.addoption("--sb-checkpoint", action="append", default=[], metavar="MODEL=PATH",
                help="load MODEL's fp32 baseline from PATH (a state_dict .pt, read with weights_only=True, "
                     "or .safetensors) instead of training it; repeatable or a comma list. Its sha256 "
                     "is part of every cache key built from it")
    g.addoption("--sb-variants", default=None, help="comma list of variant ids. Default: the profile's")
    g.addoption("--sb-backends", default=None,
                help="comma list of backends (torch-cpu, torch-cuda, onnxruntime, openvino). Default: the profile's")
    g.addoption("--sb-batches", default=None, help="comma list of batch sizes. Default: the profile's (1,256)")
    g.addoption("--sb-warmup-time", type=float, default=0.25,
                help="seconds of untimed calls before each benchmark (at least 3 calls). Default: 0.25")
    g.addoption("--sb-min-time", type=float, default=None,
                help="seconds of timed rounds per record: sets pytest-benchmark's max_time for every record "
                     f"(rounds go on until it is reached, at least {MIN_ROUNDS} of them; a test's own "
                     "benchmark marker is overridden). Default: --benchmark-max-time "
                     f"(pytest-benchmark's, {DEFAULT_MIN_TIME})")
    g.addoption("--sb-energy-window", type=float, default=DEFAULT_ENERGY_WINDOW,
                help="seconds of repeated batch calls after each latency benchmark, measured for energy "
                     "(NVML on CUDA, RAPL on the CPU, idle power subtracted) and memory; with no readable energy "
                     "counter only a few calls run, for memory; 0 disables. "
                     f"Default: {DEFAULT_ENERGY_WINDOW}")
    g.addoption("--sb-build-only", action="store_true", default=False,
                help="build every variant and artifact the selected records need into the cache (training, "
                     "fine-tuning, quantization, export), then stop: nothing is timed or evaluated. Default: off")
    g.addoption("--sb-workers", type=int, default=0,
                help="build on a local Ray with this many task slots of --sb-threads CPUs each (needs ray: "
                     "pip install 'squeezebench[cluster]'). Default: 0, in this process")
    g.addoption("--sb-ray-address", default=None,
                help="build on the Ray cluster at this address (ray start --head prints it; 'auto' joins the "
                     "local one). Default: none")
    g.addoption("--sb-build-json", default=None, metavar="PATH",
                help="with --sb-build-only: write what each build task did (seconds, node, skipped backends, "
                     "failures) and the wall time to PATH. Default: none")
    g.addoption("--sb-measure-only", action="store_true", default=False,
                help="never train, quantize or export: read every artifact from the cache (or the shared "
                     "cache) and only measure; a missing one fails its record naming the build command. Default: off")
    g.addoption("--sb-shared-cache", default=None,
                help=f"shared cache, a path or fsspec URL (s3://bucket/prefix, gs://..., an NFS mount; env "
                     f"{ENV_SHARED_CACHE}): entries missing locally are read from it, entries built here are "
                     "published to it. Default: none")
    from squeezebench.machine import default_machine_name

    g.addoption("--sb-machine", default=None, metavar="NAME",
                help=f"this machine's name (env {ENV_MACHINE}): runs are saved in "
                     "<pytest-benchmark's storage>/<its machine id>-NAME/, so folders copied in from "
                     "several machines never collide, and machine_info records it as squeezebench_machine. "
                     f"Default: {default_machine_name()} (<host>-<hash of the CPU model and kernel flags>)")


def load_user_config(config: pytest.Config):
    """``--sb-config FILE``, else the ``[tool.squeezebench]`` table of the rootdir's pyproject.toml."""
    from squeezebench.config import ConfigFileError, load_config

    try:
        user = load_config(config.getoption("sb_config"), rootdir=config.rootpath)
        if user.technique_kinds_named():  # the techniques (and torch) load only when needed
            from squeezebench.compression import config_types

            user.check_technique_kinds({c.kind for c in config_types()})
        return user
    except ConfigFileError as e:
        raise pytest.UsageError(f"squeezebench config: {e}") from None


def selected_profile(config: pytest.Config, user=None):
    """The profile named by --sb-profile, else $SQUEEZEBENCH_PROFILE, else the config's
    ``profile``; a profile of the config file wins over a built-in one of the same name; then the
    --sb-* options narrow or change it. With no profile named, --sb-models and --sb-datasets
    make one (every model on every dataset; fp32, every backend, batch 1 and 256 unless the
    other options say otherwise); without them there is nothing to benchmark: None."""
    from squeezebench.profiles import Profile, profile_from_config

    name = (config.getoption("sb_profile") or os.environ.get(ENV_PROFILE)
            or (user.default_profile if user else None))
    if name is None:
        models, datasets = _csv(config.getoption("sb_models")), _csv(config.getoption("sb_datasets"))
        if not (models and datasets):
            return None
        profile = Profile("options", "from --sb-models and --sb-datasets",
                          pairs=tuple((m, d) for d in datasets for m in models))
    try:
        if name is None:
            pass
        elif user is not None and name in user.profiles:
            profile = profile_from_config(name, user.profiles[name], user.source)
        else:
            profile = get_profile(name, extra=tuple(user.profiles) if user else ())
    except KeyError as e:
        raise pytest.UsageError(str(e.args[0])) from None
    except ValueError as e:
        raise pytest.UsageError(f"squeezebench config: {e}") from None
    batches = _csv(config.getoption("sb_batches"))
    for b in batches or ():
        if not b.isdigit() or int(b) < 1:
            raise pytest.UsageError(f"--sb-batches: {b!r} is not a positive integer; give batch sizes "
                                    "such as --sb-batches 1,256")
    try:
        return profile.override(
            models=_csv(config.getoption("sb_models")), datasets=_csv(config.getoption("sb_datasets")),
            variants=_csv(config.getoption("sb_variants")), backends=_csv(config.getoption("sb_backends")),
            batches=tuple(int(b) for b in batches) if batches else None,
        )
    except ValueError as e:
        raise pytest.UsageError(f"--sb-*: {e}") from None


def _origins(config: pytest.Config, profile) -> dict[str, str]:
    """Where each kind of name of the selection came from: its option, else the profile."""
    return {kind: (f"--sb-{kind}" if config.getoption(f"sb_{kind}") else f"profile {profile.name!r}")
            for kind in ("models", "datasets", "variants", "backends")}


def check_selection(config: pytest.Config, profile) -> None:
    """Every name the run selects (from the options, or from a profile of a config file), checked
    once before any work: a bad one is one ``pytest.UsageError`` line naming the value, where it
    came from and the fix (exit code 4). Names of the built-in (study) profile are known good."""
    from squeezebench.profiles import PROFILES

    builtin = [p for p in PROFILES.values()]
    known = {"models": {m for p in builtin for m, _ in p.pairs}, "datasets": {d for p in builtin for _, d in p.pairs},
             "variants": {v for p in builtin for v in p.variants}, "backends": {b for p in builtin for b in p.backends}}
    origin = _origins(config, profile)
    selected = {"models": [m for m, _ in profile.pairs], "datasets": [d for _, d in profile.pairs],
                "variants": list(profile.variants), "backends": list(profile.backends)}
    # The options' own values too: --sb-models narrows a profile's pairs and could drop a bad name.
    todo = {kind: [n for n in dict.fromkeys([*(_csv(config.getoption(f"sb_{kind}")) or ()), *names])
                   if n not in known[kind]] for kind, names in selected.items()}
    for m in todo["models"]:
        from squeezebench.models import ModelSourceError, ModelUnavailable, resolve

        try:
            resolve(m)
        except ModelUnavailable:
            pass  # an optional library is missing: its benchmarks skip with the reason
        except KeyError as e:
            raise pytest.UsageError(f"{origin['models']}: {e.args[0]}") from None
        except ModelSourceError as e:
            raise pytest.UsageError(f"{origin['models']}: {e}") from None
    for d in todo["datasets"]:
        from squeezebench.data import DataError, check_dataset_spec

        try:
            check_dataset_spec(d)
        except DataError as e:
            raise pytest.UsageError(f"{origin['datasets']}: {e}") from None
    for v in todo["variants"]:
        from squeezebench.compression import parse_variant_id

        try:
            parse_variant_id(v)
        except ValueError as e:
            raise pytest.UsageError(f"{origin['variants']}: variant {v!r}: {e}") from None
    for b in todo["backends"]:
        from squeezebench.backends import list_backends

        if b not in list_backends():
            raise pytest.UsageError(f"{origin['backends']}: unknown backend {b!r}; known: "
                                    f"{', '.join(list_backends())}")


def selected_checkpoints(config: pytest.Config, profile) -> dict[str, Path]:
    """``--sb-checkpoint MODEL=PATH`` (repeated or comma lists) as {model: absolute path}."""
    out: dict[str, Path] = {}
    models = list(dict.fromkeys(m for m, _ in profile.pairs))
    base = Path(config.invocation_params.dir)
    for item in config.getoption("sb_checkpoint") or ():
        for part in _csv(item) or ():
            model, sep, path = (x.strip() for x in part.partition("="))
            where = f"--sb-checkpoint {part}"
            if not sep or not model or not path:
                raise pytest.UsageError(f"{where}: expected MODEL=PATH, e.g. --sb-checkpoint lenet5=weights/lenet5.pt")
            if model not in models:
                raise pytest.UsageError(f"{where}: model {model!r} is not benchmarked in this run "
                                        f"({', '.join(models)}); name one of those, or add it with --sb-models")
            from squeezebench.models.onnx_file import is_onnx_spec

            if is_onnx_spec(model):
                raise pytest.UsageError(f"{where}: {model} is an exported file that holds its own weights; "
                                        "drop --sb-checkpoint for it (or export the model with the weights you want)")
            p = Path(path).expanduser()
            p = p if p.is_absolute() else base / p
            if not p.is_file():
                raise pytest.UsageError(f"{where}: no such file {p}")
            if p.suffix.lower() == ".safetensors":
                try:
                    import safetensors  # noqa: F401
                except ImportError:
                    raise pytest.UsageError(f"{where}: reading .safetensors needs the safetensors package "
                                            "(pip install safetensors), or save a .pt state_dict") from None
            if out.get(model, p) != p:
                raise pytest.UsageError(f"{where}: {model} already has checkpoint {out[model]}; give one per model")
            out[model] = p
    return out


def pytest_configure(config: pytest.Config) -> None:
    # Declared by the plugin, so a user's project with --strict-markers needs no ini lines.
    config.addinivalue_line("markers", "bench: a benchmark record (model x dataset x variant x backend x batch)")
    config.addinivalue_line("markers", "gpu: needs a CUDA device; skipped with a reason without one")
    user = load_user_config(config)
    config._squeezebench_config = user  # type: ignore[attr-defined]
    profile = selected_profile(config, user)
    if profile is not None:
        check_selection(config, profile)
    config._squeezebench_profile = profile  # type: ignore[attr-defined]
    config._squeezebench_checkpoints = (  # type: ignore[attr-defined]
        selected_checkpoints(config, profile) if profile is not None else {})


def machine_name(config: pytest.Config) -> str:
    """--sb-machine, else $SQUEEZEBENCH_MACHINE, else ``<host>-<cpuhash>``; made safe for a folder name."""
    from squeezebench.machine import default_machine_name, safe_machine_name

    given = config.getoption("sb_machine") or os.environ.get(ENV_MACHINE)
    if not given:
        return default_machine_name()
    name = safe_machine_name(given)
    if not name:
        raise pytest.UsageError(f"--sb-machine / ${ENV_MACHINE}: {given!r} has no letter or digit to name "
                                "a folder with; give e.g. --sb-machine lab-xeon-1")
    return name


@pytest.hookimpl(tryfirst=True, specname="pytest_configure")
def pytest_configure_machine(config: pytest.Config) -> None:
    """The machine's name, checked before pytest-benchmark starts; --benchmark-compare held back
    until the storage folder is renamed (pytest_sessionstart_storage_per_machine): pytest-benchmark loads the
    runs to compare with in its own pytest_configure, from the folder it names then."""
    config._squeezebench_machine = machine_name(config)  # type: ignore[attr-defined]
    compare = getattr(config.option, "benchmark_compare", None)  # absent with -p no:benchmark
    config._squeezebench_compare = compare  # type: ignore[attr-defined]
    if compare:
        config.option.benchmark_compare = False


@pytest.hookimpl(tryfirst=True, specname="pytest_sessionstart")
def pytest_sessionstart_storage_per_machine(session: pytest.Session) -> None:
    """One storage folder per machine: pytest-benchmark saves into ``<storage>/<machine id>/`` and
    its machine id (``Linux-CPython-3.11-64bit``) is the same on every Linux box, so two machines'
    folders would collide when copied together; the folder becomes ``<machine id>-<machine name>``.
    Here, because pytest-benchmark makes its session in a trylast pytest_configure (no wrapper can
    follow a historic hook); then --benchmark-compare loads this machine's previous runs."""
    config = session.config
    bs = getattr(config, "_benchmarksession", None)
    name = getattr(config, "_squeezebench_machine", None)
    if bs is None or name is None or str(bs.machine_id).endswith(f"-{name}"):
        return
    bs.machine_id = f"{bs.machine_id}-{name}"
    if hasattr(bs.storage, "default_machine_id"):
        bs.storage.default_machine_id = bs.machine_id
    compare = getattr(config, "_squeezebench_compare", None)
    if compare:
        config.option.benchmark_compare = bs.compare = compare
        bs.handle_loading()


def pytest_generate_tests(metafunc: pytest.Metafunc) -> None:
    if "case" not in metafunc.fixturenames:
        return
    profile = metafunc.config._squeezebench_profile  # type: ignore[attr-defined]
    if profile is None:
        metafunc.parametrize("case", [pytest.param(None, id="no-profile", marks=pytest.mark.skip(reason=NO_PROFILE))],
                             scope="session")
        return
    cases: list[Case] = profile.cases()
    params = [
        pytest.param(c, id=c.id, marks=[pytest.mark.gpu] if c.backend == "torch-cuda" else [])
        for c in cases
    ]
    metafunc.parametrize("case", params, scope="session")


def pytest_collection_modifyitems(config: pytest.Config, items: list[pytest.Item]) -> None:
    """--sb-min-time, through pytest-benchmark's documented ``benchmark`` marker: when given it
    sets ``max_time`` for every benchmark (shorter or longer than pytest-benchmark's own);
    ``min_rounds`` is raised to at least MIN_ROUNDS for the statistics."""
    min_time = config.getoption("sb_min_time")
    if min_time is not None and min_time < 0:
        raise pytest.UsageError(f"--sb-min-time must be >= 0, got {min_time}")
    try:
        cli_max_time = float(config.getoption("benchmark_max_time"))
        cli_min_rounds = int(config.getoption("benchmark_min_rounds"))
    except ValueError:  # pytest-benchmark not loaded (-p no:benchmark)
        return
    for item in items:
        if "benchmark" not in getattr(item, "fixturenames", ()):
            continue
        marker = item.get_closest_marker("benchmark")
        kwargs = dict(marker.kwargs) if marker else {}
        kwargs["max_time"] = float(min_time) if min_time is not None else float(kwargs.get("max_time", cli_max_time))
        kwargs["min_rounds"] = max(int(kwargs.get("min_rounds", cli_min_rounds)), MIN_ROUNDS)
        item.add_marker(pytest.mark.benchmark(**kwargs), append=False)


def pytest_benchmark_update_machine_info(config: pytest.Config, machine_info: dict) -> None:
    from squeezebench.machine import machine_facts

    profile = config._squeezebench_profile  # type: ignore[attr-defined]
    machine_info["squeezebench"] = {
        **machine_facts(),
        "threads": config.getoption("sb_threads") or available_cores(),
        "profile": profile.name if profile is not None else None,
    }
    machine_info["squeezebench_machine"] = getattr(config, "_squeezebench_machine", None) or machine_name(config)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item: pytest.Item, call: pytest.CallInfo) -> Generator[None, object, None]:
    """Backstop for record validity: pytest-benchmark saves the record of a test that failed after
    its measurement, so any failure in the call phase (a guardrail assert, an exception) marks
    that record ``valid: False`` with the failure's first line among its ``invalid_reasons``."""
    outcome = yield
    if call.when != "call" or call.excinfo is None or call.excinfo.errisinstance(pytest.skip.Exception):
        return
    fixture = getattr(item, "funcargs", {}).get("benchmark")
    info = getattr(fixture, "extra_info", None)
    if not isinstance(info, dict):
        return
    report = outcome.get_result()
    text = str(call.excinfo.value).strip() or call.excinfo.typename
    line = f"test failed: {text.splitlines()[0][:300]}"
    if hasattr(report, "wasxfail"):
        line += " (xfail)"
    reasons = list(info.get("invalid_reasons") or [])
    # The bench test's own assert repeats the reasons it already recorded: do not list them twice.
    if not (reasons and info.get("valid") is False and all(r in text for r in reasons)):
        reasons.append(line)
    # In place: pytest-benchmark's saved stats hold this very dict (unless the test rebound
    # extra_info after measuring, hence the second update).
    info.update(valid=False, invalid_reasons=reasons)
    saved = getattr(getattr(fixture, "stats", None), "extra_info", None)
    if isinstance(saved, dict) and saved is not info:
        saved.update(valid=False, invalid_reasons=list(reasons))


def build_command(config: pytest.Config) -> str:
    """The command that builds what this run needs: its own arguments, as a build."""
    import shlex

    drop = {"--sb-measure-only", "--benchmark-autosave"}
    args = [a for a in config.invocation_params.args
            if a not in drop and not a.startswith(("--benchmark-json", "--benchmark-save", "--benchmark-compare"))]
    return "pytest " + shlex.join([*args, "--sb-build-only"])


@pytest.hookimpl(trylast=True)
def pytest_collection_finish(session: pytest.Session) -> None:
    """--sb-build-only: the selected records' variants and artifacts (after -k / -m), built in
    order (squeezebench.build), then the run stops with the build's exit status."""
    config = session.config
    if not config.getoption("sb_build_only"):
        return
    if config.getoption("sb_measure_only"):
        raise pytest.UsageError("--sb-build-only and --sb-measure-only exclude each other: build on one "
                                "machine, measure on another")
    from squeezebench.build import BuildContext, BuildError, importable_paths, plan_build, run_build
    from squeezebench.settings import resolve_settings

    cases = list(dict.fromkeys(c for item in session.items
                               if (c := getattr(getattr(item, "callspec", None), "params", {}).get("case")) is not None))
    tr = config.pluginmanager.getplugin("terminalreporter")
    say = (lambda msg: tr.write_line(f"[squeezebench] {msg}")) if tr is not None else print
    try:
        settings = resolve_settings(data_dir=config.getoption("sb_data_dir"), cache_dir=config.getoption("sb_cache_dir"),
                                    threads=config.getoption("sb_threads"), quiet=True,
                                    shared_cache=config.getoption("sb_shared_cache"))
    except ValueError as e:
        raise pytest.UsageError(f"squeezebench: {e}") from None
    from squeezebench.cache import ArtifactCache, SharedCacheError

    try:  # an unreachable or read-only shared cache: one line before any task starts
        ArtifactCache(settings.cache_dir, shared=settings.shared_cache)
    except SharedCacheError as e:
        pytest.exit(f"squeezebench build: {e}", returncode=4)
    workers = config.getoption("sb_workers")
    if workers < 0:
        raise pytest.UsageError(f"--sb-workers must be >= 0, got {workers}")
    ctx = BuildContext(settings, getattr(config, "_squeezebench_config", None),
                       tuple((m, str(p)) for m, p in getattr(config, "_squeezebench_checkpoints", {}).items()),
                       importable_paths())
    tasks = plan_build(cases)
    say(f"building {len(tasks)} variants for {len(cases)} records into {settings.cache_dir}"
        + (f" (shared: {settings.shared_cache})" if settings.shared_cache else ""))
    try:
        result = run_build(ctx, tasks, workers=workers, address=config.getoption("sb_ray_address"), say=say,
                           progress=say if config.get_verbosity() > 0 else None)
    except BuildError as e:
        pytest.exit(f"squeezebench build: {e}", returncode=4)
    for line in result.summary().splitlines():
        say(line)
    if config.getoption("sb_build_json"):
        import dataclasses
        import json

        from squeezebench.cache import atomic_write_bytes

        doc = {**dataclasses.asdict(result), "tasks": [dataclasses.asdict(t) for t in tasks],
               "threads": settings.threads}
        atomic_write_bytes(Path(config.getoption("sb_build_json")), json.dumps(doc, indent=1).encode())
    pytest.exit("build finished" if result.ok else f"build: {len(result.failed)} tasks failed",
                returncode=0 if result.ok else 1)
