"""
The statistician's workflow of issue 12, failure by failure: each test
reproduces what broke or misled (a Bayesian regression, SVI with SQSELBO, then
the usual Pyro and ArviZ calls) and checks what happens now.
"""

import io
import warnings

import numpy as np
import pyro
import pytest
import torch

from sqs_pyro import MeanPlugInWarning, SQSELBO, load_fit, save_fit
from sqs_pyro.analysis import posterior_predictive, psis_diagnostic, to_datatree
from sqs_pyro.analysis.diagnostics import (
    PSENSE_ALPHAS,
    _psis,
    prior_sensitivity,
    psis_from_datatree,
    psis_from_log_ratios,
)
from sqs_pyro.elbo import AUTO_SAMPLE_MAX_WEIGHTS
from sqs_pyro.guides import SQSGuide
from sqs_pyro.handlers import CodebookDraws
from sqs_pyro.models import Categorical, Gaussian, SQSModel

SPEC = {"_default": {"num_components": 3, "inclusion_prob": 0.3, "slab_scale": 1.0}}


def _data(n=160, p=5, seed=0):
    g = torch.Generator().manual_seed(seed)
    x = torch.randn(n, p, generator=g)
    f = torch.tanh(x[:, 0]) - 0.8 * x[:, 1] + 0.5 * x[:, 2] * (x[:, 2] > 0)
    return x, f + 0.3 * torch.randn(n, generator=g)


def _regression(plug_in, steps=400, seed=0, n=160, lr=1e-2):
    """
    A small Bayesian network regression fitted with SQSELBO (the issue's set-up, scaled down), in Pyro's
    module-local mode so that the fit survives the param-store clearing between tests (a torch.optim loop:
    the same updates as pyro.infer.SVI).
    """
    x, y = _data(n + 200, seed=seed)
    xt, yt, xs, ys = x[:n], y[:n], x[n:], y[n:]
    torch.manual_seed(seed)
    net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    opt = torch.optim.Adam(net.parameters(), lr=2e-2)
    for _ in range(200):  # the pretrained network: the anchors
        opt.zero_grad()
        torch.nn.functional.mse_loss(net(xt).squeeze(-1), yt).backward()
        opt.step()
    model = SQSModel(net, SPEC, Gaussian(scale=0.3), num_data=n)
    guide = SQSGuide(model)
    elbo = SQSELBO() if plug_in == "auto" else SQSELBO(plug_in=plug_in)
    opt = torch.optim.Adam(list(guide.parameters()) + [p for _, p in model.point_parameters()], lr=lr)
    history = []
    for _ in range(steps):
        opt.zero_grad()
        loss = elbo.differentiable_loss(model, guide, xt, yt)
        loss.backward()
        opt.step()
        history.append(loss.item())
    return model, guide, elbo, history, (xt, yt), (xs, ys)


@pytest.fixture(scope="module")
def fits():
    threads, local = torch.get_num_threads(), pyro.settings.get("module_local_params")
    torch.set_num_threads(1)
    pyro.settings.set(module_local_params=True)
    try:
        with torch.random.fork_rng():
            return {p: _regression(p) for p in ("auto", "mean")}
    finally:
        torch.set_num_threads(threads)
        pyro.settings.set(module_local_params=local)


# -- 1. the default objective -------------------------------------------------------------------------------------


def test_default_plug_in_samples_small_models_and_keeps_the_mean_for_large_ones():
    model = SQSModel(torch.nn.Linear(4, 2), SPEC, Gaussian(), num_data=8)
    guide = SQSGuide(model)
    assert SQSELBO().resolve_plug_in(model, guide) == "sample"
    assert SQSELBO(auto_max_weights=7).resolve_plug_in(model, guide) == "mean"
    assert SQSELBO(plug_in="mean").resolve_plug_in(model, guide) == "mean"
    assert AUTO_SAMPLE_MAX_WEIGHTS >= 10_000
    elbo = SQSELBO()
    elbo.differentiable_loss(model, guide, torch.randn(8, 4), torch.randn(8, 2))
    assert elbo.last_plug_in == elbo.last_terms["plug_in"] == "sample"
    assert guide.fit_plug_in == "sample"  # recorded on the guide by an evaluation with gradients


