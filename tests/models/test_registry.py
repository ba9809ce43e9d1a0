import pytest
import torch
from pydantic import ValidationError

from bench.tutorial_loop import NeuralNetwork
from models import build_model
from spec.architectures import ARCHITECTURES
from spec.networks.layers import InputShape

FASHION = InputShape(1, 28, 28, 10)


@pytest.mark.parametrize("arch", sorted(ARCHITECTURES))
def test_every_architecture_builds_for_the_datasets_shape(arch: str):
    model = build_model(arch, None, FASHION)
    out = model(torch.rand(3, 1, 28, 28))
    assert out.shape == (3, 10)
    if ARCHITECTURES[arch].output == "log_probs":
        assert torch.allclose(out.exp().sum(1), torch.ones(3), atol=1e-5)


@pytest.mark.parametrize("arch", ["resnet18", "vgg11", "lenet5", "mlp"])
def test_adapts_to_channels_size_and_classes(arch: str):
    model = build_model(arch, None, InputShape(3, 32, 32, 7))
    assert model(torch.rand(2, 3, 32, 32)).shape == (2, 7)


def test_mlp_matches_the_tutorial_network_for_a_seed():
    torch.manual_seed(4)
    reference = NeuralNetwork()
    torch.manual_seed(4)
    ours = build_model("mlp", None, FASHION)
    ref_state = reference.state_dict()
    assert list(ref_state) == list(ours.state_dict())
    assert all(torch.equal(ref_state[k], v) for k, v in ours.state_dict().items())


def test_mlp_hidden_sizes_are_params():
    model = build_model("mlp", {"hidden": [32, 16, 8]}, FASHION)
    linears = [m for m in model.modules() if isinstance(m, torch.nn.Linear)]
    assert [(m.in_features, m.out_features) for m in linears] == [(784, 32), (32, 16), (16, 8), (8, 10)]


@pytest.mark.parametrize("params", [{"hidden": []}, {"hidden": [0]}, {"hidden": [10**6]}, {"depth": 3}])
def test_params_are_validated_with_bounds(params: dict):
    with pytest.raises(ValidationError):
        build_model("mlp", params, FASHION)


def test_torchvision_archs_have_no_pretrained_weights():
    # Two builds with different seeds differ: random init, nothing loaded.
    torch.manual_seed(0)
    a = build_model("resnet18", None, FASHION).state_dict()["fc.weight"]
    torch.manual_seed(1)
    b = build_model("resnet18", None, FASHION).state_dict()["fc.weight"]
    assert not torch.equal(a, b)
