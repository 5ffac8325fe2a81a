import math

import numpy as np
import pytest
import torch

from sqs_pyro.analysis.posterior_draws import iter_draws, layer_states, log_densities
from sqs_pyro.analysis.to_arviz import to_datatree


def test_groups_dims_and_coords(tiny):
    model, guide, x, y = tiny
    dt = to_datatree(model, guide, num_draws=30, weights_per_layer=5, data=(x[:10], y[:10]), seed=1)
    assert {"posterior", "log_prior", "log_likelihood", "observed_data", "sample_stats", "variational",
            "posterior_predictive"} <= set(dt.children)
    post = dt["posterior"]
    layers = list(model.sites)
    assert dict(post.sizes) == {"chain": 1, "draw": 30, "weight": 10, "layer": 2}
    assert [str(v) for v in post["layer"].values] == layers
    assert post["theta"].dims == ("chain", "draw", "weight")
    assert post["sparsity"].dims == ("chain", "draw", "layer")
    assert dt["sample_stats"]["component_usage"].dims == ("chain", "draw", "layer", "component")
    weight_layer = dt["variational"]["weight_layer"]
    assert weight_layer.dims == ("weight",)
    assert list(weight_layer.values) == [layers[0]] * 5 + [layers[1]] * 5
    assert all(str(w).startswith(str(layer) + "[") for w, layer in zip(post["weight"].values, weight_layer.values))
    assert dt["log_prior"]["theta"].dims == ("chain", "draw", "weight")
    assert dt["log_likelihood"]["obs"].dims == ("chain", "draw", "obs_id")
    assert dt["log_likelihood"]["obs"].shape == (1, 30, 10)
    assert dt["posterior_predictive"]["obs"].dims == ("chain", "draw", "obs_id")
    assert set(np.unique(dt["posterior_predictive"]["obs"].values)) <= {0, 1, 2}
    assert dt["observed_data"]["obs"].dims == ("obs_id",)
    assert set(dt["sample_stats"].data_vars) == {"log_prior", "log_q", "log_likelihood", "component_usage"}
    var = dt["variational"]
    assert "chain" not in var.dims and "draw" not in var.dims
    assert var["codebook_mean"].dims == ("layer", "window", "component")
    assert var["gate_quantile"].dims == ("layer", "quantile")
    assert var["num_components"].values.tolist() == [4, 4]
    for name in ("theta", "sparsity", "bits", "entropy_bits"):
        assert np.all(np.isfinite(post[name].values))
    assert np.all(np.isfinite(dt["log_likelihood"]["obs"].values))
    assert np.all(dt["log_likelihood"]["obs"].values <= 0)


def test_without_data_has_no_likelihood(tiny):
    model, guide, _, _ = tiny
    dt = to_datatree(model, guide, num_draws=5, weights_per_layer=2)
    assert "log_likelihood" not in dt.children and "observed_data" not in dt.children
    assert "log_likelihood" not in dt["sample_stats"].data_vars


def test_draws_are_exact_and_reproducible(tiny):
    model, guide, _, _ = tiny
    dt = to_datatree(model, guide, num_draws=300, weights_per_layer=3, seed=3)
    var, post = dt["variational"], dt["posterior"]
    for i, name in enumerate(model.sites):
        n = var["num_weights"].values[i]
        expected = var["expected_sparsity"].values[i]  # 1 - mean gamma, exact
        sd = math.sqrt(expected * (1 - expected) / (n * 300)) + 1e-9
        assert abs(post["sparsity"].values[0][:, i].mean() - expected) < 5 * sd + 1e-6
        usage = dt["sample_stats"]["component_usage"].values[0][:, i]
        ok = ~np.isnan(usage).any(-1)
        np.testing.assert_allclose(usage[ok].sum(-1), 1.0)
        np.testing.assert_allclose(post["bits"].values[0][:, i], 2.0 * (1 - post["sparsity"].values[0][:, i]))
    again = to_datatree(model, guide, num_draws=300, weights_per_layer=3, seed=3)
    np.testing.assert_array_equal(again["posterior"]["theta"].values, post["theta"].values)


