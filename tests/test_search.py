"""The budget search (issue 13): its space, the trial bookkeeping (planted optimum, budgets,
crashes, early stops, a budget nobody meets) against a fake engine whose numbers are a known
function of the variant id, then the real engine on the tiny model (trials are cached variants,
the study resumes, the same seed gives the same trials) and the command's bad input."""
from __future__ import annotations

import json
import re
from types import SimpleNamespace

import pytest

pytest.importorskip("optuna")

from squeezebench.compression import parse_variant_id, variant_id  # noqa: E402
from squeezebench.search import (  # noqa: E402
    Objective, Search, SearchError, SearchSpace, SearchSpec, main, pareto_front,
)

BACKENDS = ["torch-cpu", "onnxruntime", "openvino"]


class FakeSearch(Search):
    """Numbers planted as a function of the chain: unstructured pruning at p % costs
    ``max(0, p - 90)`` pp of a 99 % baseline and leaves (100 - p) % of 100 000 bytes; global
    scope is as good as layer-wise; int8 quarters the bytes and costs 0.2 pp."""

    def __init__(self, tmp_path, spec, crash=lambda vid: False, partial=lambda prefix: 99.0):
        super().__init__(SimpleNamespace(settings=SimpleNamespace(cache_dir=tmp_path)), spec)
        self.crash, self.partial = crash, partial
        self.measured: list[str] = []

    def baseline_info(self):
        return False, 99.0, 99.0 - self.spec.budget_pp if self.spec.budget_pp is not None else self.spec.floor

    def partial_top1(self, prefix):
        return self.partial(prefix)

    def measure(self, vid):
        self.measured.append(vid)
        if self.crash(vid):
            raise RuntimeError(f"planted crash in {vid}")
        top1, size = 99.0, 100_000.0
        for cfg in parse_variant_id(vid):
            if cfg.kind == "prune":
                pct = cfg.sparsity * 100
                top1 -= max(0.0, pct - 90)
                size *= (100 - pct) / 100
            elif cfg.kind == "quantize":
                top1 -= 0.2
                size /= 4
        return {"top1": top1, "parity": 1.0, "compressed_bytes": size, "macs": 1000, "params": 100,
                "nonzero_params": 10}

    def _fp32_onnx_bytes(self):
        return 100_000


def spec(**kw) -> SearchSpec:
    base = dict(model="m", dataset="d", objectives=(Objective("compressed_bytes"),), budget_pp=0.5, trials=40,
                seed=0, space=SearchSpace(techniques=("prune",), sparsity=(80, 95), max_steps=1, max_epochs=1))
    base.update(kw)
    return SearchSpec(**base)


def test_finds_the_planted_optimum_and_respects_the_budget(tmp_path):
    s = FakeSearch(tmp_path, spec())
    r = s.run()
    # the smallest variant within 0.5 pp of 99 %: 90 % sparsity (90.5 would be next, but is not an integer)
    (best,) = parse_variant_id(r["winners"]["compressed_bytes"]["variant"])
    assert best.sparsity == pytest.approx(0.9)  # any scope, any layers kept dense: the fake ignores them
    assert r["floor"] == 98.5
    assert len(r["trials"]) == 40 and len(s.measured) <= 40  # the trial budget
    assert all(r_["top1"] >= 98.5 for r_ in r["trials"] if r_.get("feasible"))
    assert all(t["top1"] >= 98.5 for t in r["winners"].values())
    # the front: no feasible trial beats a front member on both top-1 and bytes
    feasible = [t for t in r["trials"] if t.get("feasible")]
    for v in r["front"]:
        f = next(t for t in feasible if t["variant"] == v)
        assert not any(t["top1"] >= f["top1"] and t["compressed_bytes"] < f["compressed_bytes"] for t in feasible)


def test_a_crashing_trial_is_recorded_and_the_search_goes_on(tmp_path):
    s = FakeSearch(tmp_path, spec(trials=12), crash=lambda vid: vid.startswith("prune"))
    r = s.run()
    failed = [t for t in r["trials"] if t["state"] == "fail"]
    assert failed and len(r["trials"]) == 12
    assert all(re.fullmatch(r"RuntimeError: planted crash in prune\d+(-s1)?(-e1)?(-kf|-kl|-kfl)?", t["reason"]) for t in failed)
    assert r["counts"]["complete"] + r["counts"]["fail"] + r["counts"]["pruned"] == 12
    assert r["winners"]["compressed_bytes"]["variant"].startswith("gprune")


