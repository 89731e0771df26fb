"""Compress to a budget (issue 13): an optuna multi-objective search over compression chains.

``squeezebench search --model M --dataset D --budget-pp 0.5 --objective compressed_bytes`` asks
"the smallest (or the fastest on my runtime at my batch) variant within 0.5 pp of my baseline".

* **Space** (:class:`SearchSpace`): which techniques in which order (structured pruning, then
  unstructured pruning, then self-distillation into the pruned model, then one of weight
  sharing, static int8, QAT int8 or 4-bit weight-only, then an fp16 cast after sharing or
  none) and their parameters (ratios, sparsity,
  its schedule and scope, KD temperature and alpha, per-tensor or per-channel, calibration
  size, bits, group size). Student width is the structured-pruning ratio followed by
  self-distillation; registry students join with ``students``.
* **Trials are ordinary variants**: each trial's chain is a variant id, built and cached by the
  engine exactly as ``pytest bench/ --sb-variants <id>`` builds it.
* **Accuracy, then latency**: top-1 on the full test set through ``eval_backend`` (ONNX Runtime
  by default: the fastest of our CPU runtimes at batch 256). Optuna (TPE, multi-objective, the
  accuracy floor as a constraint) sees top-1 and the size objectives; when latency is asked, the
  MACs per image too, as a guide only. Latency is then measured with the harness's own timing
  (a pytest-benchmark run of the plugin's ``sb_record``) for the feasible variants on the
  accuracy x size (x MACs) front, per requested runtime and batch.
* **Hopeless trials stop early**: after each training step of a chain (structured pruning,
  pruning, distillation) the partial model's top-1 on the test set is checked; below the floor
  minus ``stop_slack_pp`` the trial is pruned (later steps, quantization or sharing, rarely win
  accuracy back).
* **Resumable**: the study lives in ``<cache>/search/<study>.db`` (sqlite); an interrupted search
  continues where it stopped (a trial that was running is retried). Same seed and trial budget,
  uninterrupted: the same trials (training is bit-reproducible at a fixed thread count).

The search algorithm is optuna's; what is written here is the space, the trial (build, evaluate,
stop) and the outputs (front, winners, JSON, table, plots).
"""
from __future__ import annotations

import argparse
import hashlib
import json
import subprocess
import sys
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Any, Callable, Sequence

import numpy as np

from squeezebench.compression.base import ConfigError, parse_variant_id, variant_id
from squeezebench.compression.prune import KEEP_TOKEN

SIZE_METRICS = ("compressed_bytes", "artifact_bytes")
EAGER = "torch-cpu"  # fp32 in PyTorch eager: the reference every latency winner is also compared with
OBJECTIVE_GRAMMAR = "compressed_bytes | artifact_bytes:<backend> | latency:<backend>:b<batch>"
TECHNIQUES = ("structured", "prune", "kdself", "kd", "share", "int8-static", "int8-qat", "woq4", "fp16")
DEFAULT_TECHNIQUES = ("structured", "prune", "kdself", "share", "int8-static", "int8-qat", "woq4", "fp16")


class SearchError(ValueError):
    """A search that cannot start; the message names the fix."""


@dataclass(frozen=True)
class Objective:
    """What a search minimises besides keeping top-1: ``compressed_bytes`` (the compact encoding),
    ``artifact_bytes`` on a backend, or ``latency`` (median per-image time) on a backend at a batch."""

    metric: str
    backend: str | None = None
    batch: int | None = None

    @classmethod
    def parse(cls, text: str, backends: Sequence[str]) -> "Objective":
        parts = text.strip().split(":")
        metric = parts[0]
        bad = SearchError(f"unknown objective {text!r}; objectives: {OBJECTIVE_GRAMMAR} "
                          f"(backends: {', '.join(backends)}), e.g. latency:onnxruntime:b1")
        if metric == "compressed_bytes" and len(parts) == 1:
            return cls(metric)
        if metric == "artifact_bytes" and len(parts) == 2 and parts[1] in backends:
            return cls(metric, parts[1])
        if metric == "latency" and len(parts) == 3 and parts[1] in backends and parts[2].startswith("b") \
                and parts[2][1:].isdigit() and int(parts[2][1:]) >= 1:
            return cls(metric, parts[1], int(parts[2][1:]))
        raise bad

    @property
    def name(self) -> str:
        return ":".join(str(p) for p in (self.metric, self.backend, f"b{self.batch}" if self.batch else None) if p)


