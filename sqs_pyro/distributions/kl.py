r"""
The Jensen upper bound on ``KL(SparseGMM || SpikeSlab)`` (docs/method.md §4).

Both measures put an atom at zero, so per weight the KL splits exactly into a
Bernoulli part and the slab part, and the mixture-vs-slab KL is bounded by
convexity (Jensen):

.. math::

    KL(q \| \pi) = KL_{\rm Bern}(\gamma \| \lambda_0)
        + \gamma\, KL\Big(\sum_k \phi_k \mathcal{N}_k \,\Big\|\, p_{\rm slab}\Big)
    \le KL_{\rm Bern}(\gamma \| \lambda_0)
        + \gamma \sum_k \phi_k\, KL(\mathcal{N}_k \| p_{\rm slab}).

The bound is registered with :func:`torch.distributions.kl.register_kl`, so
``kl_divergence(q, p)`` and :class:`~pyro.infer.TraceMeanField_ELBO` return it;
an upper bound on the KL keeps the ELBO a lower bound on the evidence [1].

Per-component terms ``KL(N_k || slab)`` are computed on the codebook's own
(small, broadcastable) shape and only then contracted with ``phi``, so nothing
larger than ``batch_shape + (K,)`` is built:

- a :class:`~torch.distributions.Normal` slab uses the closed form;
- another slab uses ``kl_divergence(Normal, slab)`` when torch has one
  registered (e.g. :class:`~torch.distributions.Laplace`);
- otherwise (e.g. :class:`~torch.distributions.StudentT`) each component's KL
  is a reparameterized Monte Carlo estimate with :data:`MC_KL_SAMPLES` draws
  (Normal entropy in closed form, cross-entropy by sampling). It is unbiased
  and differentiable but random, so the bound then holds in expectation.

Example::

    >>> import torch
    >>> from torch.distributions import kl_divergence
    >>> from sqs_pyro.distributions import SparseGMM, SpikeSlab
    >>> q = SparseGMM(torch.full((4, 3), 0.5), torch.full((4, 3, 2), 0.5),
    ...               locs=torch.tensor([-1.0, 1.0]), scales=torch.tensor([0.1, 0.1]))
    >>> p = SpikeSlab(0.01).expand([4, 3])
    >>> kl_divergence(q, p).shape
    torch.Size([4, 3])
    >>> kl_divergence(q.to_event(2), p.to_event(2)).shape
    torch.Size([])

**References**

[1] Z. Wang, N. Jiang, G. Lin, Q. Song,
    "SQS: Bayesian DNN Compression through Sparse Quantized Sub-distributions",
    arXiv:2510.08999 (2025).
"""

import math

import torch
from torch.distributions import Independent, Normal, kl_divergence, register_kl

from pyro.distributions.util import sum_rightmost

from .sparse_gmm import SparseGMM
from .spike_slab import SpikeSlab

#: Number of reparameterized draws per component in the Monte Carlo fallback
#: for slabs without a closed-form ``KL(Normal || slab)``.
MC_KL_SAMPLES = 64

_HALF_LOG_2PI_E = 0.5 * math.log(2 * math.pi * math.e)


def _component_kl_normal(locs, scales, slab):
    # Closed form KL(N(mu_k, sigma_k^2) || N(m0, s0^2)), components on the right.
    m0 = slab.loc.unsqueeze(-1)
    s0 = slab.scale.unsqueeze(-1)
    return (
        (s0 / scales).log()
        + (scales**2 + (locs - m0) ** 2) / (2 * s0**2)
        - 0.5
    )


def _component_kl_generic(locs, scales, slab):
    # Components go to the *left* so that they broadcast against the slab's
    # batch shape (a distribution cannot be unsqueezed generically).
    rank = max(locs.dim(), scales.dim(), len(slab.batch_shape) + 1)

    def components_first(t):
        return t.reshape((1,) * (rank - t.dim()) + t.shape).movedim(-1, 0)

    loc, scale = components_first(locs), components_first(scales)
    try:
        kl = kl_divergence(Normal(loc, scale, validate_args=False), slab)
    except NotImplementedError:
        loc, scale = torch.broadcast_tensors(loc, scale)
        noise = torch.randn((MC_KL_SAMPLES,) + loc.shape, dtype=loc.dtype, device=loc.device)
        cross_entropy = -slab.log_prob(loc + scale * noise).mean(0)
        kl = cross_entropy - (_HALF_LOG_2PI_E + scale.log())
    return kl.movedim(0, -1)


