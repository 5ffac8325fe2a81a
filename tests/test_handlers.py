"""Effect handlers: the posterior-mean plug-in, exact and relaxed draws, codebook draws."""

import pyro
import pyro.distributions as dist
import torch

from sqs_pyro.distributions import SparseGMM
from sqs_pyro.handlers import CodebookDraws, ExactDraws, PosteriorMean, RelaxedDraws

LOCS = torch.tensor([-0.5, 0.25, 1.0])


def _q(n=2000):
    return SparseGMM(torch.full((n,), 0.6), torch.tensor([0.2, 0.3, 0.5]).expand(n, 3), LOCS.expand(n, 3),
                     torch.full((n, 3), 0.05))


def _site(n=2000):
    return pyro.sample("w", ExactDraws.wrap(_q(n).to_event(1)))


def test_posterior_mean_sets_latent_sites_to_their_mean_only():
    def model():
        a = pyro.sample("a", dist.Normal(torch.tensor(2.0), 1.0))
        b = pyro.sample("b", dist.Normal(torch.tensor(-3.0), 1.0))
        pyro.sample("y", dist.Normal(a, 1.0), obs=torch.tensor(0.0))
        return a, b

    with PosteriorMean():
        assert model() == (2.0, -3.0)
    with PosteriorMean(sites=["a"]):
        a, b = model()
    assert a == 2.0 and b != -3.0
    trace = pyro.poutine.trace(PosteriorMean()(model)).get_trace()
    assert trace.nodes["y"]["value"] == 0.0  # observed values are kept


def test_exact_draws_are_exact_and_not_reparameterized():
    fn = ExactDraws.wrap(_q().to_event(1))
    assert ExactDraws.wrap(fn) is fn and not fn.has_rsample
    w = _site()
    nonzero = w[w != 0]
    assert 0.3 < (w == 0).double().mean() < 0.5  # the spike: exact zeros, 1 - gate
    assert (nonzero.unsqueeze(-1) - LOCS).abs().min(-1).values.max() < 0.3  # around the codebook values


def test_relaxed_draws_are_the_reparameterized_relaxation():
    with RelaxedDraws():
        w = _site()
    assert (w == 0).sum() == 0  # a relaxation: never exactly zero


def test_codebook_draws_are_exactly_zero_or_a_codebook_value():
    with CodebookDraws():
        w = _site()
    distance = (w.unsqueeze(-1) - torch.cat([LOCS, torch.zeros(1)])).abs().min(-1).values
    assert torch.equal(distance, torch.zeros_like(distance))
    assert 0.3 < (w == 0).double().mean() < 0.5
