import doctest

import pyro.distributions as dist
import pytest
import torch
from torch.distributions import kl_divergence

from sqs_pyro import PriorSpec, SQSELBO
from sqs_pyro.distributions import SparseGMM, SpikeSlab, anchored
from sqs_pyro.distributions.anchored import AnchoredSparseGMM
from sqs_pyro.guides import SQSGuide
from sqs_pyro.models import Categorical, SQSModel
from sqs_pyro.soft_quantize import component_probs


def test_docstring_example():
    assert doctest.testmod(anchored).failed == 0


def _params(table=False, shape=(5, 4), K=3, tau=0.05, dtype=torch.float64, seed=0):
    """Gate, anchors and a codebook (one per layer, or a (G, K) table and a group index)."""
    g = torch.Generator().manual_seed(seed)
    gate = 0.05 + 0.9 * torch.rand(shape, generator=g, dtype=dtype)
    anchor = torch.randn(shape, generator=g, dtype=dtype)
    G = 2 if table else 1
    locs = torch.linspace(-1.5, 1.5, K, dtype=dtype) + 0.1 * torch.randn(G, K, generator=g, dtype=dtype)
    scales = 0.3 + 0.2 * torch.rand(G, K, generator=g, dtype=dtype)
    logits = torch.randn(G, K, generator=g, dtype=dtype)
    if table:
        index = torch.randint(0, G, shape, generator=g)
        return dict(gate=gate, anchor=anchor, codebook=(locs, scales, logits), tau=tau, index=index)
    codebook = tuple(t.reshape((1,) * len(shape) + (K,)) for t in (locs, scales, logits))
    return dict(gate=gate, anchor=anchor, codebook=codebook, tau=tau, index=None)


def _both(p):
    """The anchored posterior and the explicit SparseGMM with the same parameters."""
    locs, scales, logits = p["codebook"]
    index = p["index"]
    q = AnchoredSparseGMM(p["gate"], p["anchor"], locs, scales, logits, p["tau"], group_index=index)
    if index is not None:
        locs, scales, logits = locs[index], scales[index], logits[index]
    phi = component_probs(p["anchor"], locs, scales, logits, p["tau"])
    return q, SparseGMM(p["gate"], phi, locs, scales)


@pytest.mark.parametrize("table", [False, True])
def test_matches_explicit_sparse_gmm(table):
    q, explicit = _both(_params(table))
    assert q.batch_shape == explicit.batch_shape == torch.Size([5, 4])
    assert q.num_components == 3
    torch.testing.assert_close(q.mean, explicit.mean)
    torch.testing.assert_close(q.variance, explicit.variance)
    assert "component_probs" not in vars(q)  # neither mean nor variance built phi
    if table:
        assert "locs" not in vars(q)  # nor the per-weight codebook
    x = explicit.sample((3,))
    torch.testing.assert_close(q.log_prob(x), explicit.log_prob(x))
    torch.testing.assert_close(q.component_probs, explicit.component_probs)
    torch.testing.assert_close(q.locs.expand(5, 4, 3), explicit.locs.expand(5, 4, 3))
    assert q.sample((2,)).shape == q.rsample((2,)).shape == torch.Size([2, 5, 4])


def test_expand():
    q, explicit = _both(_params(table=True))
    e = q.expand([2, 5, 4])
    assert type(e) is AnchoredSparseGMM and e.batch_shape == torch.Size([2, 5, 4])
    assert e.mean.shape == e.component_probs.shape[:-1] == torch.Size([2, 5, 4])
    torch.testing.assert_close(e.mean, explicit.expand([2, 5, 4]).mean)
    x = explicit.sample((2,))
    torch.testing.assert_close(e.log_prob(x), q.log_prob(x))


