"""Reports and regression gates from saved pytest-benchmark histories (``python -m reports``).

Reads ``.benchmarks/<machine>/NNNN_*.json`` only; never reruns a benchmark."""
