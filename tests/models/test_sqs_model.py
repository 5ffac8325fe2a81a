"""SQSModel: sites from the prior spec, anchors that are the network's own weights, the substituted forward."""

import pyro.poutine as poutine
import pytest
import torch

from sqs_pyro import PriorSpec
from sqs_pyro.distributions import SpikeSlab
from sqs_pyro.models import Categorical, SQSModel, spike_slab_prior


def _net():
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))


def test_sites_follow_the_spec_and_anchors_are_the_networks_parameters():
    net = _net()
    model = SQSModel(net, {"_default": {"num_components": 4}, "2": None}, Categorical(), num_data=10)
    assert list(model.sites) == ["0.weight"]
    site = model.sites["0.weight"]
    assert site.anchor is net[0].weight and site.shape == (8, 4) and site.settings.guide.num_components == 4
    assert not net[0].weight.requires_grad  # anchors are frozen (train_anchors off)
    assert [n for n, _ in model.point_parameters()] == ["0.bias", "2.weight", "2.bias"]
    assert isinstance(model.prior_spec, PriorSpec)


def test_forward_runs_the_network_with_the_sampled_weights_substituted():
    net = _net()
    model = SQSModel(net, {"_default": {"num_components": 4}}, Categorical(), num_data=10)
    x, y = torch.randn(5, 4), torch.tensor([0, 1, 2, 0, 1])
    weights = {"0.weight": torch.zeros(8, 4), "2.weight": torch.ones(3, 8)}
    out = poutine.condition(model, data=weights)(x, y)
    expected = torch.relu(x @ weights["0.weight"].T + net[0].bias) @ weights["2.weight"].T + net[2].bias
    assert torch.allclose(out, expected)
    assert torch.equal(net[0].weight, model.sites["0.weight"].anchor)  # the module itself is not modified
    trace = poutine.trace(poutine.condition(model, data=weights)).get_trace(x, y)
    assert trace.nodes["obs"]["scale"] == pytest.approx(2.0)  # num_data / batch
    assert [n for n, node in trace.nodes.items() if node["type"] == "param"] == ["net.0.bias", "net.2.bias"]


def test_the_prior_is_spike_and_slab_per_weight():
    net = _net()
    model = SQSModel(net, {"_default": {"num_components": 4}}, Categorical(), num_data=10)
    prior = model.prior("0.weight")
    assert prior.event_shape == (8, 4) and isinstance(prior.base_dist, SpikeSlab)
    settings = model.sites["0.weight"].settings.prior
    assert torch.allclose(prior.base_dist.inclusion_prob, torch.tensor(settings.inclusion_prob))
    zero = torch.zeros(8, 4)
    assert torch.isfinite(prior.log_prob(zero))  # the spike: a point mass at zero
    assert spike_slab_prior(settings, net[0].weight).event_shape == prior.event_shape
