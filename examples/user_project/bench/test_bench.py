"""One benchmark record per model x dataset x variant x backend x batch of the profile in
pyproject.toml's [tool.squeezebench]; the plugin's ``sb_record`` fixture measures and records."""
import pytest


@pytest.mark.bench
def test_variant(sb_record):
    sb_record()
