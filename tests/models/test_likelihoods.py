"""Likelihoods: the ``obs`` site, its log-density and the minibatch scaling of the data plate."""

import pyro
import pyro.poutine as poutine
import pytest
import torch
import torch.nn.functional as F

from sqs_pyro.models import CausalLM, Categorical, Gaussian, get_likelihood


def _obs(likelihood, output, target, **kwargs):
    trace = poutine.trace(lambda: likelihood(output, target, **kwargs)).get_trace()
    trace.compute_log_prob()
    return trace.nodes["obs"]


def test_categorical_is_cross_entropy_scaled_to_the_data_set():
    torch.manual_seed(0)
    logits, y = torch.randn(4, 3), torch.tensor([0, 2, 1, 2])
    site = _obs(Categorical(), logits, y, num_data=40, subsample=torch.arange(4))
    assert site["scale"] == pytest.approx(10.0)  # n / batch: an unbiased estimate of the full data term
    assert torch.allclose(site["log_prob_sum"], -10.0 * F.cross_entropy(logits, y, reduction="sum"))


def test_gaussian_drops_a_trailing_one_and_learns_its_scale():
    loc, y = torch.tensor([[0.5], [1.0]]), torch.tensor([0.0, 2.0])
    site = _obs(Gaussian(scale=2.0), loc, y)
    expected = torch.distributions.Normal(torch.tensor([0.5, 1.0]), 2.0).log_prob(y).sum()
    assert site["value"].shape == (2,) and torch.allclose(site["log_prob_sum"], expected)
    pyro.clear_param_store()
    _obs(Gaussian(scale=0.3, learn_scale=True), loc, y)
    assert pyro.param("obs_scale").item() == pytest.approx(0.3)


def test_causal_lm_sums_next_token_log_probs_under_the_masks():
    torch.manual_seed(0)
    logits = torch.randn(2, 4, 5)
    labels = torch.tensor([[1, 2, 3, 4], [0, 1, -100, 2]])
    attention = torch.tensor([[1, 1, 1, 0], [1, 1, 1, 1]])
    site = _obs(CausalLM(), logits, labels, attention_mask=attention)
    logp = logits[:, :-1].log_softmax(-1)
    expected = (logp[0, 0, 2] + logp[0, 1, 3]) + (logp[1, 0, 1] + logp[1, 2, 2])  # masked: label -100, padding
    assert torch.allclose(site["log_prob_sum"], expected)


def test_get_likelihood_by_name():
    assert isinstance(get_likelihood("gaussian", scale=0.5), Gaussian) and get_likelihood("gaussian", scale=0.5).scale == 0.5
    with pytest.raises(ValueError, match="unknown likelihood 'poisson'"):
        get_likelihood("poisson")