@dataclass(frozen=True)
class SearchSpace:
    """The chains a search may try. ``techniques``: any of TECHNIQUES, in the fixed order
    structured -> kd (registry students, with ``students``) -> prune -> kdself -> one terminal
    step (share, int8-static, int8-qat, woq4, or none) -> fp16 (after share or none: the
    weights, a shared layer's codebook and the biases stored in 16 bits)."""

    techniques: tuple[str, ...] = DEFAULT_TECHNIQUES
    sparsity: tuple[int, int] = (50, 99)  # percent, unstructured
    structured: tuple[int, int] = (10, 70)  # percent, step 10
    max_steps: int = 4  # pruning rounds
    max_epochs: int = 4  # fine-tuning epochs per round
    students: tuple[str, ...] = ()  # model specs for kd-...-s<student>

    def __post_init__(self) -> None:
        unknown = [t for t in self.techniques if t not in TECHNIQUES]
        if unknown:
            raise SearchError(f"unknown technique(s) {', '.join(unknown)} in the search space; known: "
                              f"{', '.join(TECHNIQUES)}")
        if "kd" in self.techniques and not self.students:
            raise SearchError("technique kd needs students (model specs), e.g. --students mlp_student")
        lo, hi = self.sparsity
        if not 1 <= lo <= hi <= 99:
            raise SearchError(f"sparsity range must be within 1..99 percent, got {self.sparsity}")
        lo, hi = self.structured
        if not 10 <= lo <= hi <= 90 or lo % 10 or hi % 10:
            raise SearchError(f"structured range must be multiples of 10 within 10..90, got {self.structured}")
        if self.max_steps < 1 or self.max_epochs < 1:
            raise SearchError("max_steps and max_epochs must be >= 1")

    def suggest(self, trial: Any, has_conv: bool) -> str:
        """The variant id of ``trial``'s chain (optuna define-by-run), canonical (defaults dropped)."""
        t, tok = self.techniques, []
        if "structured" in t and trial.suggest_categorical("structured", [False, True]):
            pct = trial.suggest_int("structured_pct", *self.structured, step=10)
            layers = trial.suggest_categorical("structured_layers", ["dense", "conv"]) if has_conv else "dense"
            rnd = trial.suggest_categorical("structured_round", [0, 8, 16]) if layers == "conv" else 0
            tok.append(f"sprune{pct}-{layers}" + (f"-r{rnd}" if rnd else ""))
        if "kd" in t and trial.suggest_categorical("kd", [False, True]):
            tok.append(f"kd-t{trial.suggest_categorical('kd_t', [2, 4, 8])}-a{trial.suggest_categorical('kd_alpha', [0.5, 0.7, 0.9])}"
                       f"-s{trial.suggest_categorical('kd_student', list(self.students))}")
        if "prune" in t and trial.suggest_categorical("prune", [False, True]):
            scope = trial.suggest_categorical("prune_scope", ["global", "layer"])
            pct = trial.suggest_int("sparsity", *self.sparsity)
            steps = trial.suggest_int("prune_steps", 1, self.max_steps)
            epochs = trial.suggest_int("prune_epochs", 1, self.max_epochs)
            keep = trial.suggest_categorical("prune_keep_dense", ["none", "first", "last", "ends"])
            tok.append(f"{'g' if scope == 'global' else ''}prune{pct}-s{steps}-e{epochs}"
                       + KEEP_TOKEN["" if keep == "none" else keep])
        if "kdself" in t and tok and trial.suggest_categorical("kdself", [False, True]):
            tok.append(f"kdself-t{trial.suggest_categorical('kdself_t', [2, 4, 8])}"
                       f"-a{trial.suggest_categorical('kdself_alpha', [0.5, 0.7, 0.9])}"
                       f"-e{trial.suggest_int('kdself_epochs', 1, 3)}")
        last = [x for x in ("share", "int8-static", "int8-qat", "woq4") if x in t]
        end = trial.suggest_categorical("final", ["none", *last]) if last else "none"
        if end == "share":
            tok.append(f"share{trial.suggest_int('share_bits', 3, 6)}-e{trial.suggest_int('share_epochs', 1, 2)}")
        elif end == "int8-static":
            pt = trial.suggest_categorical("int8_per_tensor", [False, True])
            tok.append(f"int8-static-cal{trial.suggest_categorical('calibration', [128, 512, 1024])}" + ("-pt" if pt else ""))
        elif end == "int8-qat":
            pt = trial.suggest_categorical("int8_per_tensor", [False, True])
            tok.append("int8-qat" + ("-pt" if pt else "") + f"-e{trial.suggest_int('qat_epochs', 1, 3)}")
        elif end == "woq4":
            tok.append(f"woq4-g{trial.suggest_categorical('group_size', [16, 32, 64, 128])}")
        if "fp16" in t and end in ("none", "share") and trial.suggest_categorical("fp16", [False, True]):
            tok.append("fp16")
        return variant_id(parse_variant_id("+".join(tok))) if tok else "fp32"