def test_mean_plug_in_is_not_an_elbo_and_the_default_is(fits):
    # Issue: with the mean plug-in, coverage 1.000 and a Monte Carlo ELBO of -12,399 against a training
    # objective of -467; with the sampled plug-in, coverage ~0.93 and MC ELBO ~ objective.
    results = {}
    for plug_in, (model, guide, elbo, history, train, test) in fits.items():
        with warnings.catch_warnings():
            warnings.simplefilter("ignore", MeanPlugInWarning)
            pp = posterior_predictive(model, guide, *test, num_samples=300)
            d = psis_diagnostic(model, guide, *train, num_draws=300)
        with torch.no_grad():  # the training objective at the fit, averaged over particles
            objective = -SQSELBO(plug_in=elbo.last_plug_in, num_particles=100).loss(model, guide, *train)
        results[plug_in] = (pp, d, objective)
    pp, d, objective = results["auto"]
    assert fits["auto"][2].last_plug_in == "sample"
    assert 0.7 <= pp.coverage <= 0.99, pp.summary()  # near 0.9 (fixed noise scale, a short fit)
    # the sampled objective is an ELBO: the Monte Carlo ELBO at exact draws (exact KL) agrees with it
    gap = objective - d.elbo
    assert abs(gap) < 0.05 * abs(objective) + 5, (d.elbo, objective)
    # the mean-plug-in surrogate overstates the ELBO of the q it fitted (the issue: -467 against -12,399)
    pp_mean, d_mean, objective_mean = results["mean"]
    gap_mean = objective_mean - d_mean.elbo
    assert gap_mean > max(10.0, 2 * abs(gap)), (gap_mean, gap)


def test_predictive_uncertainty_from_a_mean_fit_warns(fits):
    model, guide, _, _, _, (xs, ys) = fits["mean"]
    assert guide.fit_plug_in == "mean"
    with pytest.warns(MeanPlugInWarning, match="plug_in='sample'"):
        posterior_predictive(model, guide, xs, ys, num_samples=10)
    with pytest.warns(MeanPlugInWarning):
        pyro.infer.Predictive(model, guide=guide, num_samples=3)(xs)
    model, guide, _, _, _, (xs, ys) = fits["auto"]
    with warnings.catch_warnings():
        warnings.simplefilter("error", MeanPlugInWarning)
        posterior_predictive(model, guide, xs, ys, num_samples=10)


# -- 2. pyro.infer.Predictive ---------------------------------------------------------------------------------------


@pytest.mark.parametrize("parallel", [False, True])
def test_predictive_with_the_guide_gives_exact_draws(fits, parallel):
    # Issue: NotImplementedError for site 'obs'; with a dummy y, "t() expects a tensor with <= 2 dimensions";
    # no exact zeros in the guide's draws.
    model, guide, _, _, _, (xs, _) = fits["auto"]
    pred = pyro.infer.Predictive(model, guide=guide, num_samples=400, parallel=parallel)(xs)
    assert pred["obs"].shape == (400, len(xs))
    w = pred["0.weight"].reshape(400, 8, 5)
    gate = guide.params_of("0.weight").gate_probs().detach()
    zeros = (w == 0).double().mean(0)
    assert (zeros > 0).any()
    assert torch.allclose(zeros.mean(), (1 - gate.double()).mean(), atol=0.03)
    # nonzero draws come from the components: N(mu_k, sigma_k^2) around the codebook
    p = guide.params_of("0.weight")
    locs, scales = p.locs.detach().reshape(-1), p.scales.detach().reshape(-1)
    nz = w[w != 0]
    z = ((nz[:, None] - locs) / scales).abs().min(-1).values
    assert (z < 5).float().mean() > 0.99
    pred_y = pyro.infer.Predictive(model, guide=guide, num_samples=5, parallel=parallel)(xs, torch.zeros(len(xs)))
    assert pred_y["2.weight"].shape[0] == 5  # a dummy y no longer breaks the batched weights


