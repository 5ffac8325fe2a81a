import pyro
import pyro.distributions as dist
import pytest
import torch

from sqs_pyro.distributions import SpikeSlab

SLABS = {
    "normal": lambda: dist.Normal(0.5, 2.0),
    "laplace": lambda: dist.Laplace(-1.0, 1.0),
    "studentt": lambda: dist.StudentT(5.0, 0.0, 1.0),
}


def test_default_slab_is_normal_0_3():
    p = SpikeSlab(0.01)
    assert isinstance(p.slab, dist.Normal)
    assert p.slab.loc.item() == 0.0 and p.slab.scale.item() == 3.0
    assert p.batch_shape == torch.Size([]) and p.event_shape == torch.Size([])
    q = SpikeSlab(torch.tensor(0.2, dtype=torch.float64))
    assert q.slab.loc.dtype == torch.float64


def test_float_inclusion_prob_follows_slab_dtype():
    slab = dist.Normal(torch.tensor(0.0, dtype=torch.float64), 1.0)
    assert SpikeSlab(0.1, slab).inclusion_prob.dtype == torch.float64


def test_batch_shape_broadcasts():
    p = SpikeSlab(torch.rand(3), dist.Normal(0.0, torch.ones(2, 1)))
    assert p.batch_shape == torch.Size([2, 3])
    assert p.slab.batch_shape == torch.Size([2, 3])
    assert p.inclusion_prob.shape == torch.Size([2, 3])
    assert p.sample().shape == torch.Size([2, 3])
    assert p.sample((5,)).shape == torch.Size([5, 2, 3])
    assert p.log_prob(torch.zeros(4, 1, 1)).shape == torch.Size([4, 2, 3])


@pytest.mark.parametrize("slab", SLABS)
def test_expand(slab):
    p = SpikeSlab(torch.tensor(0.3), SLABS[slab]())
    e = p.expand([4, 3])
    assert type(e) is SpikeSlab
    assert e.batch_shape == torch.Size([4, 3])
    assert e.slab.batch_shape == torch.Size([4, 3])
    assert e.inclusion_prob.shape == torch.Size([4, 3])
    assert e._validate_args == p._validate_args
    assert e.sample((2,)).shape == torch.Size([2, 4, 3])
    ee = e.expand([5, 4, 3])
    assert ee.batch_shape == torch.Size([5, 4, 3])
    x = torch.randn(5, 4, 3)
    assert torch.allclose(ee.log_prob(x), p.log_prob(x))
    assert ee.to_event(2).log_prob(x).shape == torch.Size([5])


@pytest.mark.parametrize("slab", SLABS)
def test_log_prob_values(slab):
    lam = torch.tensor([0.01, 0.3, 0.9])
    s = SLABS[slab]()
    p = SpikeSlab(lam, s)
    assert torch.allclose(p.log_prob(torch.zeros(3)), (1 - lam).log())
    x = torch.tensor([-1.5, 0.2, 3.0])
    assert torch.allclose(p.log_prob(x), lam.log() + s.log_prob(x))


@pytest.mark.parametrize("slab", SLABS)
def test_log_prob_matches_sampling(slab):
    lam = 0.3
    p = SpikeSlab(torch.tensor(lam), SLABS[slab]())
    n = 200_000
    x = p.sample((n,))
    # the atom
    zero_freq = (x == 0).double().mean().item()
    assert abs(zero_freq - (1 - lam)) < 4 * (lam * (1 - lam) / n) ** 0.5
    # the density of the nonzero part, integrated over histogram bins
    edges = torch.linspace(-6.0, 6.0, 25)
    nonzero = x[x != 0]
    counts = torch.histc(nonzero, bins=24, min=-6.0, max=6.0)
    freq = counts / n
    grid = torch.linspace(0, 1, 201)
    expected = []
    for a, b in zip(edges[:-1], edges[1:]):
        t = a + (b - a) * grid
        t = torch.where(t == 0, torch.full_like(t, 1e-6), t)
        expected.append(torch.trapezoid(p.log_prob(t).exp(), t))
    expected = torch.stack(expected)
    assert torch.allclose(freq, expected, atol=3e-3)


@pytest.mark.parametrize("slab", SLABS)
def test_mean_variance_match_samples(slab):
    p = SpikeSlab(torch.tensor([0.2, 0.7]), SLABS[slab]())
    x = p.sample((400_000,))
    assert torch.allclose(x.mean(0), p.mean, atol=0.02)
    assert torch.allclose(x.var(0), p.variance, rtol=0.05)


def test_validation_errors():
    with pytest.raises(ValueError):
        SpikeSlab(torch.tensor(1.5))
    with pytest.raises(ValueError):
        SpikeSlab(torch.tensor(-0.1))
    with pytest.raises(ValueError):
        SpikeSlab(0.1, dist.MultivariateNormal(torch.zeros(2), torch.eye(2)))
    with pytest.raises(ValueError):
        SpikeSlab(0.1).log_prob(torch.tensor(float("nan")))
    # validation can be switched off
    SpikeSlab(torch.tensor(1.5), validate_args=False)


def test_no_rsample():
    p = SpikeSlab(0.1)
    assert not p.has_rsample
    with pytest.raises(NotImplementedError):
        p.rsample()


def test_pyro_sample_site():
    def model():
        return pyro.sample("w", SpikeSlab(0.5, dist.Laplace(0.0, 1.0)).expand([3, 2]).to_event(2))

    tr = pyro.poutine.trace(model).get_trace()
    tr.compute_log_prob()
    assert tr.nodes["w"]["value"].shape == torch.Size([3, 2])
    assert tr.nodes["w"]["log_prob"].shape == torch.Size([])
