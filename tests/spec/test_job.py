"""JobSpec: defaults equal the tutorial; unknown names answer with the valid ones; numbers are bounded."""

import pytest
from pydantic import ValidationError

from spec.job import JobSpec


def test_smallest_spec_is_the_fashion_mnist_tutorial():
    s = JobSpec.model_validate({"dataset": {"name": "fashion-mnist"}, "model": {"arch": "mlp"}})
    d = s.model_dump(mode="json")
    assert d["optimizer"] == {"name": "sgd", "lr": 0.001, "momentum": 0.0, "weight_decay": 0.0,
                              "nesterov": False}
    assert d["loss"] == {"name": "cross_entropy", "label_smoothing": 0.0}
    assert (d["epochs"], d["batch_size"], d["shuffle"], d["seed"]) == (10, 64, False, 0)
    assert d["model"] == {"arch": "mlp", "params": {"hidden": [512, 512], "dropout": 0.0}}
    assert JobSpec.model_validate(d) == s  # the stored spec round-trips


@pytest.mark.parametrize(("body", "fragment"), [
    ({"model": {"arch": "alexnet9"}}, "'mlp', 'mnist-mlp', 'lenet5'"),
    ({"optimizer": {"name": "lbfgs"}}, "'sgd', 'adam', 'adamw', 'rmsprop'"),
    ({"loss": "hinge"}, "'cross_entropy', 'nll', 'mse'"),
    ({"dataset": {"name": "cifar10"}}, "'fashion-mnist' or 'mnist'"),
    ({"scheduler": "warmup"}, "'step', 'cosine', 'onecycle'"),
])
def test_unknown_names_list_the_valid_ones(body: dict, fragment: str):
    with pytest.raises(ValidationError) as e:
        JobSpec.model_validate(body)
    assert fragment in str(e.value)


@pytest.mark.parametrize("body", [
    {"epochs": 0}, {"epochs": 10**6}, {"batch_size": 0}, {"seed": -1}, {"optimizer": {"name": "sgd", "lr": 0}},
    {"optimizer": {"name": "sgd", "lr": 100}}, {"optimizer": {"name": "sgd", "momentum": 1.5}},
    {"dataset": {"name": "mnist", "val_fraction": 0.9}}, {"device": "tpu"}, {"max_attempts": 0},
    {"loss": {"name": "cross_entropy", "label_smoothing": 1.0}}, {"unknown": 1},
    {"optimizer": {"name": "sgd", "betas": [0.9, 0.99]}}, {"model": {"arch": "mlp", "params": {"x": 1}}},
    {"optimizer": {"name": "sgd", "nesterov": True}},
])
def test_out_of_bounds_and_unknown_fields_are_rejected(body: dict):
    with pytest.raises(ValidationError):
        JobSpec.model_validate(body)


def test_nll_needs_log_probabilities():
    with pytest.raises(ValidationError, match="expects log-probabilities"):
        JobSpec.model_validate({"model": {"arch": "mlp"}, "loss": "nll"})
    JobSpec.model_validate({"model": {"arch": "mnist-mlp"}, "loss": "nll"})
