"""The project's own unit tests, beside squeezebench's plugin: its `models` package is its own."""
from pathlib import Path

import torch

import models
from models.cnn import small_cnn

PROJECT = Path(__file__).resolve().parents[1]


def test_shapes():
    assert Path(models.__file__).resolve().parent == PROJECT / "models"  # this project's, not squeezebench's
    assert small_cnn((1, 28, 28), 10)(torch.zeros(2, 1, 28, 28)).shape == (2, 10)


def test_the_plugin_is_loaded(pytestconfig):
    assert pytestconfig.pluginmanager.has_plugin("squeezebench")
    assert pytestconfig._squeezebench_profile.pairs == (("models.cnn:small_cnn", "mnist"),)
