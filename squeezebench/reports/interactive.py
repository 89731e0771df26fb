"""What makes an HTML report a page to explore: interactive Pareto plots (plotly, its JavaScript
embedded once so the page works offline) and sortable, filterable tables.

Sorting and filtering are a few lines of plain JavaScript written here (:data:`TABLE_JS`): the
maintained table widgets (DataTables and the like) need jQuery or a bundler, and a report must
open from disk with nothing else.
"""
from __future__ import annotations

import html
import json
from typing import Any, Sequence

# Every <table class="sb"> gets a filter box above it and sortable headers (click: ascending,
# again: descending); numbers sort as numbers ("12.3 kB", "1.40x" and "98.2 %" included).
TABLE_JS = r"""
(function(){
 function num(s){var m=String(s).replace(/,/g,'').match(/^[^0-9+\-.]*([+\-]?[0-9]*\.?[0-9]+(e[+\-]?[0-9]+)?)/i);return m?parseFloat(m[1]):NaN;}
 function sortBy(t,c,dir){var b=t.tBodies[0],rows=Array.from(b.rows);
  rows.sort(function(x,y){var a=x.cells[c]?x.cells[c].textContent:'',z=y.cells[c]?y.cells[c].textContent:'',
   na=num(a),nz=num(z);var r=(!isNaN(na)&&!isNaN(nz))?na-nz:a.localeCompare(z);return dir*r;});
  rows.forEach(function(r){b.appendChild(r);});}
 document.querySelectorAll('table.sb').forEach(function(t){
  var f=document.createElement('input');f.type='search';f.placeholder='filter rows (all words must match)';f.className='sbfilter';
  f.addEventListener('input',function(){var w=f.value.toLowerCase().split(/\s+/).filter(Boolean);
   Array.from(t.tBodies[0].rows).forEach(function(r){var s=r.textContent.toLowerCase();
    r.style.display=w.every(function(x){return s.indexOf(x)>=0;})?'':'none';});});
  t.parentNode.insertBefore(f,t);
  Array.from(t.tHead.rows[0].cells).forEach(function(th,c){th.style.cursor='pointer';th.title='click to sort';
   th.addEventListener('click',function(){var d=th.dataset.dir==='1'?-1:1;
    Array.from(t.tHead.rows[0].cells).forEach(function(h){delete h.dataset.dir;});th.dataset.dir=String(d);sortBy(t,c,d);});});
 });
})();
"""

CSS = """
input.sbfilter{display:block;margin:.3em 0;padding:3px 6px;width:28em;font-size:12px}
th[data-dir="1"]::after{content:" ▲"} th[data-dir="-1"]::after{content:" ▼"}
div.sbplot{width:900px;height:520px;display:inline-block}
"""


def plotly_js() -> str:
    """plotly.js itself, to embed once per page (offline)."""
    from plotly.offline import get_plotlyjs

    return get_plotlyjs()


def pareto_figure(points: Sequence[dict[str, Any]], *, title: str, x: str, x_title: str,
                  front: set[str], winners: dict[str, str], hover: Sequence[str]) -> Any:
    """A plotly scatter of ``points`` (dicts with ``variant``, ``top1``, ``x`` and the ``hover``
    fields): every variant by technique group, the front as a line, each objective's winner as a
    star named after the objective."""
    import plotly.graph_objects as go

    fig = go.Figure()
    groups: dict[str, list[dict]] = {}
    for p in points:
        groups.setdefault(p.get("group", "variants"), []).append(p)

    def text(p: dict) -> str:
        return "<br>".join([f"<b>{html.escape(str(p['variant']))}</b>", f"top-1 {p['top1']:.2f} %",
                            f"{x} {p[x]:,.0f}"] + [f"{h}: {p[h]}" for h in hover if p.get(h) is not None])

    for g, ps in sorted(groups.items()):
        fig.add_trace(go.Scatter(x=[p[x] for p in ps], y=[p["top1"] for p in ps], mode="markers", name=g,
                                 text=[text(p) for p in ps], hoverinfo="text", customdata=[p["variant"] for p in ps],
                                 marker={"size": 9, "opacity": 0.8}))
    fr = sorted((p for p in points if p["variant"] in front), key=lambda p: p[x])
    if fr:
        fig.add_trace(go.Scatter(x=[p[x] for p in fr], y=[p["top1"] for p in fr], mode="lines+markers",
                                 name="Pareto front", line={"shape": "hv", "color": "black"},
                                 marker={"size": 12, "symbol": "circle-open", "color": "black"},
                                 text=[text(p) for p in fr], hoverinfo="text", customdata=[p["variant"] for p in fr]))
    by_id = {p["variant"]: p for p in points}
    for objective, vid in winners.items():
        if vid in by_id:
            p = by_id[vid]
            fig.add_trace(go.Scatter(x=[p[x]], y=[p["top1"]], mode="markers", name=f"winner: {objective}",
                                     marker={"size": 18, "symbol": "star", "line": {"width": 1, "color": "black"}},
                                     text=[text(p)], hoverinfo="text", customdata=[vid]))
    fig.update_layout(title=title, xaxis={"title": x_title, "type": "log"}, yaxis={"title": "top-1 accuracy (%)"},
                      template="plotly_white", legend={"font": {"size": 10}}, margin={"l": 60, "r": 20, "t": 50, "b": 50})
    return fig


def figure_div(fig: Any, div_id: str) -> str:
    """The figure as a <div> for a page that embeds plotly.js once (:func:`page`)."""
    return fig.to_html(full_html=False, include_plotlyjs=False, div_id=div_id,
                       default_width="900px", default_height="520px")


def sortable(table_html: str) -> str:
    """Mark a rendered ``<table>`` for :data:`TABLE_JS`."""
    return table_html.replace("<table>", '<table class="sb">', 1)


def page(title: str, body: Sequence[str], css: str = "", with_plotly: bool = True) -> str:
    """A self-contained HTML page: plotly.js and the table script inline."""
    head = (f"<!DOCTYPE html><html><head><meta charset='utf-8'><title>{html.escape(title)}</title>"
            f"<style>{css}{CSS}</style>")
    if with_plotly:
        head += f"<script>{plotly_js()}</script>"
    return head + "</head><body>" + "\n".join(body) + f"<script>{TABLE_JS}</script></body></html>"


def json_script(data: Any, element_id: str) -> str:
    """Data for scripts and tests, in a ``<script type="application/json">``."""
    return (f'<script type="application/json" id="{html.escape(element_id)}">'
            + json.dumps(data).replace("</", "<\\/") + "</script>")