@dataclass(frozen=True)
class SearchSpec:
    """One search: a model on a dataset, the accuracy budget (a drop in pp from the measured fp32
    baseline, or an absolute top-1 floor), the objectives, and a trial budget (a count and/or
    minutes)."""

    model: str
    dataset: str
    objectives: tuple[Objective, ...]
    budget_pp: float | None = 0.5
    floor: float | None = None
    trials: int | None = 30
    minutes: float | None = None
    seed: int = 0
    eval_backend: str = "onnxruntime"
    stop_slack_pp: float = 1.0
    space: SearchSpace = field(default_factory=SearchSpace)
    # Latency runs (fresh processes, the variants' order reversed every other run): a b1 figure
    # moves by more between processes than its in-run interval says, so speedups are given as
    # the median of the per-run (paired) ratios with their spread.
    latency_runs: int = 3

    def __post_init__(self) -> None:
        if (self.budget_pp is None) == (self.floor is None):
            raise SearchError("give exactly one accuracy budget: a drop from the baseline (--budget-pp 0.5) or a "
                              "top-1 floor (--floor 98.0)")
        if self.budget_pp is not None and not 0 <= self.budget_pp < 100:
            raise SearchError(f"--budget-pp is percentage points in [0, 100), got {self.budget_pp}")
        if self.floor is not None and not 0 < self.floor <= 100:
            raise SearchError(f"--floor is a top-1 in (0, 100], got {self.floor}")
        if self.trials is None and self.minutes is None:
            raise SearchError("give a trial budget: --trials N and/or --minutes M")
        if self.trials is not None and self.trials < 1 or self.minutes is not None and self.minutes <= 0:
            raise SearchError("--trials must be >= 1 and --minutes > 0")
        if not self.objectives:
            raise SearchError(f"give at least one objective: {OBJECTIVE_GRAMMAR}")
        if self.stop_slack_pp < 0:
            raise SearchError("--stop-slack-pp must be >= 0")
        if isinstance(self.latency_runs, bool) or not isinstance(self.latency_runs, int) or self.latency_runs < 1:
            raise SearchError(f"--latency-runs must be an integer >= 1, got {self.latency_runs!r}; 3 shows the "
                              "spread between processes")

    def study_name(self) -> str:
        """Same model, dataset, budget, objectives, space, seed, evaluation backend: same study (resumed)."""
        key = {k: v for k, v in asdict(self).items() if k not in ("trials", "minutes", "latency_runs")}
        digest = hashlib.sha256(json.dumps(key, sort_keys=True, default=str).encode()).hexdigest()[:12]
        safe = "".join(c if c.isalnum() or c in "-_" else "_" for c in f"{self.model}-{self.dataset}")
        return f"{safe}-{digest}"


# -- the trial ----------------------------------------------------------------------------------
FLOOR = "top1_floor"  # the trial's constraint (optuna): floor - top-1, feasible when <= 0
NO_TOP1 = 100.0  # a stopped or failed trial: as infeasible as a trial can be


class TrialRejected(Exception):
    """A trial whose variant cannot stand (broken parity): recorded with the reason, then skipped."""


def _top1(logits: np.ndarray, y: np.ndarray) -> float:
    return float((logits.argmax(1) == y).mean() * 100.0)


def _prefixes(vid: str) -> list[str]:
    """The chain's proper prefixes that end in a training step (checked before going on)."""
    chain = parse_variant_id(vid)
    trained = {"structured", "prune", "distill"}
    return [variant_id(chain[:i + 1]) for i, c in enumerate(chain[:-1]) if c.kind in trained]


