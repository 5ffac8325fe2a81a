import math

import pyro
import pyro.distributions as dist
import pytest
import torch
from torch.distributions import kl_divergence

from pyro.infer import TraceMeanField_ELBO

from sqs_pyro.distributions import SparseGMM, SpikeSlab, component_kl, kl_bound_terms
from sqs_pyro.distributions import kl as kl_module

SLABS = {
    "normal": lambda: dist.Normal(torch.tensor(0.3, dtype=torch.float64), 2.0),
    "laplace": lambda: dist.Laplace(torch.tensor(-0.2, dtype=torch.float64), 1.5),
    "studentt": lambda: dist.StudentT(torch.tensor(4.0, dtype=torch.float64), 0.0, 1.5),
}


def _random_pair(seed, slab, batch=6):
    """Random per-weight posteriors (own codebooks) and a spike-and-slab prior, float64."""
    g = torch.Generator().manual_seed(seed)
    K = [1, 2, 4, 8][seed % 4]
    u = lambda *shape: torch.rand(*shape, generator=g, dtype=torch.float64)  # noqa: E731
    gate = 0.5 + 0.45 * u(batch)
    probs = torch.distributions.Dirichlet(torch.ones(K, dtype=torch.float64)).sample((batch,))
    locs = 3.0 * (u(batch, K) - 0.5)
    scales = torch.exp(math.log(0.1) + math.log(10.0) * u(batch, K))
    lam = 0.01 + 0.5 * u(())
    q = SparseGMM(gate, probs, locs, scales)
    p = SpikeSlab(lam, slab).expand([batch])
    return q, p


def _quadrature_kl(q, p, n=20_001):
    """The exact KL(q || p) of two spike-and-slab measures, by 1-d quadrature."""
    lo = (q.locs - 12 * q.scales).min().item()
    hi = (q.locs + 12 * q.scales).max().item()
    x = torch.linspace(lo, hi, n, dtype=torch.float64)
    x = x[x != 0].unsqueeze(-1)  # (n, 1) against batch (B,)
    log_mix = q.log_prob(x) - q.gate_probs.log()  # normalized mixture density
    log_slab = p.log_prob(x) - p.inclusion_prob.log()
    mix_kl = torch.trapezoid(log_mix.exp() * (log_mix - log_slab), x, dim=0)
    gamma, lam = q.gate_probs, p.inclusion_prob
    bern = gamma * (gamma / lam).log() + (1 - gamma) * ((1 - gamma) / (1 - lam)).log()
    return bern + gamma * mix_kl


def _monte_carlo_kl(q, p, n=40_000):
    """Monte Carlo KL(q || p) from exact samples of q, with its standard error."""
    x = q.sample((n,))
    d = q.log_prob(x) - p.log_prob(x)
    return d.mean(0), d.std(0) / math.sqrt(n)


@pytest.mark.parametrize("seed", range(4))
@pytest.mark.parametrize("slab", ["normal", "laplace"])
def test_bound_dominates_true_kl(seed, slab):
    q, p = _random_pair(seed, SLABS[slab]())
    bound = kl_divergence(q, p)
    exact = _quadrature_kl(q, p)
    mc, se = _monte_carlo_kl(q, p)
    assert bound.shape == q.batch_shape
    # the Monte Carlo estimate agrees with the quadrature (validates both)...
    assert ((mc - exact).abs() <= 5 * se + 1e-3).all()
    # ...and the bound lies above both
    assert (bound >= exact - 1e-6).all()
    assert (bound >= mc - 5 * se).all()


def test_bound_gap_is_positive_for_separated_components():
    locs = torch.tensor([-2.0, 2.0], dtype=torch.float64)
    scales = torch.tensor([0.2, 0.2], dtype=torch.float64)
    q = SparseGMM(torch.tensor([0.9], dtype=torch.float64),
                  torch.tensor([[0.5, 0.5]], dtype=torch.float64), locs, scales)
    p = SpikeSlab(torch.tensor(0.1, dtype=torch.float64)).expand([1])
    gap = kl_divergence(q, p) - _quadrature_kl(q, p)
    # two disjoint equal-weight components: the Jensen gap is gamma * log 2
    assert torch.allclose(gap, torch.tensor([0.9 * math.log(2)], dtype=torch.float64), atol=1e-6)