def test_validation():
    p = _params(table=True)
    locs, scales, logits = p["codebook"]
    args = (p["gate"], p["anchor"])
    with pytest.raises(ValueError):
        AnchoredSparseGMM(*args, locs, -scales, logits, 0.1, group_index=p["index"])
    with pytest.raises(ValueError):
        AnchoredSparseGMM(p["gate"] + 1, p["anchor"], locs, scales, logits, 0.1, group_index=p["index"])
    with pytest.raises(ValueError):
        AnchoredSparseGMM(*args, locs, scales, logits, 0.0, group_index=p["index"])
    with pytest.raises(ValueError, match="tables"):
        AnchoredSparseGMM(*args, locs[None], scales, logits, 0.1, group_index=p["index"])
    AnchoredSparseGMM(*args, locs, -scales, logits, 0.1, group_index=p["index"], validate_args=False)


PRIORS = {
    "spike-normal": lambda: SpikeSlab(0.05, dist.Normal(torch.tensor(0.2, dtype=torch.float64), 2.0)),
    "spike-laplace": lambda: SpikeSlab(0.05, dist.Laplace(torch.tensor(0.0, dtype=torch.float64), 1.5)),
    "normal": lambda: dist.Normal(torch.tensor(0.0, dtype=torch.float64), 3.0),
}


@pytest.mark.parametrize("table", [False, True])
@pytest.mark.parametrize("prior", sorted(PRIORS))
def test_kl_and_gradients_match_explicit(table, prior):
    p = _params(table)
    leaves = [p["gate"]] + list(p["codebook"])
    leaves = [t.clone().requires_grad_() for t in leaves]
    p["gate"], p["codebook"] = leaves[0], tuple(leaves[1:])
    prior = PRIORS[prior]().expand([5, 4])
    q, explicit = _both(p)
    kl, kl_explicit = kl_divergence(q, prior), kl_divergence(explicit, prior)
    torch.testing.assert_close(kl, kl_explicit)
    weights = torch.rand(5, 4, dtype=torch.float64)
    for a, b in zip(torch.autograd.grad((kl * weights).sum(), leaves), torch.autograd.grad((kl_explicit * weights).sum(), leaves)):
        torch.testing.assert_close(a, b)
    # through Independent, as the ELBO sees it
    torch.testing.assert_close(kl_divergence(q.to_event(2), prior.to_event(2)), kl_explicit.sum())


def test_masked_and_saturated_gates():
    p = _params()
    p["gate"] = torch.tensor([0.0, 1.0, 0.5, 1e-30], dtype=torch.float64).repeat(5, 1).requires_grad_()
    q, explicit = _both(p)
    prior = SpikeSlab(0.01, dist.Normal(torch.tensor(0.0, dtype=torch.float64), 3.0)).expand([5, 4])
    kl, kl_explicit = kl_divergence(q, prior), kl_divergence(explicit, prior)
    torch.testing.assert_close(kl, kl_explicit)
    (g,) = torch.autograd.grad(kl.sum(), p["gate"])
    (g_explicit,) = torch.autograd.grad(kl_explicit.sum(), p["gate"])
    assert torch.isfinite(g).all()
    torch.testing.assert_close(g, g_explicit)


# ------------------------------------------------------------------ through the ELBO


def _model_and_guide(settings, seed=0):
    torch.manual_seed(seed)
    net = torch.nn.Sequential(
        torch.nn.Linear(6, 16), torch.nn.Tanh(), torch.nn.Linear(16, 3)
    ).double()
    spec = PriorSpec({"_default": {"num_components": 4, **settings}})
    model = SQSModel(net, spec, Categorical(), num_data=50)
    guide = SQSGuide(model)
    with torch.no_grad():  # move away from the initialization, prune a few weights
        for name, param in guide.named_parameters():
            param.add_(0.05 * torch.randn_like(param))
        for name in model.sites:
            p = guide.params_of(name)
            p.mask.copy_(torch.rand(p.mask.shape) > 0.2)
    x = torch.randn(10, 6, dtype=torch.float64)
    y = torch.randint(0, 3, (10,))
    return model, guide, x, y


def _loss_and_grads(model, guide, x, y, fused):
    guide.fused = fused
    elbo = SQSELBO(plug_in="mean")
    params = [p for _, p in guide.named_parameters()] + [p for _, p in model.point_parameters()]
    loss = elbo.differentiable_loss(model, guide, x, y)
    return loss, torch.autograd.grad(loss, params), elbo.last_terms


