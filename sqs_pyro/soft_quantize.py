"""
The hot path of SQS: component probabilities and the posterior-mean weight.

Every compressed weight ``theta_i`` has a posterior mean
``gamma_i * sum_k phi_ik mu_k`` (method.md §4): the likelihood is evaluated there
on every training step, so this is the one place to make fast. The component
probabilities ``phi_ik`` are not free parameters: they are a tempered softmax of
the mixture responsibilities of the (frozen) anchor weight ``w_i``.

Example::

    >>> import torch
    >>> w = torch.tensor([-1.0, 0.1, 0.9])
    >>> locs, scales = torch.tensor([-1.0, 1.0]), torch.tensor([0.1, 0.1])
    >>> phi = component_probs(w, locs, scales, torch.zeros(2), tau=1e-3)
    >>> posterior_mean(torch.ones(3), phi, locs)
    tensor([-1.,  1.,  1.])
"""

import math

import torch

_HALF_LOG_2PI = 0.5 * math.log(2 * math.pi)


def responsibility_logits(anchor, locs, scales, logits):
    """
    Unnormalized log responsibilities ``log pi_k + log N(w; mu_k, sigma_k^2)``.

    :param torch.Tensor anchor: weights, any shape ``S``.
    :param torch.Tensor locs: component means broadcastable to ``S + (K,)``.
    :param torch.Tensor scales: component stds, broadcastable like ``locs``.
    :param torch.Tensor logits: mixing-weight logits, broadcastable like ``locs``.
    :returns: a tensor of shape ``S + (K,)``.
    """
    log_pi = torch.log_softmax(logits, dim=-1)
    z = (anchor.unsqueeze(-1) - locs) / scales
    return log_pi - 0.5 * z * z - scales.log() - _HALF_LOG_2PI


def component_probs(anchor, locs, scales, logits, tau):
    """
    ``phi_ik = softmax_k(r_ik / tau)`` where ``r_ik`` are the mixture
    responsibilities of the anchor ``w_i`` (method.md §3).

    :param float tau: temperature; small values make ``phi`` nearly one-hot.
    """
    r = torch.softmax(responsibility_logits(anchor, locs, scales, logits), dim=-1)
    return torch.softmax(r / tau, dim=-1)


def posterior_mean(gate, probs, locs):
    """
    The posterior-mean weight ``gamma * sum_k phi_k mu_k``.

    :param torch.Tensor gate: gate probabilities ``gamma``, shape ``S``.
    :param torch.Tensor probs: component probabilities ``phi``, shape ``S + (K,)``.
    :param torch.Tensor locs: codebook, broadcastable to ``S + (K,)``.
    """
    return gate * (probs * locs).sum(-1)