def test_codebook_draws_are_exact_codebook_values(fits):
    model, guide, _, _, _, (xs, _) = fits["auto"]
    with CodebookDraws():
        pred = pyro.infer.Predictive(model, guide=guide, num_samples=50, parallel=True)(xs)
    for name in model.sites:
        codebook = guide.params_of(name).locs.detach().reshape(-1)
        values = torch.unique(pred[name])
        assert set(values.tolist()) <= set(codebook.tolist()) | {0.0}
    with CodebookDraws():
        pp = posterior_predictive(model, guide, xs, num_samples=30, return_weights=True)
    assert set(torch.unique(pp.weights["0.weight"]).tolist()) <= set(
        guide.params_of("0.weight").locs.detach().reshape(-1).tolist()) | {0.0}


def test_posterior_predictive_for_classification():
    torch.manual_seed(0)
    x = torch.randn(120, 4)
    y = (x[:, 0] + x[:, 1] > 0).long() + (x[:, 2] > 1).long()
    net = torch.nn.Sequential(torch.nn.Linear(4, 8), torch.nn.ReLU(), torch.nn.Linear(8, 3))
    model = SQSModel(net, SPEC, Categorical(), num_data=120)
    guide = SQSGuide(model)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 2e-2}), SQSELBO())
    for _ in range(100):
        svi.step(x, y)
    pp = posterior_predictive(model, guide, x, y, num_samples=50, prob=0.9)
    assert pp.kind == "classification" and pp.mean.shape == (120, 3)
    np.testing.assert_allclose(pp.mean.sum(-1), 1.0, rtol=1e-6)
    assert pp.sets.shape == (120, 3) and pp.sets.any(-1).all()
    assert 0 <= pp.accuracy <= 1 and pp.coverage >= pp.accuracy
    assert 1 <= pp.set_size <= 3
    assert set(np.unique(pp.draws)) <= {0, 1, 2}


# -- 3. ArviZ ----------------------------------------------------------------------------------------------------


@pytest.mark.filterwarnings("ignore::RuntimeWarning")
def test_arviz_functions_work_on_the_datatree(fits, tmp_path):
    # Issue: summary -> "n_dims must be one or higher"; rhat -> "dims must be of length 2"; hdi, ess ->
    # "tuple.index(x): x not in tuple"; loo -> "'DataArray' object has no attribute 'chain'"; psense_summary failed.
    import arviz_stats as azs

    model, guide, _, _, (xt, yt), _ = fits["auto"]
    dt = to_datatree(model, guide, num_draws=200, weights_per_layer=4, data=(xt, yt))
    assert dict(dt["posterior"].sizes)["chain"] == 1 and dict(dt["posterior"].sizes)["draw"] == 200
    summary = azs.summary(dt, var_names=["sparsity", "theta"])
    assert "sparsity[0.weight]" in summary.index
    assert np.isfinite(azs.ess(dt, var_names=["sparsity"])["sparsity"].values).all()
    assert np.isnan(azs.rhat(dt, var_names=["sparsity"])["sparsity"].values).all()  # R-hat needs two chains
    four = to_datatree(model, guide, num_draws=200, weights_per_layer=4, num_chains=4)
    assert dict(four["posterior"].sizes)["chain"] == 4
    rhat = azs.rhat(four, var_names=["sparsity", "theta"])
    assert np.all(np.abs(rhat["sparsity"].values - 1) < 0.1)  # independent draws
    hdi = azs.hdi(dt, var_names=["sparsity"])["sparsity"]
    assert hdi.shape[-1] == 2
    loo = azs.loo(dt)
    assert np.isfinite(loo.elpd)
    with np.errstate(all="ignore"):
        sens = azs.psense_summary(dt)
    assert "sparsity[0.weight]" in sens.index
    azs.psense(dt, group="prior")


