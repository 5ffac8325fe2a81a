"""
The SQS variational family: a spike at zero plus a Gaussian mixture (docs/method.md §3).
"""

import torch
from torch.distributions import constraints

from pyro.distributions import (
    Categorical,
    Normal,
    RelaxedBernoulli,
    RelaxedOneHotCategorical,
    TorchDistribution,
)
from pyro.distributions.util import broadcast_shape

from ..soft_quantize import posterior_mean


class SparseGMM(TorchDistribution):
    r"""
    Sparse Gaussian mixture: an atom at zero mixed with a ``K``-component
    Gaussian mixture,

    .. math::

        q(\theta) = (1 - \gamma)\, \delta_0(\theta)
            + \gamma \sum_{k=1}^K \phi_k\, \mathcal{N}(\theta; \mu_k, \sigma_k^2).

    This is the per-weight variational posterior of SQS [1]: ``gamma`` is the
    weight's gate, ``phi`` its component probabilities, and the codebook
    ``mu`` with stds ``sigma`` is usually shared by a whole group of weights.
    ``locs`` and ``scales`` are kept at their given (broadcastable) shape,
    e.g. ``(1, 1, K)`` for a whole layer, and never expanded to
    ``batch_shape + (K,)``.

    :meth:`log_prob` is the density of the mixed measure with respect to
    ``delta_0 + Lebesgue``: ``log(1 - gamma)`` at exactly ``0``, else
    ``log(gamma) + log sum_k phi_k N(value; mu_k, sigma_k^2)``.
    :meth:`sample` is exact. :meth:`rsample` is **not** an exact draw: it is a
    concrete relaxation (a :class:`~pyro.distributions.RelaxedBernoulli` gate
    times a Gumbel-softmax average of the ``K`` reparameterized component
    draws, both at ``temperature``), which is never exactly zero. It exists so
    that Pyro treats the site as reparameterized; the SQS objective itself uses
    the registered analytic KL bound and the closed-form :attr:`mean`.

    Example::

        >>> import torch
        >>> q = SparseGMM(
        ...     gate_probs=torch.tensor([0.9, 0.2]),
        ...     component_probs=torch.tensor([[0.5, 0.5], [1.0, 0.0]]),
        ...     locs=torch.tensor([-1.0, 1.0]),
        ...     scales=torch.tensor([0.1, 0.1]),
        ... )
        >>> q.batch_shape, q.num_components
        (torch.Size([2]), 2)
        >>> q.mean
        tensor([ 0.0000, -0.2000])
        >>> q.log_prob(torch.zeros(2)).exp()
        tensor([0.1000, 0.8000])

    **References**

    [1] Z. Wang, N. Jiang, G. Lin, Q. Song,
        "SQS: Bayesian DNN Compression through Sparse Quantized Sub-distributions",
        arXiv:2510.08999 (2025).

    :param torch.Tensor gate_probs: inclusion probabilities ``gamma``; their
        shape is (broadcastable to) the batch shape.
    :param torch.Tensor component_probs: ``phi``, shape ``batch_shape + (K,)``,
        each row on the simplex.
    :param torch.Tensor locs: component means ``mu``, broadcastable to
        ``batch_shape + (K,)``.
    :param torch.Tensor scales: component stds ``sigma``, broadcastable to
        ``batch_shape + (K,)``.
    :param float temperature: temperature of the relaxation used by
        :meth:`rsample`.
    """

    arg_constraints = {
        "gate_probs": constraints.unit_interval,
        "component_probs": constraints.simplex,
        "locs": constraints.real,
        "scales": constraints.positive,
    }
    support = constraints.real
    has_rsample = True

    def __init__(
        self,
        gate_probs,
        component_probs,
        locs,
        scales,
        temperature=0.1,
        validate_args=None,
    ):
        if component_probs.dim() < 1 or locs.dim() < 1 or scales.dim() < 1:
            raise ValueError(
                "component_probs, locs and scales need a rightmost component dimension"
            )
        num_components = broadcast_shape(
            component_probs.shape[-1:], locs.shape[-1:], scales.shape[-1:]
        )[0]
        batch_shape = torch.Size(
            broadcast_shape(
                gate_probs.shape,
                component_probs.shape[:-1],
                locs.shape[:-1],
                scales.shape[:-1],
            )
        )
        # Views only: the per-weight parameters get the batch shape, while the
        # (shared) codebook keeps its own, smaller shape.
        self.gate_probs = gate_probs.expand(batch_shape)
        self.component_probs = component_probs.expand(
            batch_shape + (num_components,)
        )
        self.locs = locs
        self.scales = scales
        self.temperature = temperature
        super().__init__(batch_shape, validate_args=validate_args)
        if self._validate_args and not temperature > 0:
            raise ValueError(
                "Expected a positive temperature but got {}".format(temperature)
            )

    @property
    def num_components(self):
        """The number ``K`` of mixture components."""
        return self.component_probs.size(-1)

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(SparseGMM, _instance)
        batch_shape = torch.Size(batch_shape)
        new.gate_probs = self.gate_probs.expand(batch_shape)
        new.component_probs = self.component_probs.expand(
            batch_shape + (self.num_components,)
        )
        new.locs = self.locs
        new.scales = self.scales
        new.temperature = self.temperature
        super(SparseGMM, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def _mixture_log_prob(self, value):
        # log sum_k phi_k N(value; mu_k, sigma_k^2), shape broadcast(value, batch).
        component_log_prob = Normal(self.locs, self.scales, validate_args=False).log_prob(
            value.unsqueeze(-1)
        )
        return torch.logsumexp(self.component_probs.log() + component_log_prob, dim=-1)

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        gate = self.gate_probs
        log_slab = gate.log() + self._mixture_log_prob(value)
        return torch.where(value == 0, (-gate).log1p(), log_slab)

    def _gather_components(self, index):
        shape = index.shape + (self.num_components,)
        index = index.unsqueeze(-1)
        locs = self.locs.expand(shape).gather(-1, index).squeeze(-1)
        scales = self.scales.expand(shape).gather(-1, index).squeeze(-1)
        return locs, scales

    def sample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            keep = torch.bernoulli(self.gate_probs.expand(shape)).bool()
            index = Categorical(
                probs=self.component_probs, validate_args=False
            ).sample(sample_shape)
            locs, scales = self._gather_components(index)
            draws = torch.normal(locs, scales)
            return torch.where(keep, draws, draws.new_zeros(()))

    def rsample(self, sample_shape=torch.Size()):
        """
        A relaxed (concrete) draw, differentiable in every parameter; **not** a
        sample from this distribution (see the class docstring).
        """
        gate, slab = self._relaxed_parts(sample_shape)
        return gate * slab

    def _relaxed_parts(self, sample_shape=torch.Size()):
        # (relaxed gate, relaxed slab draw): rsample() is their product.
        shape = self._extended_shape(sample_shape)
        probs = self.component_probs
        temperature = torch.as_tensor(
            self.temperature, dtype=probs.dtype, device=probs.device
        )
        gate = RelaxedBernoulli(
            temperature,
            probs=self.gate_probs,
            validate_args=False,
        ).rsample(sample_shape)
        weights = RelaxedOneHotCategorical(
            temperature, probs=probs, validate_args=False
        ).rsample(sample_shape)
        noise = torch.randn(
            shape + (self.num_components,), dtype=probs.dtype, device=probs.device
        )
        draws = self.locs + self.scales * noise
        return gate, (weights * draws).sum(-1)

    @property
    def mean(self):
        return posterior_mean(self.gate_probs, self.component_probs, self.locs)

    @property
    def variance(self):
        second_moment = self.gate_probs * (
            self.component_probs * (self.scales**2 + self.locs**2)
        ).sum(-1)
        return second_moment - self.mean**2
