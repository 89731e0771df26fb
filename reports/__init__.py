"""``python -m reports`` in this repo: the installed ``squeezebench`` command's views
(``squeezebench.reports``). ``histories/`` holds committed example histories."""
