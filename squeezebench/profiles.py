"""Benchmark profiles: which models, datasets, variants, backends and batch sizes a run covers."""
from __future__ import annotations

from dataclasses import dataclass, field, replace

ALL_BACKENDS = ("torch-cpu", "torch-cuda", "onnxruntime", "openvino")


@dataclass(frozen=True)
class Case:
    model: str
    dataset: str
    variant: str
    backend: str
    batch: int

    @property
    def id(self) -> str:
        return f"{self.model}-{self.dataset}-{self.variant}-{self.backend}-b{self.batch}"


@dataclass(frozen=True)
class Profile:
    name: str
    description: str
    pairs: tuple[tuple[str, str], ...]  # (model, dataset)
    variants: tuple[str, ...] = ("fp32",)
    backends: tuple[str, ...] = ALL_BACKENDS
    batches: tuple[int, ...] = (1, 256)
    # Variants that only make sense for some (model, dataset) pairs: variant -> pairs (others skip it).
    variant_pairs: dict[str, tuple[tuple[str, str], ...]] = field(default_factory=dict)

    def __post_init__(self) -> None:
        if not self.pairs or not self.variants or not self.backends or not self.batches:
            raise ValueError(f"profile {self.name!r} selects nothing")
        if any(b < 1 for b in self.batches):
            raise ValueError(f"profile {self.name!r}: batch sizes must be >= 1, got {self.batches}")

    def cases(self) -> list[Case]:
        out = []
        for model, dataset in self.pairs:
            for variant in self.variants:
                allowed = self.variant_pairs.get(variant)
                if allowed is not None and (model, dataset) not in allowed:
                    continue
                for backend in self.backends:
                    for batch in self.batches:
                        out.append(Case(model, dataset, variant, backend, batch))
        return out

    def override(self, *, models=None, datasets=None, variants=None, backends=None, batches=None) -> "Profile":
        """The profile narrowed or changed by command-line options."""
        pairs = self.pairs
        if datasets:
            ms = models or tuple(dict.fromkeys(m for m, _ in self.pairs))
            pairs = tuple((m, d) for d in datasets for m in ms)
        elif models:
            pairs = tuple(p for p in self.pairs if p[0] in models) or tuple(
                (m, d) for m in models for d in dict.fromkeys(d for _, d in self.pairs))
        return replace(self, pairs=pairs, variants=tuple(variants or self.variants),
                       backends=tuple(backends or self.backends), batches=tuple(batches or self.batches))


PROFILES: dict[str, Profile] = {}


def register_profile(p: Profile) -> Profile:
    PROFILES[p.name] = p
    return p


def _paper_profile() -> Profile:
    """The seed study's matrix (squeezebench.paper: the study's data, tables and rows)."""
    from squeezebench.paper import STUDY_PAIRS, paper_variants

    variants, pairs = paper_variants()
    return Profile(
        "paper",
        "the study's Tables 1-18 (and its temperature figure, future-work chains and compact-size "
        "target) on our hardware: its two models on its two datasets, torch-cpu and onnxruntime, batch 1 "
        "and 256; rows per table in squeezebench.paper.PAPER_TABLES / EXTRAS (296 records). Measured on "
        "2 cores: 34 min cold, 13 min warm; --sb-backends torch-cpu,onnxruntime,openvino adds OpenVINO "
        "(not timed)",
        pairs=STUDY_PAIRS,
        variants=variants,
        backends=("torch-cpu", "onnxruntime"),
        batches=(1, 256),
        variant_pairs={v: ps for v, ps in pairs.items() if set(ps) != set(STUDY_PAIRS)},
    )


# The one built-in profile: the seed study, whose tables `squeezebench paper` renders. Other
# profiles come from the user's [tool.squeezebench.profiles] (this repo's are in its pyproject).
register_profile(_paper_profile())


def get_profile(name: str, extra: tuple[str, ...] = ()) -> Profile:
    """A built-in profile; ``extra`` names the config file's profiles for the error message."""
    try:
        return PROFILES[name]
    except KeyError:
        raise KeyError(f"unknown profile {name!r}; known: {', '.join([*extra, *PROFILES])}") from None


def profile_from_config(name: str, table: dict, source: str) -> Profile:
    """A profile from a ``[tool.squeezebench.profiles.NAME]`` table (validated by
    squeezebench.config): every model on every dataset, plus the listed ``pairs``, with the
    given (or default) variants, backends and batches."""
    models, datasets = tuple(table.get("models", ())), tuple(table.get("datasets", ()))
    pairs = tuple((m, d) for d in datasets for m in models)
    pairs += tuple(p for p in (tuple(x) for x in table.get("pairs", ())) if p not in pairs)
    return Profile(
        name, f"from {source}: " + ", ".join(f"{m} on {d}" for m, d in pairs),
        pairs=pairs,
        variants=tuple(table.get("variants", ("fp32",))),
        backends=tuple(table.get("backends", ALL_BACKENDS)),
        batches=tuple(table.get("batches", (1, 256))),
    )