def test_arviz_plots_import_and_draw(fits, tmp_path):
    # Issue: `import arviz_plots` failed beside matplotlib 3.11 (matplotlib.style.core is gone).
    import arviz_plots as azp

    model, guide, _, _, (xt, yt), _ = fits["auto"]
    dt = to_datatree(model, guide, num_draws=60, weights_per_layer=3, data=(xt, yt))
    for name, plot in (("dist", lambda: azp.plot_dist(dt, var_names=["sparsity"], backend="matplotlib")),
                       ("forest", lambda: azp.plot_forest(dt, var_names=["theta"], backend="matplotlib")),
                       ("ppc", lambda: azp.plot_ppc_dist(dt, backend="matplotlib"))):
        pc = plot()
        pc.savefig(tmp_path / f"{name}.png")
        assert (tmp_path / f"{name}.png").stat().st_size > 1000


# -- 4. diagnostics -------------------------------------------------------------------------------------------------


@pytest.mark.parametrize("scale", [0.3, 1.0, 3.0, 30.0])
def test_khat_agrees_with_arviz_stats_on_the_same_log_ratios(scale):
    # Issue: the library's k-hat disagreed with arviz-stats (175 vs 0.048; 4.05 vs 16.7). arviz-stats' PSIS of
    # importance ratios is psislw (argument: the negated log ratio, LOO's convention).
    from arviz_stats.base import array_stats

    rng = np.random.default_rng(1)
    log_r = scale * rng.standard_normal(300) - 1e4  # far from 0, as a log joint is
    lw, khat = _psis(log_r)
    with np.errstate(all="ignore"):
        ref_lw, ref_khat = array_stats.psislw(-log_r, r_eff=1.0)
    assert khat == pytest.approx(float(ref_khat), rel=1e-10)
    np.testing.assert_allclose(lw, ref_lw, rtol=1e-10)
    d = psis_from_log_ratios(log_r)
    assert d.khat == pytest.approx(float(ref_khat), rel=1e-10)
    # and the direction is right: wider log ratios, heavier weights
    assert (d.label == "good") == (scale < 1)


def test_degenerate_weights_are_flagged_with_a_next_step():
    # Issue: k-hat 175.4 and ESS 2-3 printed like ordinary results, with no next step.
    rng = np.random.default_rng(0)
    bad = psis_from_log_ratios(40 * rng.standard_normal(200), fit_plug_in="mean")
    assert not bad.reliable and bad.label == "unreliable" and bad.ess < 10
    text = bad.summary()
    assert text.startswith("DEGENERATE") and "Next step" in text and "plug_in='sample'" in text
    assert "175" not in text and "> 1.5" in text
    d = bad.to_dict()
    assert d["reliable"] is False and d["advice"] and d["log_evidence_is"] is None
    good = psis_from_log_ratios(0.2 * rng.standard_normal(200))
    assert good.reliable and good.advice is None and "DEGENERATE" not in good.summary()


