"""This repo's benchmark suite: one record per test id (model x dataset x variant x backend x
batch), parametrized by the plugin from the profile. The plugin's ``sb_record`` fixture does
the measuring and recording (see squeezebench.fixtures); a user's project has the same test."""
import pytest


@pytest.mark.bench
def test_variant(sb_record):
    sb_record()
