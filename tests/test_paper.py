"""The `paper` profile regenerates the study's Tables 1-18 and stays within its own matrix."""
import pytest

from squeezebench.compression import ConfigError, parse_variant_id
from squeezebench.paper import EXTRAS, PAPER_TABLES, paper_variants
from squeezebench.paper import STUDY_PAIRS
from squeezebench.profiles import get_profile


def test_every_study_table_is_mapped():
    assert sorted(PAPER_TABLES) == list(range(1, 19))
    for t in PAPER_TABLES.values():
        assert t.rows() and t.fields


def test_paper_profile_runs_exactly_the_tables_rows():
    p = get_profile("paper")
    assert set(p.pairs) == set(STUDY_PAIRS) == {(m, d) for m in ("lenet300_100", "lenet5") for d in ("mnist", "cifar10")}
    assert "torch-cuda" not in p.backends and p.batches == (1, 256)
    cases = {(c.model, c.dataset, c.variant) for c in p.cases()}
    needed = {r for t in (*PAPER_TABLES.values(), *EXTRAS.values()) for r in t.rows()}
    # variant_pairs only ever narrows to the (model, dataset) pairs a table uses
    variants, pairs = paper_variants()
    assert set(p.variants) == set(variants)
    for v, ps in p.variant_pairs.items():
        assert set(ps) < set(p.pairs) and set(ps) == set(pairs[v])
    assert cases == needed, "the profile runs rows no table shows"


def test_every_paper_variant_parses():
    pytest.importorskip("squeezebench.compression.quantize")
    import squeezebench.compression.quantize  # noqa: F401  (registers int8 tokens)

    for v in get_profile("paper").variants:
        try:
            parse_variant_id(v)
        except ConfigError as e:  # pragma: no cover - the message is the point
            pytest.fail(f"{v}: {e}")


def test_paper_profile_leaves_the_others_alone():
    """This repo's other profiles (its pyproject.toml) stay small: none runs the paper matrix."""
    from pathlib import Path

    from squeezebench.config import load_config

    user = load_config(rootdir=Path(__file__).resolve().parents[1])
    assert {"quick", "default", "full"} <= set(user.profiles)
    paper_only = set(get_profile("paper").variants) - {"fp32", "int8-static", "kd-t4", "prune90+int8-static"}
    for name in ("quick", "default"):
        assert not paper_only & set(user.profiles[name]["variants"])
