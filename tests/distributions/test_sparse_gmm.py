import pyro.distributions as dist
import pytest
import torch

from sqs_pyro.distributions import SparseGMM
from sqs_pyro.soft_quantize import posterior_mean


def _layer(batch=(4, 3), K=4, dtype=torch.float32):
    """A layer's posterior: per-weight gates and phi, a codebook shared by the layer."""
    gate = torch.rand(batch, dtype=dtype)
    probs = torch.distributions.Dirichlet(torch.ones(K, dtype=dtype)).sample(batch)
    locs = torch.linspace(-1.0, 1.0, K, dtype=dtype).reshape((1,) * len(batch) + (K,))
    scales = torch.full((1,) * len(batch) + (K,), 0.1, dtype=dtype)
    return gate, probs, locs, scales


def _scalar_mixtures():
    # three weights with their own gate and phi over a shared 3-level codebook
    gate = torch.tensor([0.3, 0.8, 1.0])
    probs = torch.tensor([[0.2, 0.5, 0.3], [1.0, 0.0, 0.0], [0.1, 0.1, 0.8]])
    locs = torch.tensor([-2.0, 0.5, 1.5])
    scales = torch.tensor([0.5, 0.3, 1.0])
    return SparseGMM(gate, probs, locs, scales)


def test_shapes_and_codebook_not_expanded():
    gate, probs, locs, scales = _layer()
    q = SparseGMM(gate, probs, locs, scales)
    assert q.batch_shape == torch.Size([4, 3]) and q.event_shape == torch.Size([])
    assert q.num_components == 4
    assert q.locs.shape == torch.Size([1, 1, 4]) and q.scales.shape == torch.Size([1, 1, 4])
    assert q.sample().shape == torch.Size([4, 3])
    assert q.sample((5,)).shape == torch.Size([5, 4, 3])
    assert q.rsample((5,)).shape == torch.Size([5, 4, 3])
    assert q.log_prob(q.sample((2,))).shape == torch.Size([2, 4, 3])
    assert q.mean.shape == q.variance.shape == torch.Size([4, 3])


def test_batch_shape_from_codebook_and_gate():
    # one codebook per output row, gate broadcast from a scalar
    locs = torch.randn(4, 1, 2)
    q = SparseGMM(torch.tensor(0.5), torch.full((4, 3, 2), 0.5), locs, torch.ones(2))
    assert q.batch_shape == torch.Size([4, 3])
    assert q.gate_probs.shape == torch.Size([4, 3])
    assert q.locs.shape == torch.Size([4, 1, 2])


def test_expand():
    gate, probs, locs, scales = _layer()
    q = SparseGMM(gate, probs, locs, scales, temperature=0.3)
    e = q.expand([2, 4, 3])
    assert type(e) is SparseGMM
    assert e.batch_shape == torch.Size([2, 4, 3])
    assert e.component_probs.shape == torch.Size([2, 4, 3, 4])
    assert e.locs.shape == torch.Size([1, 1, 4])
    assert e.temperature == 0.3
    assert e._validate_args == q._validate_args
    x = q.sample((2,))
    assert torch.allclose(e.log_prob(x), q.log_prob(x))
    assert e.sample().shape == torch.Size([2, 4, 3])
    assert q.to_event(2).log_prob(x).shape == torch.Size([2])


def test_log_prob_values():
    q = _scalar_mixtures()
    assert torch.allclose(q.log_prob(torch.zeros(3)), (1 - q.gate_probs).log())
    x = torch.tensor([-1.0, 0.7, 2.0])
    mix = (q.component_probs * dist.Normal(q.locs, q.scales).log_prob(x[:, None]).exp()).sum(-1)
    assert torch.allclose(q.log_prob(x), q.gate_probs.log() + mix.log())


def test_log_prob_matches_sampling():
    q = _scalar_mixtures()
    n = 200_000
    x = q.sample((n,))
    gamma = q.gate_probs
    zero_freq = (x == 0).double().mean(0).float()
    assert torch.allclose(zero_freq, 1 - gamma, atol=4 * (0.25 / n) ** 0.5)
    edges = torch.linspace(-5.0, 5.0, 41)
    grid = torch.linspace(0, 1, 101)
    for i in range(3):
        nonzero = x[:, i][x[:, i] != 0]
        freq = torch.histc(nonzero, bins=40, min=-5.0, max=5.0) / n
        expected = []
        for a, b in zip(edges[:-1], edges[1:]):
            t = a + (b - a) * grid
            t = torch.where(t == 0, torch.full_like(t, 1e-6), t)
            lp = q.log_prob(t[:, None].expand(-1, 3))[:, i]
            expected.append(torch.trapezoid(lp.exp(), t))
        assert torch.allclose(freq, torch.stack(expected), atol=3e-3)


def test_mean_variance_match_samples():
    q = _scalar_mixtures()
    x = q.sample((400_000,))
    assert torch.allclose(x.mean(0), q.mean, atol=0.01)
    assert torch.allclose(x.var(0), q.variance, rtol=0.02)
    # the mean is the posterior-mean weight of soft_quantize
    assert torch.allclose(q.mean, posterior_mean(q.gate_probs, q.component_probs, q.locs))


def test_rsample_is_a_differentiable_relaxation():
    gate, probs, locs, scales = _layer(batch=(5,), K=3)
    params = [t.clone().requires_grad_() for t in (gate.clamp(0.1, 0.9), probs, locs, scales)]
    q = SparseGMM(*params, temperature=0.5)
    x = q.rsample((3,))
    assert x.shape == torch.Size([3, 5])
    assert (x != 0).all()  # a relaxation never hits the atom exactly
    x.pow(2).sum().backward()
    for p in params:
        assert p.grad is not None and torch.isfinite(p.grad).all() and (p.grad != 0).any()


def test_rsample_approaches_exact_moments_at_low_temperature():
    q = _scalar_mixtures()
    gate = q.gate_probs.clamp(max=0.99)
    q = SparseGMM(gate, q.component_probs, q.locs, q.scales, temperature=0.01)
    x = q.rsample((100_000,))
    assert torch.allclose(x.mean(0), q.mean, atol=0.05)


def test_validation_errors():
    gate, probs, locs, scales = _layer()
    with pytest.raises(ValueError):
        SparseGMM(gate + 1.0, probs, locs, scales)
    with pytest.raises(ValueError):
        SparseGMM(gate, probs * 2, locs, scales)
    with pytest.raises(ValueError):
        SparseGMM(gate, probs, locs, -scales)
    with pytest.raises(ValueError):
        SparseGMM(gate, probs, locs, scales, temperature=0.0)
    with pytest.raises(ValueError):
        SparseGMM(gate, probs, locs, scales).log_prob(torch.full((4, 3), float("nan")))
    # validation can be switched off
    SparseGMM(gate + 1.0, probs, locs, scales, validate_args=False)


def test_float64():
    gate, probs, locs, scales = _layer(dtype=torch.float64)
    q = SparseGMM(gate, probs, locs, scales)
    assert q.sample().dtype == q.rsample().dtype == q.mean.dtype == torch.float64