def test_psense_is_withheld_when_the_weights_are_degenerate(fits):
    # Issue: psense 1.3-2.0 at every alpha, from degenerate weights.
    model, guide, _, _, (xt, yt), _ = fits["mean"]
    with warnings.catch_warnings():
        warnings.simplefilter("ignore", MeanPlugInWarning)
        tree = to_datatree(model, guide, num_draws=200, weights_per_layer=8, data=(xt, yt))
    # a log prior that varies by hundreds of nats across draws: power scaling by 0.99 is already degenerate
    tree["sample_stats"]["log_prior"] = tree["sample_stats"]["log_prior"] * 0 + np.random.default_rng(0).normal(
        0, 3000, tree["sample_stats"]["log_prior"].shape)
    s = prior_sensitivity(model, guide, tree=tree, alphas=(0.8, 1.25))
    assert "withheld" in s.psense and "degenerate" in s.psense["withheld"]
    assert s.psense_khat["prior"] > 0.7
    assert not s.reliable[0.8] and "withheld" in s.summary()
    assert s.to_dict()["psense"]["withheld"]
    # usable weights give numbers
    small = tree.copy()
    small["sample_stats"]["log_prior"] = small["sample_stats"]["log_prior"] * 0 + np.random.default_rng(1).normal(
        0, 1.0, tree["sample_stats"]["log_prior"].shape)
    s = prior_sensitivity(tree=small, alphas=(0.8, 1.25))
    assert set(s.psense) == {"sparsity", "bits", "weight_rms"}
    assert PSENSE_ALPHAS == (0.99, 1.01)


def test_psis_of_the_tree_matches_psis_of_its_log_ratios(fits):
    model, guide, _, _, (xt, yt), _ = fits["auto"]
    tree = to_datatree(model, guide, num_draws=50, weights_per_layer=1, data=(xt, yt), predictive=False)
    d = psis_from_datatree(tree)
    ss = tree["sample_stats"]
    ratios = (ss["log_likelihood"] + ss["log_prior"] - ss["log_q"]).values.reshape(-1)
    np.testing.assert_allclose(d.log_ratios, ratios)


# -- 5. saving, plots, labels ------------------------------------------------------------------------------------


def test_torch_save_of_the_objects_fails_and_save_fit_round_trips(fits, tmp_path):
    # Issue: torch.save(model) / torch.save(guide): "cannot pickle 'weakref.ReferenceType' object".
    model, guide, _, _, _, (xs, _) = fits["auto"]
    with pytest.raises(TypeError, match="weakref"):
        torch.save(guide, io.BytesIO())
    path = tmp_path / "fit.pt"
    save_fit(path, model, guide)
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(5, 8), torch.nn.ReLU(), torch.nn.Linear(8, 1))
    model2 = SQSModel(net, SPEC, Gaussian(scale=0.3), num_data=model.num_data)
    guide2 = SQSGuide(model2)
    load_fit(path, model2, guide2)
    assert guide2.fit_plug_in == "sample"
    for name in model.sites:
        for attr in ("locs", "scales", "logits", "rho", "mask"):
            assert torch.equal(getattr(guide2.params_of(name), attr), getattr(guide.params_of(name), attr))
    a = posterior_predictive(model, guide, xs, num_samples=20, seed=3)
    b = posterior_predictive(model2, guide2, xs, num_samples=20, seed=3)
    np.testing.assert_array_equal(a.draws, b.draws)


def test_learned_noise_scale_is_saved(tmp_path):
    net = torch.nn.Linear(3, 1)
    model = SQSModel(net, SPEC, Gaussian(scale=0.5, learn_scale=True), num_data=10)
    guide = SQSGuide(model)
    x, y = torch.randn(10, 3), torch.randn(10)
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 0.1}), SQSELBO())
    for _ in range(5):
        svi.step(x, y)
    scale = pyro.param("obs_scale").item()
    save_fit(tmp_path / "fit.pt", model, guide)
    pyro.clear_param_store()
    model2 = SQSModel(torch.nn.Linear(3, 1), SPEC, Gaussian(scale=0.5, learn_scale=True), num_data=10)
    load_fit(tmp_path / "fit.pt", model2, SQSGuide(model2))
    assert pyro.param("obs_scale").item() == pytest.approx(scale)


