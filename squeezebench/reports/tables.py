"""A table both renderers (Markdown, HTML) and the terminal understand, and number formats."""
from __future__ import annotations

import html
from dataclasses import dataclass, field

MISSING = "not in this history"


@dataclass
class Table:
    title: str
    columns: list[str]
    rows: list[list[str]]
    notes: list[str] = field(default_factory=list)
    anchor: str = ""

    def markdown(self, level: int = 3) -> str:
        def esc(c: str) -> str:
            return str(c).replace("|", "\\|").replace("\n", " ")

        out = [f"{'#' * level} {self.title}", ""]
        if self.rows:
            out.append("| " + " | ".join(esc(c) for c in self.columns) + " |")
            out.append("|" + "|".join("---" for _ in self.columns) + "|")
            out += ["| " + " | ".join(esc(c) for c in row) + " |" for row in self.rows]
        else:
            out.append("(no rows)")
        for n in self.notes:
            out += ["", f"*{n}*"]
        return "\n".join(out) + "\n"

    def html(self, level: int = 3) -> str:
        e = html.escape
        anchor = f' id="{e(self.anchor)}"' if self.anchor else ""
        out = [f"<h{level}{anchor}>{e(self.title)}</h{level}>"]
        if self.rows:
            out.append("<table><thead><tr>" + "".join(f"<th>{e(str(c))}</th>" for c in self.columns) + "</tr></thead><tbody>")
            for row in self.rows:
                cells = []
                for c in row:
                    s = str(c)
                    cls = ' class="missing"' if s == MISSING else (' class="bad"' if s.startswith(("REGRESSED", "⚠", "INVALID")) else "")
                    cells.append(f"<td{cls}>{e(s)}</td>")
                out.append("<tr>" + "".join(cells) + "</tr>")
            out.append("</tbody></table>")
        else:
            out.append("<p>(no rows)</p>")
        out += [f'<p class="note">{e(n)}</p>' for n in self.notes]
        return "\n".join(out)

    def text(self) -> str:
        cols = [str(c) for c in self.columns]
        rows = [[str(c) for c in r] for r in self.rows]
        widths = [max([len(c)] + [len(r[i]) for r in rows]) for i, c in enumerate(cols)]
        line = lambda cells: "  ".join(c.ljust(w) for c, w in zip(cells, widths)).rstrip()  # noqa: E731
        out = [self.title, line(cols), line(["-" * w for w in widths])] + [line(r) for r in rows]
        return "\n".join(out + self.notes) + "\n"


def fmt(v, digits: int = 2, missing: str = "—") -> str:
    if v is None or v == "":
        return missing
    if isinstance(v, str):
        return v
    if isinstance(v, (bool, int)):
        return str(v)
    if isinstance(v, (list, tuple)):
        return ", ".join(map(str, v))
    if isinstance(v, dict):
        return ", ".join(f"{k}={x}" for k, x in v.items())
    return f"{v:.{digits}f}"


def fmt_sci(v, missing: str = "—") -> str:
    return missing if v is None else f"{v:.2E}"


def fmt_kb(nbytes, missing: str = "—") -> str:
    return missing if nbytes is None else f"{nbytes / 1000:.1f}"


def fmt_x(v, missing: str = "—") -> str:
    return missing if v is None else f"{v:.2f}x"
