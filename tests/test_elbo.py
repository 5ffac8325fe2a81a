import pyro
import pyro.optim
import pytest
import torch

from sqs_pyro import PriorSpec, SQSELBO
from sqs_pyro.guides import SQSGuide
from sqs_pyro.models import Categorical, Gaussian, SQSModel


def _tiny(dtype=torch.float64, **settings):
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(3, 4), torch.nn.Tanh(), torch.nn.Linear(4, 1)).to(dtype)
    spec = PriorSpec({"_default": {"num_components": 3, "gate_temperature": 0.5, "tau": 0.5, **settings}})
    model = SQSModel(net, spec, Gaussian(), num_data=20)
    guide = SQSGuide(model)
    x = torch.randn(6, 3, dtype=dtype)
    y = torch.randn(6, dtype=dtype)
    return model, guide, x, y


def test_loss_is_data_plus_kl():
    model, guide, x, y = _tiny()
    elbo = SQSELBO(plug_in="mean")
    loss = elbo.differentiable_loss(model, guide, x, y)
    terms = elbo.last_terms
    assert set(terms["kl"]) == {"0.weight", "2.weight"}
    assert all(v > 0 for v in terms["kl"].values())
    assert loss.item() == pytest.approx(-(terms["data"] - terms["kl_total"]), rel=1e-10)
    # the data term is the n/b-scaled Gaussian log-likelihood at the posterior-mean weights
    weights = {n: guide.posterior(n).mean for n in model.sites}
    pred = model.run_net(weights, x).squeeze(-1)
    expected = torch.distributions.Normal(pred, 1.0).log_prob(y).sum() * 20 / 6
    assert terms["data"] == pytest.approx(expected.item(), rel=1e-10)


def test_kl_weight_scales_kl_only():
    model, guide, x, y = _tiny()
    full = SQSELBO(plug_in="mean").differentiable_loss(model, guide, x, y)
    elbo = SQSELBO(plug_in="mean", kl_weight=0.25)
    loss = elbo.differentiable_loss(model, guide, x, y)
    t = elbo.last_terms
    assert loss.item() == pytest.approx(-(t["data"] - 0.25 * t["kl_total"]), rel=1e-10)
    assert loss.item() < full.item()


def test_elbo_gradient_matches_finite_differences():
    model, guide, x, y = _tiny()
    elbo = SQSELBO(plug_in="mean")
    params = [p for p in guide.parameters()] + [p for _, p in model.point_parameters()]
    loss = elbo.differentiable_loss(model, guide, x, y)
    grads = torch.autograd.grad(loss, params)
    eps = 1e-6
    g = torch.Generator().manual_seed(1)
    for p, grad in zip(params, grads):
        flat = p.data.view(-1)
        for i in torch.randperm(flat.numel(), generator=g)[:3].tolist():
            old = flat[i].item()
            with torch.no_grad():
                flat[i] = old + eps
                up = elbo.differentiable_loss(model, guide, x, y).item()
                flat[i] = old - eps
                down = elbo.differentiable_loss(model, guide, x, y).item()
                flat[i] = old
            fd = (up - down) / (2 * eps)
            assert grad.view(-1)[i].item() == pytest.approx(fd, rel=1e-4, abs=1e-6)


def test_sample_plug_in_runs_and_differs():
    model, guide, x, y = _tiny()
    mean_loss = SQSELBO(plug_in="mean").differentiable_loss(model, guide, x, y)
    sample_loss = SQSELBO(plug_in="sample", num_particles=3).differentiable_loss(model, guide, x, y)
    assert torch.isfinite(sample_loss)
    assert sample_loss.item() != pytest.approx(mean_loss.item())


def test_bad_arguments():
    with pytest.raises(ValueError, match="plug_in"):
        SQSELBO(plug_in="median")
    with pytest.raises(ValueError, match="kl_weight"):
        SQSELBO(kl_weight=-1)