class Search:
    """Runs one :class:`SearchSpec` on an engine (:class:`squeezebench.workbench.Workbench`)."""

    def __init__(self, wb: Any, spec: SearchSpec, say: Callable[[str], None] = lambda m: None):
        from squeezebench.backends import get_backend, list_backends

        self.wb, self.spec, self.say = wb, spec, say
        known = list_backends()
        for name in {spec.eval_backend, *(o.backend for o in spec.objectives if o.backend)}:
            if name not in known:
                raise SearchError(f"unknown backend {name!r}; known: {', '.join(known)}")
            why = get_backend(name).unavailable_reason()
            if why:
                raise SearchError(f"backend {name} is unavailable here: {why}")
        self.latency = [o for o in spec.objectives if o.metric == "latency"]
        self.sizes = [o for o in spec.objectives if o.metric in SIZE_METRICS]
        # optuna's objectives: top-1 up, sizes down; MACs down as the latency guide
        self.values = ["top1", *(o.name for o in self.sizes), *(["macs"] if self.latency else [])]

    # -- what a trial asks of the engine (a test's fake engine overrides these) -------------------
    def baseline_info(self) -> tuple[bool, float, float]:
        """(the model has convolutions, baseline top-1 through the evaluation backend, the floor)."""
        from torch import nn

        s = self.spec
        base = self.wb.baseline(s.model, s.dataset)
        if base.model is None:
            raise SearchError(f"{s.model} is an exported file: the search trains and prunes, which needs a torch "
                              "module; use a registry model or a model spec")
        has_conv = any(isinstance(m, nn.modules.conv._ConvNd) for m in base.model.modules())
        base_top1 = self.wb.evaluate(base, s.eval_backend).top1
        floor = s.floor if s.floor is not None else base_top1 - s.budget_pp
        return has_conv, base_top1, floor

    def partial_top1(self, prefix: str) -> float:
        """Top-1 of a chain's partial model (its torch module, full test set, in process)."""
        data = self.wb.dataset(self.spec.dataset)
        v = self.wb.variant(self.spec.model, self.spec.dataset, prefix)
        return _top1(self.wb.reference_logits(v), data.y_test.numpy())

    def measure(self, vid: str) -> dict:
        """Top-1 (and parity) through the evaluation backend, sizes and MACs of one variant."""
        from squeezebench.record import DEFAULT_PARITY_MIN

        wb, s = self.wb, self.spec
        v = wb.variant(s.model, s.dataset, vid)
        if v.unsupported_reason(s.eval_backend, wb.backend(s.eval_backend).artifact_format):
            raise TrialRejected(f"{s.eval_backend} cannot run it: {v.unsupported[s.eval_backend]}")
        ev = wb.evaluate(v, s.eval_backend)
        parity_min = float(v.facts.get("parity_min", DEFAULT_PARITY_MIN))
        if ev.parity_agreement < parity_min:
            raise TrialRejected(f"parity {ev.parity_agreement:.2%} < {parity_min:.2%} on {s.eval_backend} "
                                f"(top-1 {ev.top1:.2f} %)")
        facts = wb.static_facts(v)
        out = {"top1": ev.top1, "parity": ev.parity_agreement, "compressed_bytes": facts["compressed_bytes"],
               "macs": facts["macs"], "params": facts["params"], "nonzero_params": facts["nonzero_params"]}
        for o in self.sizes:
            if o.metric == "artifact_bytes":
                fmt = wb.backend(o.backend).artifact_format
                if v.unsupported_reason(o.backend, fmt):
                    raise TrialRejected(f"{o.backend} cannot run it: {v.unsupported_reason(o.backend, fmt)}")
                out[o.name] = wb.artifact(v, fmt).nbytes
        return out

    def _objective(self, floor: float, has_conv: bool) -> Callable[[Any], tuple]:
        import optuna

        def run(trial: Any) -> tuple:
            started = time.perf_counter()
            try:
                vid = self.spec.space.suggest(trial, has_conv)
                trial.set_user_attr("variant", vid)
                self.say(f"trial {trial.number}: {vid}")
                for prefix in _prefixes(vid):
                    top1 = self.partial_top1(prefix)
                    trial.set_user_attr(f"after:{prefix}", top1)
                    if top1 < floor - self.spec.stop_slack_pp:
                        reason = (f"stopped after {prefix}: top-1 {top1:.2f} % < floor {floor:.2f} % - slack "
                                  f"{self.spec.stop_slack_pp:g} pp")
                        trial.set_user_attr("stopped", reason)
                        trial.set_constraint(FLOOR, NO_TOP1)
                        raise optuna.TrialPruned(reason)
                m = self.measure(vid)
            except optuna.TrialPruned:
                raise
            except Exception as e:  # a crash or broken parity: recorded, then the search goes on
                trial.set_constraint(FLOOR, NO_TOP1)
                trial.set_user_attr("failed", f"{type(e).__name__}: {e}"[:500])
                self.say(f"trial {trial.number} failed: {type(e).__name__}: {e}")
                raise
            finally:
                trial.set_user_attr("seconds", round(time.perf_counter() - started, 2))
            for k, val in m.items():
                trial.set_user_attr(k, val)
            trial.set_constraint(FLOOR, floor - m["top1"])  # <= 0: within the budget
            return (m["top1"], *(m[o.name] for o in self.sizes), *([m["macs"]] if self.latency else []))

        return run

    def study(self, floor: float):
        import optuna

        store = Path(self.wb.settings.cache_dir) / "search"
        store.mkdir(parents=True, exist_ok=True)
        storage = optuna.storages.RDBStorage(f"sqlite:///{store / (self.spec.study_name() + '.db')}")
        startup = max(4, min(10, (self.spec.trials or 20) // 3))
        sampler = optuna.samplers.TPESampler(seed=self.spec.seed, n_startup_trials=startup)
        study = optuna.create_study(study_name=self.spec.study_name(), storage=storage, sampler=sampler,
                                    directions=["maximize"] + ["minimize"] * (len(self.values) - 1),
                                    load_if_exists=True)
        # A trial left running by an interrupted search: failed, and its chain tried again.
        for t in study.get_trials(deepcopy=False, states=(optuna.trial.TrialState.RUNNING,)):
            storage.set_trial_user_attr(t._trial_id, "failed", "interrupted (retried)")
            storage.set_trial_state_values(t._trial_id, optuna.trial.TrialState.FAIL)
            study.enqueue_trial(t.params, skip_if_exists=False)
        return study

    def run(self) -> dict:
        import optuna

        optuna.logging.set_verbosity(optuna.logging.WARNING)
        s = self.spec
        t0 = time.perf_counter()
        has_conv, base_top1, floor = self.baseline_info()
        self.say(f"search {s.model} on {s.dataset}: baseline {base_top1:.2f} % on {s.eval_backend}, floor {floor:.2f} %")
        study = self.study(floor)
        done = [t for t in study.trials if t.state.is_finished() and t.user_attrs.get("failed") != "interrupted (retried)"]
        todo = None if s.trials is None else max(0, s.trials - len(done))
        if todo is None or todo > 0:
            study.optimize(self._objective(floor, has_conv), n_trials=todo,
                           timeout=s.minutes * 60 if s.minutes else None, catch=(Exception,))
        search_s = time.perf_counter() - t0
        result = self.summarise(study, base_top1, floor)
        if self.latency and result["front"]:
            t1 = time.perf_counter()
            self.say(f"measuring latency of {len(result['front'])} front variants and fp32 on "
                     + ", ".join(o.name for o in self.latency) + f", {s.latency_runs} run(s)")
            order = ["fp32", *result["front"]]
            result["latency"] = combine_latency_runs(
                [self.measure_latency(order if i % 2 == 0 else order[::-1]) for i in range(s.latency_runs)])
            result["latency_seconds"] = round(time.perf_counter() - t1, 1)
            result["winners"].update(self.latency_winners(result))
        result["search_seconds"] = round(search_s, 1)
        return result

    # -- outputs --------------------------------------------------------------------------------
    def summarise(self, study: Any, base_top1: float, floor: float) -> dict:
        import optuna

        S = optuna.trial.TrialState
        rows = []
        for t in study.trials:
            a = t.user_attrs
            if a.get("failed") == "interrupted (retried)":
                continue
            row = {"number": t.number, "variant": a.get("variant"), "state": t.state.name.lower(),
                   "seconds": a.get("seconds"), "choices": t.params}
            if t.state == S.COMPLETE:
                row.update({k: a[k] for k in ("top1", "parity", "compressed_bytes", "macs", "params", "nonzero_params")})
                row.update({o.name: a[o.name] for o in self.sizes})
                row["feasible"] = a["top1"] >= floor
            else:
                row["reason"] = a.get("stopped") or a.get("failed") or t.state.name.lower()
            rows.append(row)
        ok = [r for r in rows if r["state"] == "complete"]
        feasible = [r for r in ok if r["feasible"]]
        keys = [("top1", -1.0)] + [(o.name, 1.0) for o in self.sizes] + ([("macs", 1.0)] if self.latency else [])
        if self.latency:
            # MACs guide latency only within one compute precision: an fp16 or int8 copy of a
            # chain has its MACs and fewer bytes, yet often runs slower, so each precision gets
            # its own front and the fp32 chain it would dominate is still timed.
            groups: dict[str, list[dict]] = {}
            for r in feasible:
                groups.setdefault(compute_precision(r["variant"]), []).append(r)
            top1 = {r["variant"]: r["top1"] for r in feasible}
            front = sorted({v for g in groups.values() for v in pareto_front(g, keys)}, key=lambda v: (-top1[v], v))
        else:
            front = pareto_front(feasible, keys)
        onnx_fp32 = self._fp32_onnx_bytes()
        for r in ok:
            r["on_front"] = r["variant"] in front
            if onnx_fp32:
                r["ratio_vs_fp32_onnx"] = round(onnx_fp32 / r["compressed_bytes"], 2)
        winners = {}
        for o in self.sizes:
            if feasible:
                best = min(feasible, key=lambda r: (r[o.name], -r["top1"]))
                winners[o.name] = {"variant": best["variant"], "value": best[o.name], "top1": best["top1"]}
        out = {"spec": {**asdict(self.spec), "objectives": [o.name for o in self.spec.objectives]},
               "study": self.spec.study_name(), "baseline_top1": base_top1, "floor": floor,
               "fp32_onnx_bytes": onnx_fp32, "trials": rows, "front": front, "winners": winners,
               "counts": {k: sum(r["state"] == k for r in rows) for k in ("complete", "pruned", "fail")}}
        if not feasible:
            best = max(ok, key=lambda r: r["top1"], default=None)
            out["missed"] = (f"no variant met the floor {floor:.2f} %" + (
                f": the best, {best['variant']}, reached {best['top1']:.2f} %, {floor - best['top1']:.2f} pp short"
                if best else ": no trial completed"))
        return out

    def _fp32_onnx_bytes(self) -> int | None:
        try:
            base = self.wb.baseline(self.spec.model, self.spec.dataset)
            return self.wb.artifact(base, "onnx").nbytes
        except Exception:  # no ONNX exporter here: the ratio is left out
            return None

    def measure_latency(self, variants: list[str]) -> dict:
        """Per-image latency of ``variants`` with the harness's own timing: a pytest-benchmark run
        of the plugin's ``sb_record`` in a fresh process (nothing else of the search in it)."""
        from squeezebench.reports.history import load_history

        s, out = self.spec, {}
        # torch-cpu too: every speedup is also given against fp32 in PyTorch eager
        backends = sorted({o.backend for o in self.latency} | {EAGER})
        batches = sorted({o.batch for o in self.latency})
        with tempfile.TemporaryDirectory(prefix="squeezebench-search-") as tmp:
            test = Path(tmp) / "test_search_latency.py"
            test.write_text("def test_variant(sb_record):\n    sb_record()\n")
            js = Path(tmp) / "latency.json"
            st = self.wb.settings
            cmd = [sys.executable, "-m", "pytest", str(test), "-q", "-p", "no:cacheprovider", "--rootdir", tmp,
                   f"--sb-models={s.model}", f"--sb-datasets={s.dataset}", f"--sb-variants={','.join(variants)}",
                   f"--sb-backends={','.join(backends)}", f"--sb-batches={','.join(map(str, batches))}",
                   f"--sb-cache-dir={st.cache_dir}", f"--sb-threads={st.threads}", f"--benchmark-json={js}"]
            if not st.download:
                cmd.append(f"--sb-data-dir={st.data_dir}")
            src = getattr(self.wb.config, "source", "")
            if src and src != "no config file":
                cmd.append(f"--sb-config={src.split(' [')[0]}")
            r = subprocess.run(cmd, capture_output=True, text=True)
            if not js.is_file():
                raise SearchError(f"the latency run failed (exit {r.returncode}):\n{r.stdout[-2000:]}\n{r.stderr[-1000:]}")
            for rec in load_history(js).records:
                key = f"latency:{rec['backend']}:b{rec['batch']}"
                ci = rec.get("latency_p50_ci95_us")
                out.setdefault(key, {})[rec["variant"]] = {
                    "per_image_us": rec.n("per_image_us"), "ci95_us": ci, "valid": rec.valid,
                    "stability": rec.get("latency_stability")}
        return out

    def latency_winners(self, result: dict) -> dict:
        feasible = {r["variant"]: r for r in result["trials"] if r.get("feasible")}
        feasible["fp32"] = {"top1": result["baseline_top1"]}  # the baseline may well be the fastest
        out = {}
        for o in self.latency:
            got = result["latency"].get(o.name, {})
            fp32 = got.get("fp32") or {}
            eager = (result["latency"].get(f"latency:{EAGER}:b{o.batch}") or {}).get("fp32") or {}
            cands = [(m["per_image_us"], v) for v, m in got.items()
                     if v in feasible and m["valid"] and m["per_image_us"] is not None]
            if not cands:
                continue
            us, v = min(cands)
            w = {"variant": v, "value": us, "top1": feasible[v]["top1"], "ci95_us": got[v].get("ci95_us"),
                 "spread_us": got[v].get("spread_us"), "runs": got[v].get("runs", 1)}
            same, same_band = _speedup(fp32, got[v])
            w.update(speedup_vs_fp32_same_runtime=same, speedup_vs_fp32_same_runtime_ci=same_band,
                     speedup_vs_fp32_torch_eager=_speedup(eager, got[v])[0])
            # a winner whose band reaches 1.0x is not reliably faster than fp32 on its runtime
            w["reliable"] = v == "fp32" or bool(same_band and same_band[0] > 1.0)
            out[o.name] = w
        return out


def combine_latency_runs(runs: list[dict]) -> dict:
    """One latency table from several runs of :meth:`Search.measure_latency`: per variant the
    median over runs, every run's figure (``runs_us``, in run order, None where it has none) and
    their spread; one run is kept as it was (with its 95 % interval)."""
    if len(runs) == 1:
        return runs[0]
    out: dict = {}
    for key in dict.fromkeys(k for r in runs for k in r):
        for v in dict.fromkeys(v for r in runs for v in r.get(key, {})):
            ms = [r.get(key, {}).get(v) for r in runs]
            vals = [m["per_image_us"] if m and m["per_image_us"] is not None else None for m in ms]
            have = [x for x in vals if x is not None]
            out.setdefault(key, {})[v] = {
                "per_image_us": float(np.median(have)) if have else None, "ci95_us": None,
                "spread_us": [min(have), max(have)] if have else None, "runs_us": vals, "runs": len(have),
                "valid": all(m is not None and m["valid"] for m in ms),
                "stability": [m.get("stability") if m else None for m in ms]}
    return out


def _speedup(base: dict, m: dict) -> tuple[float | None, list[float] | None]:
    """``base`` over ``m``: with several runs the median of the per-run ratios (paired: the
    same process timed both) and their range; with one, the ratio and its interval band."""
    if "runs_us" in base and "runs_us" in m:
        ratios = [b / x for b, x in zip(base["runs_us"], m["runs_us"]) if b and x]
        if not ratios:
            return None, None
        return round(float(np.median(ratios)), 3), [round(min(ratios), 3), round(max(ratios), 3)]
    b, x = base.get("per_image_us"), m.get("per_image_us")
    if not b or not x:
        return None, None
    return round(b / x, 3), _band(base.get("ci95_us"), m.get("ci95_us"))


def _band(base_ci: list | None, ci: list | None) -> list[float] | None:
    """The speedup between two medians' 95 % interval ends: [base low / variant high, base high / variant low]."""
    if not base_ci or not ci or min(ci) <= 0:
        return None
    return [round(base_ci[0] / ci[1], 3), round(base_ci[1] / ci[0], 3)]


def compute_precision(vid: str) -> str:
    """The number format a chain computes in: its last precision cast or quantization step's
    (``fp16``, ``int8``, ``woq4``), else ``fp32``."""
    for cfg in reversed(parse_variant_id(vid)):
        if cfg.kind == "precision":
            return cfg.token()
        if cfg.kind == "quantize":
            return cfg.token().split("-")[0]
    return "fp32"


def pareto_front(rows: list[dict], keys: list[tuple[str, float]]) -> list[str]:
    """Variant ids of the rows no other row dominates; ``keys``: (field, +1 to minimise / -1 to maximise)."""
    uniq = {r["variant"]: r for r in rows}
    pts = {v: np.array([sign * r[k] for k, sign in keys], float) for v, r in uniq.items()}
    return sorted((v for v, p in pts.items()
                   if not any(np.all(q <= p) and np.any(q < p) for w, q in pts.items() if w != v)),
                  key=lambda v: -uniq[v]["top1"])


def write_outputs(result: dict, out: Path) -> dict[str, Path]:
    """``search_<model>_<dataset>.json``, ``.md`` (trials and front table) and ``.png`` (the front)."""
    from squeezebench.reports.search_report import write_search_report

    return write_search_report(result, out)


# -- the command ---------------------------------------------------------------------------------
def _parser(prog: str) -> argparse.ArgumentParser:
    p = argparse.ArgumentParser(prog=f"{prog} search", description=__doc__.splitlines()[0])
    p.add_argument("--model", required=True, help="registry name or model spec (pkg.mod:fn, torchvision:<name>)")
    p.add_argument("--dataset", required=True, help="dataset name or spec (folder:<path>, pkg.mod:fn)")
    p.add_argument("--budget-pp", type=float, default=None,
                   help="top-1 drop allowed from the measured fp32 baseline, pp. Default: 0.5 (unless --floor)")
    p.add_argument("--floor", type=float, default=None, help="absolute top-1 floor, percent, instead. Default: none")
    p.add_argument("--objective", action="append", default=None,
                   help=f"{OBJECTIVE_GRAMMAR}; repeat for a Pareto front. Default: compressed_bytes")
    p.add_argument("--trials", type=int, default=None, help="trial budget (count). Default: 30 unless --minutes")
    p.add_argument("--minutes", type=float, default=None, help="trial budget (wall minutes). Default: none")
    p.add_argument("--seed", type=int, default=0, help="sampler seed. Default: 0")
    p.add_argument("--eval-backend", default="onnxruntime", help="backend that measures top-1. Default: onnxruntime")
    p.add_argument("--techniques", default=",".join(DEFAULT_TECHNIQUES),
                   help=f"comma list of {', '.join(TECHNIQUES)}. Default: {','.join(DEFAULT_TECHNIQUES)}")
    p.add_argument("--students", default="", help="comma list of student model specs for kd. Default: none")
    p.add_argument("--sparsity", default="50,99", help="unstructured sparsity range, percent. Default: 50,99")
    p.add_argument("--latency-runs", type=int, default=3,
                   help="latency runs (fresh processes) per variant; speedups are the median of the paired "
                        "per-run ratios, with their range. Default: 3")
    p.add_argument("--stop-slack-pp", type=float, default=1.0,
                   help="stop a trial whose partial model is this far below the floor, pp. Default: 1.0")
    p.add_argument("--data-dir", default=None, help="dataset directory. Default: $SQUEEZEBENCH_DATA_DIR or the cache")
    p.add_argument("--cache-dir", default=None, help="cache directory. Default: $SQUEEZEBENCH_CACHE_DIR or ~/.cache/squeezebench")
    p.add_argument("--threads", type=int, default=None, help="threads. Default: the usable cores")
    p.add_argument("--config", default=None, help="[tool.squeezebench] file. Default: ./pyproject.toml if it has one")
    p.add_argument("-o", "--output", type=Path, default=Path("reports/out"), help="output directory. Default: reports/out")
    return p


def main(argv: list[str] | None = None, prog: str = "squeezebench") -> int:
    """``squeezebench search``: exit 0 when a variant met the budget, 1 when none did, 2 on bad input."""
    from squeezebench.backends import list_backends
    from squeezebench.config import ConfigFileError, load_config
    from squeezebench.settings import resolve_settings
    from squeezebench.workbench import Workbench

    args = _parser(prog).parse_args(argv)
    try:
        lo, hi = (int(x) for x in args.sparsity.split(","))
        space = SearchSpace(techniques=tuple(t for t in args.techniques.split(",") if t), sparsity=(lo, hi),
                            students=tuple(x for x in args.students.split(",") if x))
        objectives = tuple(Objective.parse(o, list_backends()) for o in (args.objective or ["compressed_bytes"]))
        spec = SearchSpec(args.model, args.dataset, objectives,
                          budget_pp=None if args.floor is not None and args.budget_pp is None else
                          (0.5 if args.budget_pp is None else args.budget_pp),
                          floor=args.floor, trials=30 if args.trials is None and args.minutes is None else args.trials,
                          minutes=args.minutes, seed=args.seed, eval_backend=args.eval_backend,
                          stop_slack_pp=args.stop_slack_pp, space=space, latency_runs=args.latency_runs)
        config = load_config(args.config, rootdir=Path.cwd())
        settings = resolve_settings(args.data_dir, args.cache_dir, args.threads)
        wb = Workbench(settings, progress=lambda m: print(m, file=sys.stderr, flush=True), config=config)
        search = Search(wb, spec, say=lambda m: print(m, file=sys.stderr, flush=True))
        result = search.run()
    except (SearchError, ConfigError, ConfigFileError) as e:
        print(f"{prog} search: {e}", file=sys.stderr)
        return 2
    except Exception as e:  # e.g. a dataset that cannot be read: one line, not a traceback
        print(f"{prog} search: {type(e).__name__}: {e}", file=sys.stderr)
        return 2
    files = write_outputs(result, args.output)
    print(Path(files["md"]).read_text())
    for kind, path in files.items():
        print(f"{kind}: {path}", file=sys.stderr)
    return 1 if "missed" in result else 0