SETTINGS = {
    "layer": {},
    "layer-tau-0.3": {"tau": 0.3},
    "equal-windows": {"window": "equal", "blocks": 3},
    "outlier-windows": {"window": "outlier", "blocks": 4, "outlier_factor": 0.5},
    "gaussian-prior": {"spike": False},
    "laplace-slab": {"slab": "laplace"},
}


@pytest.mark.parametrize("settings", sorted(SETTINGS))
def test_elbo_loss_and_gradients_equal_explicit(settings):
    model, guide, x, y = _model_and_guide(SETTINGS[settings])
    name = next(iter(model.sites))
    assert type(guide.posterior(name).base_dist) is AnchoredSparseGMM
    assert type(guide.posterior(name, fused=False).base_dist) is SparseGMM
    loss, grads, terms = _loss_and_grads(model, guide, x, y, fused=True)
    loss_explicit, grads_explicit, terms_explicit = _loss_and_grads(model, guide, x, y, fused=False)
    torch.testing.assert_close(loss, loss_explicit)
    assert terms["kl"] == pytest.approx(terms_explicit["kl"], rel=1e-10)
    assert len(grads) > 2 * len(model.sites)
    for a, b in zip(grads, grads_explicit):
        torch.testing.assert_close(a, b)


def test_soft_weights_are_the_ones_between_two_components():
    # two equal components at -1 and 1: only the weight at 0 has no one-hot phi
    anchor = torch.tensor([-1.0, -0.5, 0.0, 0.5, 1.0])
    locs, scales, logits = torch.tensor([[-1.0, 1.0]]), torch.tensor([[0.3, 0.3]]), torch.zeros(1, 2)
    q = AnchoredSparseGMM(torch.ones(5), anchor, locs, scales, logits, 1e-3)
    assert q.soft_weights().tolist() == [2]
    hot = AnchoredSparseGMM(torch.ones(5), anchor, locs, scales, logits, 10.0)  # phi far from one-hot
    assert hot.soft_weights().tolist() == [0, 1, 2, 3, 4]


@pytest.mark.parametrize("table", [False, True])
@pytest.mark.parametrize("hard", [False, True])
@pytest.mark.parametrize("prior", ["spike-slab", "normal"])
def test_summed_kl_equals_the_registered_kl_summed(table, hard, prior):
    # anchored.summed_kl (one pass per site; a count for the Bernoulli KL of hard gates) against the
    # per-weight registered KL it replaces in the ELBO, values and gradients
    p = _params(table, shape=(40, 30), K=8, tau=1e-3, seed=4)
    gate = (p["gate"] > 0.5).double() if hard else p["gate"]
    locs, scales, logits = (t.clone().requires_grad_() for t in p["codebook"])
    anchor = p["anchor"].clone().requires_grad_()
    prior_fn = (SpikeSlab(torch.tensor(0.2, dtype=torch.float64), dist.Normal(torch.tensor(0.0, dtype=torch.float64), 2.0))
                if prior == "spike-slab" else dist.Normal(torch.tensor(0.0, dtype=torch.float64), 2.0))
    prior_fn = prior_fn.expand(anchor.shape).to_event(2)
    results = []
    for fast in (False, True):
        q = AnchoredSparseGMM(gate, anchor, locs, scales, logits, p["tau"], group_index=p["index"],
                              hard_gates=hard).to_event(2)
        kl = anchored.summed_kl(q, prior_fn) if fast else kl_divergence(q, prior_fn)
        results.append((kl,) + torch.autograd.grad(kl, (anchor, locs, scales, logits)))
    for before, after in zip(*results):
        torch.testing.assert_close(after, before, rtol=1e-10, atol=1e-10)


def test_summed_kl_declines_other_pairs():
    p = _params(False)
    q = AnchoredSparseGMM(p["gate"], p["anchor"], *p["codebook"], p["tau"])
    assert anchored.summed_kl(q, dist.Laplace(0.0, 1.0).expand(q.batch_shape).to_event(2)) is None
    assert anchored.summed_kl(q.to_event(2), SpikeSlab(0.1).expand(q.batch_shape).to_event(1)) is None
