"""The runtime floor (``python -m squeezebench.overhead --floor``): a near-empty model per backend."""
import math

import pytest

from squeezebench.backends import get_backend
from squeezebench.overhead import floor_us, main


def test_floor_times_every_available_backend_and_names_why_not():
    backends = ["torch-cpu", "onnxruntime", "torch-cuda"]
    res = floor_us(backends, [1, 4], seconds=0.01, threads=1)
    assert set(res) == set(backends)
    for name, r in res.items():
        reason = get_backend(name).unavailable_reason()
        if reason is not None:
            assert r == reason  # a skip with its reason, not a number
            continue
        assert set(r) == {1, 4}
        assert all(math.isfinite(us) and us > 0 for us in r.values())


def test_floor_cli_prints_a_row_per_backend_and_batch(capsys):
    pytest.importorskip("onnxruntime")
    assert main(["--floor", "--backends", "onnxruntime", "--batches", "1,2", "--seconds", "0.01",
                 "--threads", "1"]) == 0
    out = capsys.readouterr().out
    rows = [line.split() for line in out.splitlines() if line.startswith("onnxruntime")]
    assert [r[1] for r in rows] == ["1", "2"] and all(float(r[2]) > 0 for r in rows)
