"""The ``squeezebench`` command (installed as a console script; also ``python -m squeezebench``):
reports and gates from saved histories. ``squeezebench --help`` lists the views."""
from __future__ import annotations

import sys

from squeezebench.reports.cli import main as reports_main


def main(argv: list[str] | None = None) -> int:
    """``squeezebench VIEW ...``: summary, paper, plots, markdown, html, compare."""
    return reports_main(argv, prog="squeezebench")


if __name__ == "__main__":
    sys.exit(main())
