"""``python -m reports VIEW ...`` in this repo: the same as the installed ``squeezebench VIEW ...``."""
import sys

from squeezebench.reports.cli import main

sys.exit(main(prog="python -m reports"))