def test_elbo_trace_of_a_plain_svi_history_has_no_empty_panels(fits):
    # Issue: an ELBO trace from a plain SVI history drew two empty panels.
    from sqs_pyro.analysis.plots import plot_elbo_trace

    history = fits["auto"][3]
    fig = plot_elbo_trace(history, plug_in="sample")
    assert len(fig.axes) == 1
    assert all(len(line.get_xdata()) == len(history) for line in fig.axes[0].get_lines())
    rows = [{"step": i, "loss": 10.0 - i, "data": -5.0, "kl_total": 5.0 - i, "kl": {"w": 5.0 - i}} for i in range(4)]
    assert len(plot_elbo_trace(rows).axes) == 2  # no sparsity in the log: no sparsity panel


def test_data_term_label_names_the_estimator():
    # Issue: the data-term label "−E log p(D|θ)" is wrong under the mean plug-in.
    from sqs_pyro.analysis.plots import plot_elbo_trace

    rows = [{"step": i, "loss": 10.0 - i, "data": -5.0, "kl_total": 5.0 - i} for i in range(4)]
    labels = {p: [ln.get_label() for ln in plot_elbo_trace(rows, plug_in=p).axes[0].get_lines()]
              for p in ("mean", "sample", None)}
    assert "posterior mean" in labels["mean"][0] and "not −E_q log p(D|θ)" in labels["mean"][0]
    assert "θ ~ q" in labels["sample"][0]
    assert "not recorded" in labels[None][0]
    assert "surrogate" in labels["mean"][-1] and "ELBO" in labels["sample"][-1]
    rows[-1]["plug_in"] = "mean"  # a log row that says which wins over the argument
    assert "posterior mean" in plot_elbo_trace(rows, plug_in="sample").axes[0].get_lines()[0].get_label()


def test_traced_guide_draws_are_exact_and_the_elbo_still_relaxes():
    # Issue: "the guide's traced draws contain no exact zeros (the relaxed sampler)".
    model = SQSModel(torch.nn.Linear(30, 20), {"_default": {"num_components": 2, "init_rho": 0.0}}, Gaussian(),
                     num_data=8)
    guide = SQSGuide(model)  # gates at 0.5: about half of the draws are exact zeros
    x, y = torch.randn(8, 30), torch.randn(8, 20)
    trace = pyro.poutine.trace(guide).get_trace(x, y)
    value = trace.nodes["weight"]["value"]
    assert 0.35 < float((value == 0).float().mean()) < 0.65
    # under the sampled ELBO the same site draws the differentiable relaxation: the data term alone
    # (kl_weight=0) has a gradient in the gates
    elbo = SQSELBO(plug_in="sample", kl_weight=0.0)
    loss = elbo.differentiable_loss(model, guide, x, y)
    loss.backward()
    assert guide.params_of("weight").rho.grad is not None
    assert guide.params_of("weight").rho.grad.abs().sum() > 0


def test_vectorized_particles_evaluate_batched_networks():
    torch.manual_seed(0)
    net = torch.nn.Sequential(torch.nn.Linear(4, 6), torch.nn.ReLU(), torch.nn.Linear(6, 1))
    model = SQSModel(net, SPEC, Gaussian(scale=0.5), num_data=16)
    guide = SQSGuide(model)
    x, y = torch.randn(16, 4), torch.randn(16)
    vec = SQSELBO(plug_in="sample", num_particles=400, vectorize_particles=True, max_plate_nesting=1)
    seq = SQSELBO(plug_in="sample", num_particles=400)
    with torch.no_grad():
        a, b = vec.loss(model, guide, x, y), seq.loss(model, guide, x, y)
    assert np.isfinite(a) and a == pytest.approx(b, rel=0.1)


@pytest.mark.parametrize("module", ["sqs_pyro.elbo", "sqs_pyro.handlers", "sqs_pyro.state",
                                    "sqs_pyro.analysis.predictive", "sqs_pyro.analysis.to_arviz",
                                    "sqs_pyro.analysis.diagnostics"])
def test_docstring_examples_run(module, tmp_path, monkeypatch):
    import doctest
    import importlib

    monkeypatch.chdir(tmp_path)
    result = doctest.testmod(importlib.import_module(module))
    assert result.failed == 0 and result.attempted > 0
