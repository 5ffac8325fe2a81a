import pytest
import torch

from sqs_pyro import PriorSpec
from sqs_pyro.guides import SQSGuide, diagonal_fisher
from sqs_pyro.models import Gaussian, SQSModel


def _mse(net, batch):
    x, y = batch
    return torch.nn.functional.mse_loss(net(x), y)


def test_diagonal_fisher_is_the_mean_squared_gradient():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 2))
    batches = [(torch.randn(5, 3), torch.randn(5, 2)) for _ in range(3)]
    fisher = diagonal_fisher(net, _mse, batches, ["0.weight"])
    expected = 0
    for batch in batches:
        net.zero_grad()
        _mse(net, batch).backward()
        expected = expected + net[0].weight.grad.square()
    assert list(fisher) == ["0.weight"]
    assert torch.allclose(fisher["0.weight"], expected / 3)
    # requires_grad restored, the other parameters untouched
    assert all(p.requires_grad for p in net.parameters())


def test_fisher_init_needs_a_sensitivity():
    net = torch.nn.Linear(8, 4)
    model = SQSModel(net, PriorSpec({"_default": {"num_components": 2, "window": "channel", "init": "fisher"}}),
                     Gaussian(), num_data=10)
    with pytest.raises(ValueError, match="init='fisher' but no sensitivity"):
        SQSGuide(model)
    with pytest.raises(ValueError, match="not compressed sites"):
        SQSGuide(model, sensitivity={"bias": torch.ones(4), "weight": torch.ones(4, 8)})
    SQSGuide(model, sensitivity={"weight": torch.ones(4, 8)})


@pytest.mark.parametrize("window", ["layer", "channel"])
def test_a_sensitive_weight_gets_its_own_codebook_value(window):
    torch.manual_seed(0)
    net = torch.nn.Linear(64, 4, bias=False)
    model = SQSModel(net, PriorSpec({"_default": {"num_components": 3, "window": window}}), Gaussian(), num_data=10)
    sensitivity = torch.ones(4, 64)
    sensitivity[2, 17] = 1e8
    target = net.weight[2, 17].detach()
    plain = SQSGuide(model).params_of("weight").locs.detach()
    weighted = SQSGuide(model, sensitivity={"weight": sensitivity}).params_of("weight")
    row = 2 if window == "channel" else 0
    assert (weighted.locs.detach()[row] - target).abs().min() < 1e-4
    assert (plain[row] - target).abs().min() > 1e-3
    # refitting after pruning keeps the weighting
    with torch.no_grad():
        weighted.mask[:, :8] = False
        weighted.refit_codebook(net.weight)
    assert (weighted.locs.detach()[row] - target).abs().min() < 1e-4
