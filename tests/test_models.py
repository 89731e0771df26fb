"""The registry: every registered model is built and run for both input shapes."""
import pytest
import torch

import squeezebench.models as models
from squeezebench.metrics import count_macs, count_params


@pytest.mark.parametrize("name", models.list_models())
@pytest.mark.parametrize("in_shape", [(1, 28, 28), (3, 32, 32)])
def test_every_model_builds_and_runs(name, in_shape):
    m = models.create_model(name, in_shape, 10).eval()
    out = m(torch.zeros(3, *in_shape))
    assert out.shape == (3, 10)
    assert count_params(m) > 0
    assert count_macs(m, in_shape) > 0


@pytest.mark.parametrize("name", models.list_models())
def test_registry_entry_has_description_and_source(name):
    e = models.model_entry(name)
    assert e.description, f"{name} needs a docstring"
    assert e.source_file.is_file()


@pytest.mark.parametrize("name,in_shape,params", [
    # The study's Tables 6 and 10 (LeNet-5 with biases); LeNet-300-100: weights 266200 + biases 410.
    ("lenet5", (1, 28, 28), 44426),
    ("lenet5", (3, 32, 32), 62006),
    ("lenet300_100", (1, 28, 28), 266610),
])
def test_parameter_counts_match_the_study(name, in_shape, params):
    assert count_params(models.create_model(name, in_shape, 10)) == params


def test_mlp_student_is_one_hidden_layer_of_50():
    m = models.create_model("mlp_student", (1, 28, 28), 10)
    linears = [l for l in m.modules() if isinstance(l, torch.nn.Linear)]
    assert [l.out_features for l in linears] == [50, 10]


def test_unknown_model_and_bad_shapes_are_clear_errors():
    with pytest.raises(KeyError, match="registered: .*lenet5"):
        models.create_model("nope", (1, 28, 28), 10)
    with pytest.raises(ValueError, match="in_shape"):
        models.create_model("lenet5", (28, 28), 10)
    with pytest.raises(ValueError, match="at least 16x16"):
        models.create_model("lenet5", (1, 8, 8), 10)


def test_registering_a_duplicate_name_fails():
    before = models.list_models()
    with pytest.raises(ValueError, match="twice"):
        models.register_model(models.lenet.lenet5)
    assert models.list_models() == before