def test_bound_is_exact_for_one_component():
    gamma = torch.tensor([0.05, 0.5, 0.95], dtype=torch.float64)
    locs = torch.tensor([[-1.0], [0.2], [2.5]], dtype=torch.float64)
    scales = torch.tensor([[0.3], [1.0], [0.05]], dtype=torch.float64)
    lam = torch.tensor(0.2, dtype=torch.float64)
    slab = dist.Normal(torch.tensor(0.5, dtype=torch.float64), 2.0)
    q = SparseGMM(gamma, torch.ones(3, 1, dtype=torch.float64), locs, scales)
    p = SpikeSlab(lam, slab).expand([3])
    expected = kl_divergence(dist.Bernoulli(gamma), dist.Bernoulli(lam)) + gamma * kl_divergence(
        dist.Normal(locs[:, 0], scales[:, 0]), slab
    )
    assert torch.allclose(kl_divergence(q, p), expected)
    assert torch.allclose(kl_divergence(q, p), _quadrature_kl(q, p), atol=1e-6)


def test_gate_at_zero_and_one_is_finite():
    q = SparseGMM(torch.tensor([0.0, 1.0]), torch.full((2, 2), 0.5), torch.tensor([-1.0, 1.0]),
                  torch.tensor([0.1, 0.1]))
    p = SpikeSlab(torch.tensor(0.01)).expand([2])
    kl_bern, kl_mix = kl_bound_terms(q, p)
    assert torch.isfinite(kl_bern).all() and torch.isfinite(kl_mix).all()
    assert torch.allclose(kl_bern, torch.tensor([-math.log(0.99), -math.log(0.01)]))
    assert kl_mix[0] == 0


def test_masked_and_saturated_gates_have_finite_gradients():
    # gamma = sigmoid(rho / s) * mask: exactly 0 where masked, exactly 1 once saturated
    rho = torch.tensor([0.0, 0.3, -0.05], requires_grad=True)
    mask = torch.tensor([0.0, 1.0, 1.0])
    locs = torch.tensor([-1.0, 1.0], requires_grad=True)
    gate = torch.sigmoid(rho / 0.01) * mask
    assert gate[0] == 0 and gate[1] == 1
    q = SparseGMM(gate, torch.full((3, 2), 0.5), locs, torch.tensor([0.1, 0.1]))
    kl = kl_divergence(q, SpikeSlab(torch.tensor(0.01)).expand([3]))
    assert torch.isfinite(kl).all()
    kl.sum().backward()
    assert torch.isfinite(rho.grad).all() and torch.isfinite(locs.grad).all()
    assert rho.grad[0] == 0


@pytest.mark.parametrize("slab", ["normal", "laplace"])
def test_gradients_match_finite_differences(slab):
    K, B = 3, 4
    torch.manual_seed(0)
    gate_logits = torch.randn(B, dtype=torch.float64, requires_grad=True)
    phi_logits = torch.randn(B, K, dtype=torch.float64, requires_grad=True)
    locs = torch.randn(1, K, dtype=torch.float64, requires_grad=True)
    log_scales = (0.3 * torch.randn(1, K, dtype=torch.float64) - 1.0).requires_grad_()
    p = SpikeSlab(torch.tensor(0.05, dtype=torch.float64), SLABS[slab]()).expand([B])

    def bound(a, b, mu, c):
        q = SparseGMM(torch.sigmoid(a), torch.softmax(b, -1), mu, c.exp())
        return kl_divergence(q, p)

    assert torch.autograd.gradcheck(bound, (gate_logits, phi_logits, locs, log_scales))


def test_component_kl_keeps_the_codebook_shape():
    locs = torch.linspace(-1, 1, 8).reshape(1, 1, 8)
    scales = torch.full((1, 1, 8), 0.1)
    for slab in (dist.Normal(0.0, 3.0), dist.Laplace(0.0, 1.0), dist.StudentT(3.0, 0.0, 1.0)):
        p = SpikeSlab(0.01, slab).expand([64, 32])
        assert component_kl(locs, scales, p._base_slab).shape == torch.Size([1, 1, 8])
        q = SparseGMM(torch.rand(64, 32), torch.full((64, 32, 8), 1 / 8), locs, scales)
        assert kl_divergence(q, p).shape == torch.Size([64, 32])
    # a slab with its own batch shape broadcasts on either side of the components
    per_row = dist.Normal(torch.zeros(4, 1), 3.0)
    assert component_kl(torch.randn(8), torch.ones(8), per_row).shape == torch.Size([4, 1, 8])


