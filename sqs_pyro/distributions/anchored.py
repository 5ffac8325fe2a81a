r"""
The SQS posterior parameterized by its anchors, with a memory-efficient mean
and KL (docs/method.md §3, §4).

In SQS the component probabilities are not free: ``phi_ik`` is a tempered
softmax of the mixture responsibilities of the anchor weight ``w_i``.
:class:`AnchoredSparseGMM` keeps ``(anchor, locs, scales, logits, tau)``
instead of ``phi`` and computes what the ELBO needs, the mean
``gamma_i sum_k phi_ik mu_k`` and the Jensen KL bound
``KL_Bern(gamma_i || lambda_0) + gamma_i sum_k phi_ik KL(N_k || slab)``, with
:func:`~sqs_pyro.soft_quantize.component_expectations`, which keeps no
``weights x K`` tensor for backward. ``phi`` itself is built only when
something asks for it (:meth:`~SparseGMM.sample`, :meth:`~SparseGMM.log_prob`,
:meth:`~SparseGMM.rsample`).

Example::

    >>> import torch
    >>> from torch.distributions import kl_divergence
    >>> from sqs_pyro.distributions import SparseGMM, SpikeSlab
    >>> anchor = torch.tensor([[-0.9, 0.1], [1.2, 0.8]])
    >>> locs, scales, logits = torch.tensor([[-1.0, 1.0]]), torch.tensor([[0.2, 0.2]]), torch.zeros(1, 2)
    >>> q = AnchoredSparseGMM(torch.full((2, 2), 0.9), anchor, locs, scales, logits, tau=1e-3)
    >>> q.mean
    tensor([[-0.9000,  0.9000],
            [ 0.9000,  0.9000]])
    >>> "component_probs" in vars(q)           # phi was not built
    False
    >>> p = SpikeSlab(0.01).expand([2, 2])
    >>> explicit = SparseGMM(q.gate_probs, q.component_probs, locs, scales)
    >>> torch.allclose(kl_divergence(q, p), kl_divergence(explicit, p))
    True
"""

import torch
from torch.autograd.function import once_differentiable
from torch.distributions import Independent, Normal, constraints, register_kl
from torch.distributions.utils import lazy_property

from pyro.distributions.util import broadcast_shape

from sqs_pyro.soft_quantize import component_expectations, component_probs, component_sums

from .kl import _bernoulli_kl, component_kl
from .sparse_gmm import SparseGMM
from .spike_slab import SpikeSlab