def component_kl(locs, scales, slab):
    """
    ``KL(N(locs_k, scales_k^2) || slab)`` for every component ``k``.

    :param torch.Tensor locs: component means, components on the rightmost dim.
    :param torch.Tensor scales: component stds, broadcastable with ``locs``.
    :param slab: a univariate distribution whose batch shape broadcasts with
        ``locs.shape[:-1]``.
    :returns: a tensor of shape ``broadcast(locs.shape[:-1], scales.shape[:-1],
        slab.batch_shape) + (K,)``.
    """
    if isinstance(slab, Normal):
        return _component_kl_normal(locs, scales, slab)
    return _component_kl_generic(locs, scales, slab)


def _xlogx(x):
    # x log x with 0 log 0 = 0 and a finite gradient at 0 (a gate that is
    # masked to exactly 0, or a sigmoid saturated at exactly 1), so that the
    # chain rule through ``gate * mask`` gives 0 instead of NaN.
    return x * x.clamp(min=torch.finfo(x.dtype).tiny).log()


def _bernoulli_kl(gamma, lam):
    # KL(Bern(gamma) || Bern(lam)); finite for gamma in {0, 1}, infinite
    # (as it should be) when lam is 0 or 1 and gamma is not.
    return (
        _xlogx(gamma)
        + _xlogx(1 - gamma)
        - torch.xlogy(gamma, lam)
        - torch.xlogy(1 - gamma, 1 - lam)
    )


def _unwrap_independent(d):
    ndims = 0
    while isinstance(d, Independent):
        ndims += d.reinterpreted_batch_ndims
        d = d.base_dist
    return d, ndims


def kl_bound_terms(q, p):
    r"""
    The two terms of the Jensen KL bound, for reporting.

    :param q: a :class:`SparseGMM`, possibly wrapped in ``Independent``.
    :param p: a :class:`SpikeSlab`, wrapped in as many ``Independent`` dims
        as ``q``.
    :returns: ``(kl_bernoulli, kl_mixture)``, both of shape
        ``q.batch_shape``: ``KL_Bern(gamma || lambda_0)`` and
        ``gamma * sum_k phi_k KL(N_k || slab)``; their sum is
        ``kl_divergence(q, p)``. ``Independent`` dims are summed out.
    :rtype: tuple
    """
    q, q_ndims = _unwrap_independent(q)
    p, p_ndims = _unwrap_independent(p)
    if q_ndims != p_ndims:
        raise ValueError(
            "q and p reinterpret {} and {} batch dims as event dims".format(
                q_ndims, p_ndims
            )
        )
    if not isinstance(q, SparseGMM) or not isinstance(p, SpikeSlab):
        raise TypeError(
            "expected a SparseGMM and a SpikeSlab, got {} and {}".format(
                type(q).__name__, type(p).__name__
            )
        )
    gate = q.gate_probs
    kl_bernoulli = _bernoulli_kl(gate, p.inclusion_prob)
    kl_k = component_kl(q.locs, q.scales, p._base_slab)
    kl_mixture = gate * (q.component_probs * kl_k).sum(-1)
    kl_bernoulli, kl_mixture = torch.broadcast_tensors(kl_bernoulli, kl_mixture)
    return sum_rightmost(kl_bernoulli, q_ndims), sum_rightmost(kl_mixture, q_ndims)


@register_kl(SparseGMM, SpikeSlab)
def _kl_sparse_gmm_spike_slab(q, p):
    kl_bernoulli, kl_mixture = kl_bound_terms(q, p)
    return kl_bernoulli + kl_mixture


@register_kl(SparseGMM, Normal)
def _kl_sparse_gmm_normal(q, p):
    # The Gaussian-prior ablation: a prior without a spike. The atom of q has no
    # counterpart in p, so the exact KL is infinite whenever gamma < 1; this is
    # the KL of the slab part alone, gamma * sum_k phi_k KL(N_k || p), treating
    # the gate as a pruning device outside the variational comparison.
    kl_k = component_kl(q.locs, q.scales, p)
    return q.gate_probs * (q.component_probs * kl_k).sum(-1)
