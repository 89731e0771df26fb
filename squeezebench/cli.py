"""The ``squeezebench`` command (installed as a console script; also ``python -m squeezebench``):
``squeezebench search ...`` runs a budget search (:mod:`squeezebench.search`), ``squeezebench
build ...`` the build phase (pytest with ``--sb-build-only``); every other view reads saved
histories (reports and gates). ``squeezebench --help`` lists the views."""
from __future__ import annotations

import sys

from squeezebench.reports.cli import main as reports_main

BUILD_HELP = """usage: squeezebench build [--tests PATH] [--from-search FILE [--all-trials]] [PYTEST ARGS ...]

Build every variant and artifact the selected records need into the cache, nothing timed:
`pytest PATH --sb-build-only PYTEST ARGS`. Select with the usual
--sb-profile / --sb-models / --sb-datasets / --sb-variants / --sb-backends / -k; parallel with
--sb-workers N (a local Ray) or --sb-ray-address ADDR (a cluster); publish with --sb-shared-cache URL.
  --tests PATH        the benchmark tests (the sb_record tests; repeatable). Default: bench/
  --from-search FILE  the variants of a search's JSON (search_<model>_<dataset>.json): fp32, the
                      front and the winners, on the search's model and dataset
  --all-trials        with --from-search: every completed trial, not only the front"""


def search_selection(path: str, all_trials: bool = False) -> list[str]:
    """``--sb-*`` options selecting a search result's variants (fp32, the front and the winners,
    or every completed trial) on its model, dataset and latency backends."""
    import json

    try:
        r = json.loads(open(path).read())
        spec, trials = r["spec"], r["trials"]
    except (OSError, ValueError, KeyError, TypeError) as e:
        raise SystemExit(f"squeezebench build: --from-search {path}: not a search result ({e})") from None
    picked = ([t["variant"] for t in trials if t.get("state") == "complete"] if all_trials
              else [*r.get("front", []), *(w["variant"] for w in r.get("winners", {}).values())])
    variants = list(dict.fromkeys(["fp32", *filter(None, picked)]))
    backends = list(dict.fromkeys(o.split(":")[1] for o in spec.get("objectives", []) if o.startswith("latency:")))
    out = ["--sb-models", spec["model"], "--sb-datasets", spec["dataset"], "--sb-variants", ",".join(variants)]
    return out + (["--sb-backends", ",".join([*backends, *(["torch-cpu"] if "torch-cpu" not in backends else [])])]
                  if backends else [])


def build_main(argv: list[str]) -> int:
    """``squeezebench build``: pytest with --sb-build-only (see BUILD_HELP)."""
    import os

    import pytest

    if argv[:1] in (["-h"], ["--help"]):
        print(BUILD_HELP)
        return 0
    args = list(argv)
    if "--from-search" in args:
        i = args.index("--from-search")
        if i + 1 >= len(args):
            print("squeezebench build: --from-search needs a search_<model>_<dataset>.json file", file=sys.stderr)
            return 2
        path = args[i + 1]
        del args[i:i + 2]
        all_trials = "--all-trials" in args
        args = [a for a in args if a != "--all-trials"]
        args += search_selection(path, all_trials)
    paths: list[str] = []
    while "--tests" in args:
        i = args.index("--tests")
        paths.append(args[i + 1] if i + 1 < len(args) else "")
        del args[i:i + 2]
    paths = paths or ["bench"]
    missing = [p for p in paths if not os.path.exists(p)]
    if missing:
        print(f"squeezebench build: no {missing[0] or 'path after --tests'} here: run it from your project's "
              "root (where bench/ is) or name your benchmark tests with --tests PATH", file=sys.stderr)
        return 2
    return int(pytest.main([*paths, "--sb-build-only", "-p", "no:cacheprovider", *args]))


def main(argv: list[str] | None = None) -> int:
    """``squeezebench VIEW ...``: summary, machines, speedups, paper, plots, markdown, html, compare,
    trend; or search, or build."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["build"]:
        return build_main(argv[1:])
    if argv[:1] == ["search"]:
        from squeezebench.search import main as search_main

        return search_main(argv[1:], prog="squeezebench")
    return reports_main(argv, prog="squeezebench")


if __name__ == "__main__":
    sys.exit(main())