def test_generic_path_agrees_with_normal_closed_form():
    locs = torch.randn(3, 1, 5, dtype=torch.float64)
    scales = torch.rand(1, 5, dtype=torch.float64) + 0.1
    slab = dist.Normal(torch.randn(2, dtype=torch.float64), torch.rand(2, dtype=torch.float64) + 1)
    closed = kl_module._component_kl_normal(locs, scales, slab)
    generic = kl_module._component_kl_generic(locs, scales, slab)  # torch's Normal/Normal KL
    assert closed.shape == generic.shape == torch.Size([3, 2, 5])
    assert torch.allclose(closed, generic)


def test_monte_carlo_fallback(monkeypatch):
    slab = SLABS["studentt"]()
    q, p = _random_pair(2, slab)  # K = 4
    # with the default number of draws: finite, differentiable, about right
    locs = q.locs.clone().requires_grad_()
    q_grad = SparseGMM(q.gate_probs, q.component_probs, locs, q.scales)
    value = kl_divergence(q_grad, p)
    assert torch.isfinite(value).all()
    value.sum().backward()
    assert torch.isfinite(locs.grad).all() and (locs.grad != 0).any()
    # per-component estimates match a quadrature of KL(N_k || slab)
    monkeypatch.setattr(kl_module, "MC_KL_SAMPLES", 20_000)
    estimate = component_kl(q.locs, q.scales, slab)
    x = torch.linspace(-15, 15, 60_001, dtype=torch.float64).reshape(-1, 1, 1)
    log_n = dist.Normal(q.locs, q.scales).log_prob(x)
    exact = torch.trapezoid(log_n.exp() * (log_n - slab.log_prob(x)), x.reshape(-1), dim=0)
    assert torch.allclose(estimate, exact, atol=0.03)
    # and the (now accurate) bound lies above the true KL and its Monte Carlo estimate
    bound = kl_divergence(q, p)
    mc, se = _monte_carlo_kl(q, p)
    assert (bound >= _quadrature_kl(q, p) - 0.02).all()
    assert (bound >= mc - 5 * se - 0.02).all()


def test_independent_and_terms():
    q = SparseGMM(torch.rand(4, 3), torch.full((4, 3, 2), 0.5), torch.tensor([[[-1.0, 1.0]]]),
                  torch.tensor([[[0.2, 0.3]]]))
    p = SpikeSlab(torch.tensor(0.1))
    per_weight = kl_divergence(q, p.expand([4, 3]))
    total = kl_divergence(q.to_event(2), p.expand([4, 3]).to_event(2))
    assert total.shape == torch.Size([])
    assert torch.allclose(total, per_weight.sum())
    rows = kl_divergence(q.to_event(1), p.expand([4, 3]).to_event(1))
    assert torch.allclose(rows, per_weight.sum(-1))
    kl_bern, kl_mix = kl_bound_terms(q, p.expand([4, 3]))
    assert kl_bern.shape == kl_mix.shape == torch.Size([4, 3])
    assert torch.allclose(kl_bern + kl_mix, per_weight)
    kl_bern, kl_mix = kl_bound_terms(q.to_event(2), p.expand([4, 3]).to_event(2))
    assert kl_bern.shape == kl_mix.shape == torch.Size([])
    assert torch.allclose(kl_bern + kl_mix, total)
    with pytest.raises(ValueError):
        kl_bound_terms(q.to_event(2), p.expand([4, 3]).to_event(1))


def test_trace_mean_field_elbo_uses_the_bound():
    q = SparseGMM(torch.rand(3, 2), torch.full((3, 2, 2), 0.5), torch.tensor([-1.0, 1.0]),
                  torch.tensor([0.2, 0.3]))
    p = SpikeSlab(torch.tensor(0.1), dist.Laplace(0.0, 1.0)).expand([3, 2])

    def model():
        pyro.sample("w", p.to_event(2))

    def guide():
        pyro.sample("w", q.to_event(2))

    loss = TraceMeanField_ELBO().differentiable_loss(model, guide)
    assert torch.allclose(loss, kl_divergence(q, p).sum())