def test_log_densities_use_the_mixed_measure(tiny):
    model, guide, _, _ = tiny
    dt = to_datatree(model, guide, num_draws=4, weights_per_layer=20, seed=5)
    draws = list(iter_draws(model, guide, 4, seed=5))
    for s, draw in enumerate(draws):
        with torch.no_grad():
            total_q = sum(float(guide.posterior(n).log_prob(draw.weights[n])) for n in model.sites)
        total_p = sum(float(model.prior(n).log_prob(draw.weights[n])) for n in model.sites)
        assert dt["sample_stats"]["log_q"].values[0, s] == pytest.approx(total_q, rel=1e-5)
        assert dt["sample_stats"]["log_prior"].values[0, s] == pytest.approx(total_p, rel=1e-5)
    theta, lp = dt["posterior"]["theta"].values, dt["log_prior"]["theta"].values
    assert (theta == 0).any()  # masked weights are exact zeros
    np.testing.assert_allclose(lp[theta == 0], math.log(1 - 0.5), rtol=1e-6)  # log(1 - lambda_0) at the atom
    # pruned weights are always zero, with log q = log 1 = 0
    log_q, _ = log_densities(model, guide, draws[0].weights)
    assert (draws[0].weights["0.weight"][:2] == 0).all()
    assert torch.all(log_q["0.weight"][:2] == 0)


def test_windows_give_a_window_dimension(fit_tiny):
    model, guide, x, y = fit_tiny(steps=2, window="equal")
    dt = to_datatree(model, guide, num_draws=5, weights_per_layer=2)
    var = dt["variational"]
    assert var.sizes["window"] == 3
    assert var["num_windows"].values.tolist() == [3, 3]
    assert np.isfinite(var["codebook_mean"].values).all()
    states = layer_states(model, guide)
    assert int(states["0.weight"].group.max()) == 2


class _TinyLM(torch.nn.Module):
    def __init__(self, vocab=7, dim=8):
        super().__init__()
        self.embed = torch.nn.Embedding(vocab, dim)
        self.head = torch.nn.Linear(dim, vocab)

    def forward(self, input_ids, attention_mask=None):
        return self.head(self.embed(input_ids))


def test_causal_lm_with_dict_inputs():
    from sqs_pyro.guides import SQSGuide
    from sqs_pyro.models import CausalLM, SQSModel

    torch.manual_seed(0)
    net = _TinyLM()
    model = SQSModel(net, {"head": {"num_components": 4}}, CausalLM(), num_data=4)
    guide = SQSGuide(model)
    ids = torch.randint(0, 7, (4, 5))
    mask = torch.ones_like(ids)
    mask[0, 3:] = 0
    dt = to_datatree(model, guide, num_draws=6, weights_per_layer=3, data=({"input_ids": ids, "attention_mask": mask}, ids),
                     batch_size=3)
    assert dt["log_likelihood"]["obs"].shape == (1, 6, 4)
    assert dt["observed_data"]["obs"].dims == ("obs_id", "obs_dim_1")
    assert "posterior_predictive" not in dt.children  # token draws are not shaped like the labels
    # the padded positions of sequence 0 are left out: it has fewer terms than the others
    ll = dt["log_likelihood"]["obs"].values[0]
    assert np.all(ll < 0) and np.all(np.isfinite(ll))
    full = to_datatree(model, guide, num_draws=6, weights_per_layer=3, data=({"input_ids": ids}, ids))
    assert np.all(full["log_likelihood"]["obs"].values[0][:, 0] < ll[:, 0])
    np.testing.assert_allclose(full["log_likelihood"]["obs"].values[0][:, 1:], ll[:, 1:], rtol=1e-5)
