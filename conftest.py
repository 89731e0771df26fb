"""This repo's own pytest wiring. The squeezebench plugin (options, parametrization, machine
info) and its fixtures are loaded by pytest through the package's ``pytest11`` entry points
(``pip install -e .``, which ``make`` does), exactly as in a user's project: nothing to list here."""
