"""report.html as a page to explore (issue 13): the recommended variant per runtime and batch,
interactive Pareto plots (plotly, embedded), sortable and filterable tables; and the page as a
real headless Chromium renders it: plots drawn, a header click sorts, a filter hides rows, a
hover names the variant."""
from __future__ import annotations

import json
import os
import re
import shutil
from pathlib import Path

import pytest

from squeezebench.reports.cli import main
from squeezebench.reports.history import load_history
from squeezebench.reports.render import machine_runs, recommended_table

DATA = Path(__file__).parent / "data"
HISTORY = next(DATA.rglob("0001_*.json"))
CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser")


@pytest.fixture(scope="module")
def report(tmp_path_factory) -> Path:
    out = tmp_path_factory.mktemp("html")
    assert main(["html", str(HISTORY), "-o", str(out), "--no-paper"]) == 0
    return out / "report.html"


def test_recommended_is_the_fastest_valid_variant_within_the_budget():
    run = machine_runs([load_history(HISTORY)])[0]
    table = recommended_table(run, budget_pp=1.0)
    assert table.rows
    by_key = {r.key: r for r in run.records}
    for m, d, b, n, variant, *_ in table.rows:
        rec = by_key[(m, d, variant, b, int(n))]
        base = by_key[(m, d, "fp32", b, int(n))]
        assert rec.valid and rec.n("top1") >= base.n("top1") - 1.0
        rivals = [r for r in run.records if (r["model"], r["dataset"], r["backend"], r["batch"]) == (m, d, b, int(n))
                  and r.valid and r.n("per_image_us") is not None and r.n("top1") >= base.n("top1") - 1.0]
        assert rec.n("per_image_us") == min(r.n("per_image_us") for r in rivals)
    # a tighter budget can only keep or drop candidates: never a faster recommendation
    tight = {tuple(r[:4]): r[4] for r in recommended_table(run, budget_pp=0.0).rows}
    loose = {tuple(r[:4]): r[4] for r in table.rows}
    for k, v in tight.items():
        assert by_key[(k[0], k[1], v, k[2], int(k[3]))].n("per_image_us") >= \
            by_key[(k[0], k[1], loose[k], k[2], int(k[3]))].n("per_image_us")


def test_page_is_offline_and_interactive(report):
    doc = report.read_text()
    assert "<script src" not in doc and "<link" not in doc  # plotly.js is inline
    assert doc.count('<table class="sb">') >= 4 and 'id="recommended"' in doc
    index = json.loads(re.search(r'<script type="application/json" id="explore-index">(.*?)</script>', doc, re.S)[1])
    assert index and all(f'id="{e["div"]}"' in doc for e in index)
    assert all("smallest" in e["winners"] for e in index)


@pytest.mark.skipif(CHROMIUM is None and not os.environ.get("CI"), reason="no chromium here (apt install chromium)")
def test_page_in_headless_chromium(report, tmp_path):
    """Drives Debian's Chromium with Playwright: what a person would do on the page."""
    if CHROMIUM is None:
        pytest.fail("CI must install chromium (see .ci/run)")
    sync_api = pytest.importorskip("playwright.sync_api") if not os.environ.get("CI") else __import__(
        "playwright.sync_api", fromlist=["sync_playwright"])
    args = ["--no-sandbox", "--disable-gpu", "--disable-background-networking", "--disable-component-update",
            "--disable-sync", "--no-first-run"]
    with sync_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=args)
        page = browser.new_page(viewport={"width": 1400, "height": 1000})
        errors: list[str] = []
        page.on("pageerror", lambda e: errors.append(str(e)))
        page.goto(report.as_uri())
        page.wait_for_selector("div.plotly-graph-div .main-svg")
        assert not errors, errors
        n_plots = page.locator("div.plotly-graph-div").count()
        assert n_plots >= 1 and page.locator("div.plotly-graph-div .main-svg").count() >= n_plots
        # sort: the recommended table by its µs/image column, ascending then descending
        table = page.locator("table.sb").first
        col = [c.strip() for c in table.locator("thead th").all_inner_texts()].index("µs/image p50 [95 % CI]")
        header = table.locator("thead th").nth(col)

        def column() -> list[float]:
            cells = table.locator(f"tbody tr td:nth-child({col + 1})").all_inner_texts()
            return [float(c.split()[0]) for c in cells]

        header.click()
        assert column() == sorted(column())
        header.click()
        assert column() == sorted(column(), reverse=True)
        # filter: only rows with the word stay visible
        rows = table.locator("tbody tr")
        word = rows.first.locator("td").nth(2).inner_text()  # a runtime name
        matching = sum(word.lower() in r.inner_text().lower() for r in rows.all())
        page.locator("input.sbfilter").first.fill(word)
        visible = [r for r in rows.all() if r.is_visible()]
        assert visible and all(word in r.inner_text() for r in visible)
        assert len(visible) == matching  # every matching row stays, every other one is hidden
        # hover: a point's tooltip names its variant and its top-1
        plot = page.locator("div.plotly-graph-div").first
        point = plot.locator("g.points path.point").first
        point.hover(force=True)
        page.wait_for_selector("g.hoverlayer g.hovertext", timeout=5000)
        tip = page.locator("g.hoverlayer g.hovertext").first.text_content()
        assert "top-1" in tip and "%" in tip
        page.screenshot(path=str(tmp_path / "report.png"), full_page=False)
        browser.close()
    assert (tmp_path / "report.png").read_bytes()[:4] == b"\x89PNG"