class AnchoredSparseGMM(SparseGMM):
    r"""
    A :class:`SparseGMM` whose component probabilities are those of SQS,

    .. math::

        \phi_{ik} = \mathrm{softmax}_k(r_{ik} / \tau), \qquad
        r_{ik} = \frac{\pi_k \mathcal{N}(w_i; \mu_k, \sigma_k^2)}
                      {\sum_j \pi_j \mathcal{N}(w_i; \mu_j, \sigma_j^2)},

    computed from the anchors ``w`` (see :mod:`sqs_pyro.soft_quantize`).
    :attr:`mean`, :attr:`variance` and the registered KL to a
    :class:`SpikeSlab` or a :class:`~torch.distributions.Normal` prior use the
    fused :func:`~sqs_pyro.soft_quantize.component_expectations`; they equal
    those of the explicit ``SparseGMM(gate_probs, component_probs, locs,
    scales)`` (values and gradients) without storing ``phi``.
    :attr:`component_probs` is built lazily, on first access.

    The codebook is either broadcastable to ``batch_shape + (K,)`` (e.g.
    ``(1, .., 1, K)`` for one layer) or, with ``group_index``, a ``(G, K)``
    table with one row per group (window) and ``group_index`` giving the
    group of each weight; :attr:`locs` and :attr:`scales` are then gathered per
    weight on first access only.

    :param torch.Tensor gate_probs: inclusion probabilities ``gamma``.
    :param torch.Tensor anchor: anchor weights ``w``, shape (broadcastable
        to) the batch shape.
    :param torch.Tensor locs: component means ``mu``.
    :param torch.Tensor scales: component stds ``sigma``.
    :param torch.Tensor logits: mixing-weight logits (``pi = softmax(logits)``).
    :param float tau: temperature of ``phi``.
    :param torch.Tensor group_index: optional long tensor shaped like
        ``anchor``: the row of the ``(G, K)`` tables of each weight.
    :param float temperature: temperature of the relaxation in :meth:`rsample`.
    :param int chunk_size: weights per chunk of the fused operation.
    :param bool straight_through: :attr:`mean` keeps its value but its gradient
        reaches ``anchor`` as ``gate_probs`` (a straight-through estimator of the
        ``tau -> 0`` assignment, Bengio et al. 2013), so anchors can move between
        components. :attr:`mean` (the posterior-mean plug-in) and :meth:`rsample`
        (the sampled plug-in; the gradient is the drawn gate's) are affected.
    :param bool hard_gates: the caller promises that ``gate_probs`` is 0 or 1
        everywhere and takes no gradient (the hard gates of the default recipe),
        so the Bernoulli part of :func:`summed_kl` is a count.
    """

    arg_constraints = {
        "gate_probs": constraints.unit_interval,
        "anchor": constraints.real,
        "locs": constraints.real,
        "scales": constraints.positive,
        "logits": constraints.real,
    }

    def __init__(
        self,
        gate_probs,
        anchor,
        locs,
        scales,
        logits,
        tau,
        *,
        group_index=None,
        temperature=0.1,
        chunk_size=None,
        straight_through=False,
        hard_gates=False,
        validate_args=None,
    ):
        codebook = (locs, scales, logits)
        if any(t.dim() < 1 for t in codebook):
            raise ValueError("locs, scales and logits need a rightmost component dimension")
        self._num_components = broadcast_shape(*(t.shape[-1:] for t in codebook))[0]
        if group_index is None:
            param_shape = broadcast_shape(*(t.shape[:-1] for t in codebook))
            self.locs, self.scales, self.logits = codebook
        else:
            if any(t.dim() != 2 for t in codebook):
                raise ValueError("with a group_index, locs, scales and logits are (G, K) tables")
            param_shape = group_index.shape
        batch_shape = torch.Size(broadcast_shape(gate_probs.shape, anchor.shape, param_shape))
        self._codebook = codebook
        self._cache = {}  # the components of one-hot weights, shared by mean and KL
        self.group_index = group_index
        self.gate_probs = gate_probs.expand(batch_shape)
        self.anchor = anchor
        self.tau = float(tau)
        self.temperature = temperature
        self.chunk_size = chunk_size
        self.straight_through = bool(straight_through)
        self.hard_gates = bool(hard_gates)
        super(SparseGMM, self).__init__(batch_shape, validate_args=validate_args)
        if self._validate_args:
            self._validate_tables()

    def _validate_tables(self):
        if not (self.tau > 0 and self.temperature > 0):
            raise ValueError(f"Expected positive tau and temperature, got {self.tau} and {self.temperature}")
        if self.group_index is not None:
            for name, value in zip(("locs", "scales", "logits"), self._codebook):
                if not torch._is_all_true(self.arg_constraints[name].check(value)):
                    raise ValueError(f"Expected the {name} table to satisfy {self.arg_constraints[name]}")

    @property
    def num_components(self):
        """The number ``K`` of mixture components."""
        return self._num_components

    # Per-weight views, built only when asked for (never by mean or the KL).
    @lazy_property
    def locs(self):
        return self._codebook[0][self.group_index]

    @lazy_property
    def scales(self):
        return self._codebook[1][self.group_index]

    @lazy_property
    def logits(self):
        return self._codebook[2][self.group_index]

    @lazy_property
    def component_probs(self):
        """``phi``, shape ``batch_shape + (K,)``; materialized on first access."""
        phi = component_probs(self.anchor, self.locs, self.scales, self.logits, self.tau)
        return phi.expand(self.batch_shape + (self._num_components,))

    def expectations(self, *values, gate=None, straight_through=False):
        """
        ``gate * sum_k phi_ik v_k`` for each per-component tensor ``v`` laid
        out like the codebook, without storing ``phi`` (see
        :func:`~sqs_pyro.soft_quantize.component_expectations`).
        """
        locs, scales, logits = self._codebook
        return component_expectations(
            self.anchor, locs, scales, logits, self.tau, *values,
            gate=gate, group_index=self.group_index, chunk_size=self.chunk_size, cache=self._cache,
            straight_through=straight_through,
        )

    def sums(self, *values, gate=None):
        """The totals over all weights of :meth:`expectations` (see :func:`~sqs_pyro.soft_quantize.component_sums`)."""
        locs, scales, logits = self._codebook
        return component_sums(
            self.anchor, locs, scales, logits, self.tau, *values,
            gate=gate, group_index=self.group_index, chunk_size=self.chunk_size, cache=self._cache,
        )

    def soft_weights(self):
        """
        Flat indices of the weights whose ``phi`` is not one-hot (to within
        ``eps**2``): the ones the hot path computes with all ``K`` components,
        in the forward and again in the backward pass, so its cost grows with
        their number (all weights when the one-hot shortcut is off).
        """
        with torch.no_grad():
            self.mean  # fills the cache shared by mean and KL
        soft = self._cache.get("soft")
        return torch.arange(self.anchor.numel(), device=self.anchor.device) if soft is None else soft

    @property
    def mean(self):
        # straight through: + gate * (anchor - anchor.detach()), inside the fused operation
        (mean,) = self.expectations(self._codebook[0], gate=self.gate_probs, straight_through=self.straight_through)
        return mean

    def rsample(self, sample_shape=torch.Size()):
        """
        The relaxed draw of :meth:`SparseGMM.rsample`; with ``straight_through``
        its gradient also reaches ``anchor``, as the drawn gate (the value is unchanged).
        """
        gate, slab = self._relaxed_parts(sample_shape)
        if self.straight_through and self.anchor.requires_grad:
            slab = slab + (self.anchor - self.anchor.detach())
        return gate * slab

    @property
    def variance(self):
        locs, scales, _ = self._codebook
        mean, second = self.expectations(locs, scales**2 + locs**2, gate=self.gate_probs)
        return second - mean**2

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(AnchoredSparseGMM, _instance)
        batch_shape = torch.Size(batch_shape)
        new.__dict__.update(
            {k: v for k, v in self.__dict__.items() if k in ("locs", "scales", "logits")}
        )
        new._codebook = self._codebook
        new._cache = self._cache
        new._num_components = self._num_components
        new.group_index = self.group_index
        new.gate_probs = self.gate_probs.expand(batch_shape)
        new.anchor = self.anchor
        new.tau = self.tau
        new.temperature = self.temperature
        new.chunk_size = self.chunk_size
        new.straight_through = self.straight_through
        new.hard_gates = self.hard_gates
        super(SparseGMM, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new


def _compact(t):
    # The smallest view of an expanded tensor: stride-0 dimensions become size 1.
    return t[tuple(slice(0, 1) if s == 0 else slice(None) for s in t.stride())]


def _small_slab(slab):
    """The slab with expanded (stride-0) batch dims removed where that is known to be safe."""
    if isinstance(slab, Normal):
        loc, scale = _compact(slab.loc), _compact(slab.scale)
        if loc.numel() == 1 and scale.numel() == 1:
            loc, scale = loc.reshape(()), scale.reshape(())
        return Normal(loc, scale, validate_args=False)
    return slab


def _gated_component_kl(q, slab):
    # gamma_i sum_k phi_ik KL(N_k || slab), per weight.
    slab = _small_slab(slab)
    locs, scales, _ = q._codebook
    if q.group_index is not None and slab.batch_shape:
        # A slab varying per weight does not fit the (G, K) tables: explicit phi.
        return q.gate_probs * (q.component_probs * component_kl(q.locs, q.scales, slab)).sum(-1)
    (kl,) = q.expectations(component_kl(locs, scales, slab), gate=q.gate_probs)
    return kl


class _BernoulliKL(torch.autograd.Function):
    """kl.py's ``KL(Bern(gamma) || Bern(lam))`` with an analytic backward that stores only its inputs."""

    @staticmethod
    def forward(ctx, gate, lam):
        ctx.save_for_backward(gate, lam)
        return _bernoulli_kl(gate, lam)

    @staticmethod
    @once_differentiable
    def backward(ctx, grad):
        gate, lam = ctx.saved_tensors
        grad_gate = grad_lam = None
        if ctx.needs_input_grad[0]:
            # as autograd differentiates kl.py's formula: x log x with x clamped at
            # tiny gives log x + 1 (log tiny at 0), xlogy(x, y) gives log y
            tiny = torch.finfo(gate.dtype).tiny
            rest = 1 - gate
            slope = (gate > tiny).to(gate.dtype).sub_((rest > tiny).to(gate.dtype))
            slope += gate.clamp(min=tiny).log_().sub_(rest.clamp_(min=tiny).log_())
            small = _compact(lam)  # usually one value, expanded
            slope -= torch.log(small) - torch.log1p(-small)
            grad_gate = slope.mul_(grad)
        if ctx.needs_input_grad[1]:
            grad_lam = (grad * ((1 - gate) / (1 - lam) - gate / lam)).sum_to_size(lam.shape)
        return grad_gate, grad_lam


@register_kl(AnchoredSparseGMM, SpikeSlab)
def _kl_anchored_spike_slab(q, p):
    # The Jensen bound of kl.py, KL_Bern + gamma * sum_k phi_k KL(N_k || slab).
    return _BernoulliKL.apply(q.gate_probs, p.inclusion_prob) + _gated_component_kl(q, p._base_slab)


@register_kl(AnchoredSparseGMM, Normal)
def _kl_anchored_normal(q, p):
    # The Gaussian-prior ablation, as for SparseGMM in kl.py: the slab part alone.
    return _gated_component_kl(q, p)


def _unwrap(d):
    ndims = 0
    while isinstance(d, Independent):
        ndims += d.reinterpreted_batch_ndims
        d = d.base_dist
    return d, ndims


def _bernoulli_total(q, lam):
    # sum_i KL(Bern(gamma_i) || Bern(lam_i)); with hard gates and one lam, a count of the open gates
    small = _compact(lam)
    if q.hard_gates and small.numel() == 1 and not lam.requires_grad:
        ends = _bernoulli_kl(torch.tensor([1.0, 0.0], dtype=lam.dtype, device=lam.device), small.reshape(1))
        gate = q.gate_probs
        opened = _compact(gate).sum() * (gate.numel() // _compact(gate).numel())
        return opened * ends[0] + (gate.numel() - opened) * ends[1]
    return _BernoulliKL.apply(q.gate_probs, lam).sum()


def summed_kl(q, p):
    """
    ``kl_divergence(q, p)`` summed over every weight, as one scalar, for an
    :class:`AnchoredSparseGMM` ``q`` (possibly in ``Independent``) against a
    :class:`SpikeSlab` or :class:`~torch.distributions.Normal` ``p`` wrapped
    alike; ``None`` for other pairs. Nothing per weight is built where
    :func:`~sqs_pyro.soft_quantize.component_sums` can avoid it (hard gates, one-hot
    weights), and the Bernoulli part of hard gates is a count. Equal to the sum
    of the registered KL up to the order of the additions (values and gradients).

    Example::

        >>> from torch.distributions import kl_divergence
        >>> anchor = torch.tensor([-0.9, 0.1, 1.2])
        >>> q = AnchoredSparseGMM(torch.tensor([1.0, 0.0, 1.0]), anchor, torch.tensor([-1.0, 1.0]),
        ...                       torch.tensor([0.2, 0.2]), torch.zeros(2), 1e-3, hard_gates=True)
        >>> p = SpikeSlab(0.01).expand([3])
        >>> torch.allclose(summed_kl(q, p), kl_divergence(q, p).sum())
        True
    """
    q, q_ndims = _unwrap(q)
    p, p_ndims = _unwrap(p)
    if not isinstance(q, AnchoredSparseGMM) or q_ndims != p_ndims:
        return None
    if isinstance(p, SpikeSlab):
        bernoulli, slab = _bernoulli_total(q, p.inclusion_prob), p._base_slab
    elif isinstance(p, Normal):
        bernoulli, slab = 0.0, p
    else:
        return None
    slab = _small_slab(slab)
    if q.group_index is not None and slab.batch_shape:
        return None  # a slab per weight does not fit the (G, K) tables: the registered KL
    locs, scales, _ = q._codebook
    (mixture,) = q.sums(component_kl(locs, scales, slab), gate=q.gate_probs)
    return bernoulli + mixture
