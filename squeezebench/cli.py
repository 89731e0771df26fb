"""The ``squeezebench`` command (installed as a console script; also ``python -m squeezebench``):
``squeezebench search ...`` runs a budget search (:mod:`squeezebench.search`); every other view
reads saved histories (reports and gates). ``squeezebench --help`` lists the views."""
from __future__ import annotations

import sys

from squeezebench.reports.cli import main as reports_main


def main(argv: list[str] | None = None) -> int:
    """``squeezebench VIEW ...``: summary, paper, plots, markdown, html, compare, trend; or search."""
    argv = sys.argv[1:] if argv is None else argv
    if argv[:1] == ["search"]:
        from squeezebench.search import main as search_main

        return search_main(argv[1:], prog="squeezebench")
    return reports_main(argv, prog="squeezebench")


if __name__ == "__main__":
    sys.exit(main())
