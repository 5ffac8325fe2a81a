import torch

from sqs_pyro import PriorSpec
from sqs_pyro.guides import SQSGuide, bayesian_average, greedy_map, hard_assignment, sample_networks
from sqs_pyro.models import Categorical, SQSModel


def _fitted(num_components=4):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(6, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    spec = PriorSpec({"_default": {"num_components": num_components}})
    model = SQSModel(net, spec, Categorical(), num_data=100)
    guide = SQSGuide(model)
    with torch.no_grad():  # prune a few weights by hand
        guide.params_of("0.weight").mask[:3] = False
        guide.params_of("2.weight").rho[0, :5] = -1.0  # gamma -> 0: pruned by the posterior
    return model, guide


def test_greedy_weights_lie_exactly_on_the_codebook():
    model, guide = _fitted()
    net = greedy_map(model, guide)
    for name in model.sites:
        w = net.get_parameter(name).detach()
        codebook = guide.params_of(name).locs.detach().reshape(-1)
        nonzero = w[w != 0]
        assert torch.isin(nonzero, codebook).all()
        assert len(torch.unique(nonzero)) <= 4
    assert (net.get_parameter("0.weight")[:3] == 0).all()
    assert (net.get_parameter("2.weight")[0, :5] == 0).all()


def test_prune_rules():
    model, guide = _fitted()
    by_mask = hard_assignment(model, guide, prune="mask")["2.weight"]
    by_posterior = hard_assignment(model, guide)["2.weight"]
    assert by_mask.mask.sum() == by_posterior.mask.sum() + 5


def test_greedy_is_the_most_probable_component():
    model, guide = _fitted()
    site = model.sites["0.weight"]
    phi = guide.params_of("0.weight").component_probs(site.anchor)
    locs = guide.params_of("0.weight").locs.detach().reshape(-1)
    expected = locs[phi.argmax(-1)] * guide.params_of("0.weight").mask
    assert torch.equal(greedy_map(model, guide).get_parameter("0.weight").detach(), expected)


def test_bayesian_average_shapes_and_temperature():
    model, guide = _fitted()
    x = torch.randn(7, 6)
    logits = bayesian_average(model, guide, x, num_samples=4)
    assert logits.shape == (7, 3)
    greedy = greedy_map(model, guide)(x)
    # at the training temperature phi is nearly one-hot: draws equal the greedy network
    assert torch.allclose(logits, greedy, atol=1e-5)
    hot = sample_networks(model, guide, 2, eval_temperature=10.0, generator=torch.Generator().manual_seed(0))
    assert not torch.equal(hot[0]["0.weight"], hot[1]["0.weight"])
