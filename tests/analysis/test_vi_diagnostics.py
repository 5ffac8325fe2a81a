import json
import math

import numpy as np
import pytest

from sqs_pyro.analysis.diagnostics import khat_label, prior_sensitivity, psis_diagnostic, psis_from_log_ratios
from sqs_pyro.analysis.to_arviz import to_datatree


def _normal_ratios(target_scale, n=2000, seed=0):
    # draws from q = N(0, 1); log p - log q for p = N(0, target_scale^2)
    x = np.random.default_rng(seed).normal(size=n)
    return -0.5 * (x / target_scale) ** 2 - math.log(target_scale) + 0.5 * x**2


def test_khat_separates_good_from_bad_proposals():
    good = psis_from_log_ratios(_normal_ratios(0.5))  # q wider than p: bounded weights
    bad = psis_from_log_ratios(_normal_ratios(3.0))  # q much narrower than p: heavy-tailed weights
    assert good.khat < 0.5 and good.label == "good"
    assert bad.khat > 0.7 and bad.label == "unreliable"
    assert good.ess > bad.ess
    # log p(y) = 0 here (both densities normalized): the IS estimate is close for the good proposal
    assert abs(good.log_evidence_is) < 0.05


def test_khat_labels():
    assert [khat_label(k) for k in (0.3, 0.6, 0.9, float("nan"))] == ["good", "ok", "unreliable", "undefined"]


def test_psis_of_a_fitted_model_is_finite(tiny):
    model, guide, x, y = tiny
    d = psis_diagnostic(model, guide, x, y, num_draws=60, seed=0)
    assert math.isfinite(d.khat) and d.label in ("good", "ok", "unreliable")
    assert 1.0 <= d.ess <= 60 + 1e-6
    assert d.elbo <= d.log_evidence_is  # Jensen: mean log r <= log mean r
    np.testing.assert_allclose(d.log_ratios, d.terms["log_likelihood"] + d.terms["log_prior"] - d.terms["log_q"])
    assert np.isclose(np.exp(d.log_weights).sum(), 1.0)
    json.dumps(d.to_dict())


def test_spike_free_prior_is_refused(fit_tiny):
    model, guide, x, y = fit_tiny(steps=1, spike=False)
    with pytest.raises(ValueError, match="spike"):
        psis_diagnostic(model, guide, x, y, num_draws=10)


def test_prior_sensitivity(tiny):
    model, guide, x, y = tiny
    tree = to_datatree(model, guide, num_draws=80, weights_per_layer=16, data=(x, y), seed=2)
    s = prior_sensitivity(model, guide, tree=tree, alphas=(0.8, 1.25))
    assert s.alphas == [0.8, 1.0, 1.25]
    np.testing.assert_allclose(s.summaries[1.0]["sparsity"]["0.weight"], tree["posterior"]["sparsity"].values[0][:, 0].mean())
    for a in (0.8, 1.25):
        assert math.isfinite(s.khat[a]) and 1.0 <= s.ess[a] <= 80 + 1e-6
        for summary in ("sparsity", "bits", "weight_rms"):
            assert all(math.isfinite(v) for v in s.summaries[a][summary].values())
    for summary in ("sparsity", "bits", "weight_rms"):
        assert all(math.isfinite(v) and v >= 0 for v in s.psense[summary].values())
        assert set(s.psense_likelihood[summary]) == set(model.sites)
    json.dumps(s.to_dict())