def test_hopeless_trials_stop_after_their_training_step(tmp_path):
    sp = spec(trials=10, space=SearchSpace(techniques=("prune", "int8-static"), sparsity=(80, 95), max_steps=1,
                                           max_epochs=1))
    s = FakeSearch(tmp_path, sp, partial=lambda prefix: 50.0)
    r = s.run()
    stopped = [t for t in r["trials"] if t["state"] == "pruned"]
    # every chain with a pruning step and something after it is stopped before being measured
    assert stopped and all(re.match(r"stopped after g?prune\d+(-s1)?(-e1)?(-kf|-kl|-kfl)?: top-1 50\.00 % < floor 98\.50 %", t["reason"])
                           for t in stopped)
    assert not any("+" in v for v in s.measured)


def test_a_budget_nobody_meets_ends_with_the_best_and_the_miss(tmp_path):
    s = FakeSearch(tmp_path, spec(trials=8, budget_pp=None, floor=99.5))
    r = s.run()
    assert not r["winners"] and not r["front"]
    assert re.search(r"no variant met the floor 99\.50 %: the best, \S+, reached 99\.00 %, 0\.50 pp short", r["missed"])


def test_same_seed_same_trials_and_the_study_resumes(tmp_path):
    a = FakeSearch(tmp_path / "a", spec(trials=10)).run()
    b = FakeSearch(tmp_path / "b", spec(trials=10)).run()
    assert [t["variant"] for t in a["trials"]] == [t["variant"] for t in b["trials"]]
    # more budget on the same study: the first ten are kept, five are added
    more = FakeSearch(tmp_path / "a", spec(trials=15))
    c = more.run()
    assert len(c["trials"]) == 15 and len(more.measured) <= 5
    assert [t["variant"] for t in c["trials"][:10]] == [t["variant"] for t in a["trials"]]


def test_the_space_gives_canonical_variant_ids():
    import optuna

    space = SearchSpace()
    seen, vids = set(), []
    study = optuna.create_study(sampler=optuna.samplers.RandomSampler(seed=1))
    for _ in range(60):
        t = study.ask()
        vid = space.suggest(t, has_conv=True)
        assert variant_id(parse_variant_id(vid)) == vid  # readable, parseable, canonical
        seen.add(vid.split("+")[-1].rstrip("0123456789-eg").split("-")[0])
        vids.append(vid)
        if vid.endswith("+fp16"):  # the cast comes last, and only after sharing or pruning alone
            assert not any(s.startswith(("int8", "woq4")) for s in vid.split("+"))
        study.tell(t, 0.0)
    assert len(seen) > 3 and any(v.endswith("+fp16") for v in vids)


@pytest.mark.parametrize("text,err", [("latency:tpu:b1", "unknown objective 'latency:tpu:b1'"),
                                      ("speed", "unknown objective 'speed'"),
                                      ("latency:onnxruntime:b0", "unknown objective"),
                                      ("artifact_bytes", "unknown objective")])
def test_unknown_objectives_are_one_clear_message(text, err):
    with pytest.raises(SearchError, match=re.escape(err)):
        Objective.parse(text, BACKENDS)


def test_objectives_parse():
    assert Objective.parse("latency:onnxruntime:b256", BACKENDS) == Objective("latency", "onnxruntime", 256)
    assert Objective.parse("artifact_bytes:openvino", BACKENDS).name == "artifact_bytes:openvino"


@pytest.mark.parametrize("kw,err", [({"budget_pp": None}, "exactly one accuracy budget"),
                                    ({"floor": 98.0}, "exactly one accuracy budget"),
                                    ({"trials": None}, "trial budget"),
                                    ({"objectives": ()}, "at least one objective")])
def test_bad_specs_name_the_fix(kw, err):
    with pytest.raises(SearchError, match=err):
        spec(**kw)


def test_bad_space_names_the_fix():
    with pytest.raises(SearchError, match="unknown technique"):
        SearchSpace(techniques=("prune", "magic"))
    with pytest.raises(SearchError, match="needs students"):
        SearchSpace(techniques=("kd",))


