"""SVI on a sparse Bayesian linear regression recovers a sparse, quantized truth."""

import pyro
import pyro.optim
import torch

from sqs_pyro import SQSELBO
from sqs_pyro.guides import SQSGuide, greedy_weights
from sqs_pyro.models import Gaussian, SQSModel


def _fit(plug_in, steps=250):
    torch.manual_seed(0)
    n, p = 400, 12
    truth = torch.zeros(p)
    truth[[1, 4, 7, 10]] = torch.tensor([1.5, -1.0, -1.0, 1.5])  # nonzeros from a 2-level codebook
    x = torch.randn(n, p)
    y = x @ truth + 0.5 * torch.randn(n)
    net = torch.nn.Linear(p, 1, bias=False)
    with torch.no_grad():  # the "pretrained" network: least squares
        net.weight.copy_(torch.linalg.lstsq(x, y.unsqueeze(-1)).solution.T)
    spec = {"_default": {"num_components": 3, "inclusion_prob": 0.1}}
    model = SQSModel(net, spec, Gaussian(scale=0.5), num_data=n)
    guide = SQSGuide(model)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 2e-2}), SQSELBO(plug_in=plug_in))
    for _ in range(steps):
        svi.step(x, y)
    return truth, model, guide


def test_sparse_truth_is_recovered_with_sampled_particles():
    truth, model, guide = _fit("sample")
    gate = guide.params_of("weight").gate_probs().detach().squeeze(0)
    relevant = truth != 0
    assert (gate[relevant] > 0.95).all(), gate
    assert (gate[~relevant] < 0.05).all(), gate
    w = greedy_weights(model, guide)["weight"].squeeze(0)
    assert torch.equal(w[~relevant], torch.zeros(int((~relevant).sum())))
    assert torch.allclose(w[relevant], truth[relevant], atol=0.1)
    codebook = guide.params_of("weight").locs.detach().squeeze(0)
    assert torch.allclose(codebook[[0, 2]], torch.tensor([-1.0, 1.5]), atol=0.1)


def test_posterior_mean_plug_in_finds_the_support():
    # The likelihood at the posterior mean only sees gamma * mu, so gates of relevant
    # weights need not reach 1 (mu grows instead); the support is still found.
    truth, model, guide = _fit("mean")
    gate = guide.params_of("weight").gate_probs().detach().squeeze(0)
    relevant = truth != 0
    assert gate[relevant].min() > 10 * gate[~relevant].max(), gate