def _classifier():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    model = SQSModel(net, {"_default": {"num_components": 4}}, Categorical(), num_data=64)
    x, y = torch.randn(64, 5), torch.randint(0, 3, (64,))
    return model, x, y


def test_works_with_pyro_svi():
    model, x, y = _classifier()
    guide = SQSGuide(model)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-2}), SQSELBO())
    losses = [svi.step(x[i : i + 16], y[i : i + 16], subsample=torch.arange(i, i + 16)) for i in range(0, 64, 16)]
    assert all(torch.isfinite(torch.tensor(losses)))
    store = pyro.get_param_store()
    assert "net.0.bias" in store and "net.0.weight" not in store  # anchors frozen, biases point estimates


def test_module_local_params_train_through_the_elbo_module():
    # Pyro's module-local mode: parameters live in the modules and the loop is
    # ``torch.optim`` over ``elbo(model, guide).parameters()`` (pyro.infer.SVI
    # only trains PyroParams there; see the SQSModel docstring).
    pyro.settings.set(module_local_params=True)  # the conftest fixture restores the setting
    model, x, y = _classifier()
    guide = SQSGuide(model)
    guide(x, y)  # create the guide's parameters
    loss_fn = SQSELBO()(model, guide)
    bias = model.net[0].bias.detach().clone()
    optim = torch.optim.Adam([p for p in loss_fn.parameters() if p.requires_grad], lr=1e-2)
    losses = []
    for _ in range(20):
        optim.zero_grad()
        loss = loss_fn(x, y)
        loss.backward()
        optim.step()
        losses.append(loss.item())
    assert losses[-1] < losses[0]
    assert not torch.equal(model.net[0].bias, bias)
    assert len(pyro.get_param_store()) == 0


def test_works_with_plain_torch_optim():
    model, x, y = _classifier()
    guide = SQSGuide(model)
    elbo = SQSELBO(plug_in="mean")
    params = list(guide.parameters()) + [p for _, p in model.point_parameters()]
    optim = torch.optim.Adam(params, lr=1e-2)
    first = None
    for _ in range(30):
        optim.zero_grad()
        loss = elbo.differentiable_loss(model, guide, x, y)
        loss.backward()
        optim.step()
        first = loss.item() if first is None else first
    assert loss.item() < first


@pytest.mark.parametrize("recipe", ["sqs", "paper"])
def test_one_pass_kl_equals_the_per_weight_kl(monkeypatch, recipe):
    # the ELBO's KL of a whole site in one pass (anchored.summed_kl) against the per-weight registered KL of
    # the previous path: the loss and the gradient of every parameter, under the recipe's gates and anchors
    from sqs_pyro import elbo as elbo_module
    from sqs_pyro.run.config import CompressConfig
    from sqs_pyro.run.schedules import global_topk_masks

    cfg = CompressConfig(recipe=recipe).resolved()
    model, guide, x, y = _tiny(tau=1e-3)
    guide.configure(gates=cfg.gates, straight_through=cfg.anchors == "straight-through")
    for site in model.sites.values():
        site.anchor.requires_grad_(cfg.anchors == "straight-through")
    guide.set_masks(global_topk_masks({n: s.anchor.detach().abs() for n, s in model.sites.items()}, 0.3))
    params = [p for p in list(guide.parameters()) + list(model.net.parameters()) if p.requires_grad]
    results = []
    for fast in (False, True):
        if not fast:
            monkeypatch.setattr(elbo_module, "summed_kl", lambda q, p: None)
        else:
            monkeypatch.undo()
        elbo = SQSELBO(plug_in="mean")
        loss = elbo.differentiable_loss(model, guide, x, y)
        grads = torch.autograd.grad(loss, params, allow_unused=True)  # (hard gates: rho is not used)
        results.append((loss,) + tuple(torch.zeros_like(p) if g is None else g for p, g in zip(params, grads)))
    for before, after in zip(*results):
        torch.testing.assert_close(after, before, rtol=1e-10, atol=1e-10)