def test_pareto_front_minimises_and_maximises():
    rows = [{"variant": "a", "top1": 99, "b": 10}, {"variant": "b", "top1": 98, "b": 5},
            {"variant": "c", "top1": 97, "b": 7}, {"variant": "d", "top1": 99, "b": 12}]
    assert pareto_front(rows, [("top1", -1.0), ("b", 1.0)]) == ["a", "b"]


def test_command_bad_input_is_one_line(capsys):
    assert main(["--model", "lenet5", "--dataset", "mnist", "--objective", "latency:tpu:b1"]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("squeezebench search: unknown objective 'latency:tpu:b1'")


# -- the real engine on the tiny model ---------------------------------------------------------
def test_trials_are_cached_variants_on_the_real_engine(tiny_workbench, tmp_path):
    pytest.importorskip("onnxruntime")
    sp = SearchSpec("lenet300_100", "tiny", (Objective("compressed_bytes"),), budget_pp=5.0, trials=4, seed=3,
                    space=SearchSpace(techniques=("prune", "int8-static"), sparsity=(50, 90), max_steps=1,
                                      max_epochs=1))
    s = Search(tiny_workbench, sp)
    r = s.run()
    done = [t for t in r["trials"] if t["state"] == "complete"]
    assert len(r["trials"]) == 4 and done
    for t in done:  # each trial is the variant the engine builds under that id, with its measured numbers
        v = tiny_workbench.variant("lenet300_100", "tiny", t["variant"])
        assert v.variant_id == t["variant"]
        assert tiny_workbench.evaluate(v, "onnxruntime").top1 == t["top1"]
        assert tiny_workbench.static_facts(v)["compressed_bytes"] == t["compressed_bytes"]
    assert (tiny_workbench.settings.cache_dir / "search" / f"{sp.study_name()}.db").is_file()
    from squeezebench.search import write_outputs

    files = write_outputs(r, tmp_path / "out")
    data = json.loads(files["json"].read_text())
    assert data["study"] == sp.study_name() and len(data["trials"]) == 4
    assert "| objective | variant |" in files["md"].read_text()
    assert files["png"].read_bytes()[:4] == b"\x89PNG"
    page = files["html"].read_text()
    assert 'id="pareto"' in page and 'class="sb"' in page and "<script src" not in page


def test_sb_search_fixture_runs_it_from_pytest(pytester, tmp_path):
    pytest.importorskip("onnxruntime")
    pytester.makepyfile(tinydata='''
import torch

def data():
    g = torch.Generator().manual_seed(0)
    def split(n):
        y = torch.randint(0, 4, (n,), generator=g)
        x = torch.randint(0, 60, (n, 1, 16, 16), generator=g)
        for k in range(4):
            r, c = divmod(k, 2)
            x[y == k, :, r * 8:(r + 1) * 8, c * 8:(c + 1) * 8] += 150
        return x.clamp(0, 255).to(torch.uint8), y
    return (*split(256), *split(128))
''')
    pytester.makepyfile(test_budget='''
from squeezebench.search import SearchSpace

def test_budget(sb_search, tmp_path):
    r = sb_search("lenet300_100", "tinydata:data", budget_pp=5.0, trials=3, output=tmp_path, latency_runs=2,
                  objectives=("compressed_bytes", "latency:onnxruntime:b1"),
                  space=SearchSpace(techniques=("prune",), sparsity=(50, 60), max_steps=1, max_epochs=1))
    assert len(r["trials"]) == 3
    assert "compressed_bytes" in r["winners"], r.get("missed")
    assert (tmp_path / "search_lenet300_100_tinydata_data.json").is_file()
    # latency: the harness's own records, for fp32 and the front, on the runtime asked and torch eager
    lat = r["latency"]
    assert set(lat) == {"latency:onnxruntime:b1", "latency:torch-cpu:b1"}
    assert set(lat["latency:onnxruntime:b1"]) == {"fp32", *r["front"]}
    for m in lat["latency:onnxruntime:b1"].values():  # two fresh processes: the median and the range
        assert m["runs"] == 2 and len(m["runs_us"]) == 2
        assert m["spread_us"] == [min(m["runs_us"]), max(m["runs_us"])]
        assert m["spread_us"][0] <= m["per_image_us"] <= m["spread_us"][1]
    w = r["winners"]["latency:onnxruntime:b1"]
    assert w["variant"] in {"fp32", *r["front"]} and w["speedup_vs_fp32_same_runtime"] > 0
    lo, hi = w["speedup_vs_fp32_same_runtime_ci"]
    assert lo <= w["speedup_vs_fp32_same_runtime"] <= hi
    assert w["reliable"] == (w["variant"] == "fp32" or lo > 1.0)
    assert w["speedup_vs_fp32_torch_eager"] > 0
''')
    r = pytester.runpytest_subprocess("-p", "no:cacheprovider", f"--sb-cache-dir={tmp_path / 'cache'}",
                                      "--sb-threads=1", "-q", "-s")
    assert r.ret == 0, r.stdout.str()[-3000:]


def test_with_latency_each_compute_precision_gets_its_own_front(tmp_path):
    """An fp16 or int8 copy of a chain has its MACs and fewer bytes; with MACs as the only latency
    guide it would hide the fp32 chain, which often runs faster. Each precision's front is timed."""
    import optuna

    def study_of(rows):
        study = optuna.create_study(directions=["maximize", "minimize", "minimize"])
        for vid, top1, size in rows:
            attrs = {"variant": vid, "top1": top1, "parity": 1.0, "compressed_bytes": size, "macs": 1000,
                     "params": 100, "nonzero_params": 10, "seconds": 1.0}
            study.add_trial(optuna.trial.create_trial(values=[top1, size, 1000], user_attrs=attrs))
        return study

    rows = [("prune80", 99.0, 20_000), ("prune90", 98.8, 10_000), ("prune90+fp16", 98.8, 5_000),
            ("prune90+int8-static", 98.6, 2_500), ("prune85", 98.7, 15_000)]
    lat = (Objective("compressed_bytes"), Objective.parse("latency:onnxruntime:b1", BACKENDS))
    with_latency = FakeSearch(tmp_path, spec(objectives=lat)).summarise(study_of(rows), 99.0, 98.5)
    assert set(with_latency["front"]) == {"prune80", "prune90", "prune90+fp16", "prune90+int8-static"}
    size_only = FakeSearch(tmp_path, spec()).summarise(study_of(rows), 99.0, 98.5)
    assert "prune90" not in size_only["front"] and "prune90+fp16" in size_only["front"]  # dominated on size


def test_compute_precision_of_a_chain():
    from squeezebench.search import compute_precision

    assert [compute_precision(v) for v in ("fp32", "prune90+share4+fp16", "kd-t4+prune80+int8-qat-pt",
                                           "sprune50-dense+woq4-g128", "prune90")] == \
        ["fp32", "fp16", "int8", "woq4", "fp32"]


def test_latency_runs_combine_into_a_median_and_paired_ratios():
    from squeezebench.search import combine_latency_runs

    def run(fp32, fast):
        return {"latency:onnxruntime:b1": {"fp32": {"per_image_us": fp32, "ci95_us": [fp32 - 0.1, fp32 + 0.1], "valid": True},
                                            "prune90": {"per_image_us": fast, "ci95_us": None, "valid": True}}}

    # each run's own interval is tight, but the machine drifts between runs: 1.10x, 0.95x, 1.05x
    runs = [run(33.0, 30.0), run(38.0, 40.0), run(34.65, 33.0)]
    lat = combine_latency_runs(runs)
    m = lat["latency:onnxruntime:b1"]["prune90"]
    assert m["per_image_us"] == 33.0 and m["spread_us"] == [30.0, 40.0] and m["runs_us"] == [30.0, 40.0, 33.0]
    s = FakeSearch.__new__(FakeSearch)
    s.latency = [Objective.parse("latency:onnxruntime:b1", BACKENDS)]
    w = s.latency_winners({"latency": lat, "baseline_top1": 99.0,
                           "trials": [{"variant": "prune90", "feasible": True, "top1": 98.9}]})["latency:onnxruntime:b1"]
    assert w["variant"] == "prune90" and w["speedup_vs_fp32_same_runtime"] == 1.05  # median of the paired ratios
    assert w["speedup_vs_fp32_same_runtime_ci"] == [0.95, 1.1] and w["reliable"] is False
    assert combine_latency_runs([runs[0]]) is runs[0]  # one run: as measured, with its interval


def test_latency_runs_must_be_positive():
    with pytest.raises(SearchError, match="latency-runs"):
        spec(latency_runs=0)
    assert spec(latency_runs=5).study_name() == spec().study_name()  # not part of the study
