"""
The SQS variational family: each compressed weight is exactly zero (the spike)
or drawn from a Gaussian mixture shared by its group (docs/method.md §3).

    q(theta_i) = (1 - gamma_i) delta_0 + gamma_i sum_k phi_ik N(mu_gk, sigma_gk^2)

Per group ``g``: codebook ``mu_g``, stds ``sigma_g``, mixing weights ``pi_g``
(initialized by k-means on the pretrained weights). Per weight: the gate logit
``rho_i`` with ``gamma_i = sigmoid(rho_i / s)``. The component probabilities
``phi_ik`` are computed from the anchor (the pretrained weight) with
temperature ``tau``. A bool ``mask`` per site implements pruning: masked gates
are exactly zero.

Two options of the default recipe (see :mod:`sqs_pyro.run.recipes`):

- ``gates="hard"``: the gate family is restricted to ``gamma_i in {0, 1}``, set
  by the mask, so the weights the likelihood sees (``gamma * mu``) and the
  exported ones (``mu``) agree; ``gates="learned"`` (the paper's) trains
  ``gamma = sigmoid(rho / s)``.
- ``straight_through=True``: the posterior mean's value is unchanged, but its
  gradient reaches the anchors as if ``phi`` followed them (a straight-through
  estimator [1] of the ``tau -> 0`` limit of the assignments), so the weights can
  change component; the anchors must then require grad.

**References**

[1] Y. Bengio, N. Léonard, A. Courville, "Estimating or Propagating Gradients
    Through Stochastic Neurons for Conditional Computation", arXiv:1308.3432 (2013).

Example::

    >>> import torch, pyro
    >>> from sqs_pyro import PriorSpec, SQSELBO
    >>> from sqs_pyro.models import SQSModel, Gaussian
    >>> net = torch.nn.Linear(3, 1)
    >>> model = SQSModel(net, PriorSpec({"_default": {"num_components": 2}}), Gaussian(), num_data=10)
    >>> guide = SQSGuide(model)
    >>> guide.params_of("weight").locs.shape
    torch.Size([1, 2])
"""

from operator import attrgetter

import torch
from torch.distributions import constraints

from pyro.infer.autoguide import AutoMessenger
from pyro.infer.autoguide.utils import deep_setattr
from pyro.nn.module import PyroModule, PyroParam

from sqs_pyro.distributions import SparseGMM
from sqs_pyro.distributions.anchored import AnchoredSparseGMM
from sqs_pyro.elbo import warn_if_mean_plug_in
from sqs_pyro.handlers import ExactDraws
from sqs_pyro.soft_quantize import component_probs

from .strategies import build_grouping
from .kmeans import kmeans_1d, kmeans_groups


def _codebooks(anchor, grouping, num_components, sensitivity=None, keep=None):
    """
    K-means codebooks ``(locs, scales, weights)``, each ``(G, K)``, of every group
    of ``anchor``'s weights with ``keep`` (default: all but the full-precision
    ones), weighted by ``sensitivity`` when given; also which groups had any such
    weight. Positional groupings go through one vectorised :func:`kmeans_groups`.
    """
    anchor = anchor.detach()
    if grouping.group_size is not None:
        if grouping.full_precision is not None:
            keep = ~grouping.full_precision if keep is None else keep & ~grouping.full_precision
        w = None if sensitivity is None else sensitivity.detach().to(torch.float64)
        if keep is not None:
            w = keep.to(torch.float64) if w is None else w * keep
        x = grouping.matrix(anchor)
        w = None if w is None else grouping.matrix(w)
        init = kmeans_groups(x, num_components, weights=w)
        present = torch.ones(grouping.num_groups, dtype=torch.bool) if w is None else (w > 0).any(1).cpu()
        return init.locs, init.scales, init.weights, present
    members = grouping.members(anchor)
    sens = [None] * len(members) if sensitivity is None else grouping.members(sensitivity.detach())
    kept = [None] * len(members) if keep is None else grouping.members(keep)
    inits, present = [], []
    for m, s, k in zip(members, sens, kept):
        if k is not None:
            m, s = m[k], None if s is None else s[k]
        present.append(m.numel() > 0 and (s is None or bool((s > 0).any())))
        if not present[-1]:  # a placeholder, not used
            m, s = anchor.reshape(-1)[:1], None
        inits.append(kmeans_1d(m, num_components) if s is None else kmeans_groups(m, num_components, weights=s))
    stack = lambda i: torch.stack([init[i] for init in inits])  # noqa: E731
    return stack(0), stack(1), stack(2), torch.tensor(present)


class SiteParams(PyroModule):
    """
    Variational parameters of one compressed site (a weight tensor).

    :param torch.Tensor sensitivity: optional non-negative per-weight importance
        (e.g. the diagonal Fisher of :func:`~sqs_pyro.guides.fisher.diagonal_fisher`):
        the codebooks are then initialized (and refitted) by k-means weighted by it.
    """

    def __init__(self, anchor, grouping, settings, hard_gates=False, sensitivity=None):
        super().__init__()
        self.grouping = grouping
        self.settings = settings
        self.hard_gates = bool(hard_gates)
        num_components = settings.num_components
        if sensitivity is not None:
            if sensitivity.shape != anchor.shape:
                raise ValueError(f"sensitivity has shape {tuple(sensitivity.shape)}, the weight {tuple(anchor.shape)}")
            self.register_buffer("sensitivity", sensitivity.detach().to(anchor))
        else:
            self.sensitivity = None
        locs, scales, weights, _ = _codebooks(anchor, grouping, num_components, self.sensitivity)
        locs, scales, weights = locs.to(anchor), scales.to(anchor), weights.to(anchor)
        self.locs = PyroParam(locs, event_dim=2)
        self.scales = PyroParam(scales, constraint=constraints.positive, event_dim=2)
        self.logits = PyroParam(weights.log(), event_dim=2)
        s = settings.gate_temperature
        init_rho = 5 * s if settings.init_rho is None else settings.init_rho
        self.rho = PyroParam(torch.full_like(anchor, init_rho, requires_grad=False), event_dim=anchor.dim())
        self.register_buffer("mask", torch.ones_like(anchor, dtype=torch.bool))
        if grouping.index is not None:
            self.register_buffer("group_index", grouping.index)

    def gate_probs(self):
        """``gamma = sigmoid(rho / s)``, exactly zero where masked (with hard gates: the mask, 0 or 1)."""
        if self.hard_gates:  # the same tensor while the mask is unchanged (read-only)
            key = (self.mask.data_ptr(), self.mask._version, self.rho.dtype, self.rho.device)
            cached = self.__dict__.get("_hard_gate")
            if cached is None or cached[0] != key:
                cached = self.__dict__["_hard_gate"] = (key, self.mask.to(self.rho.dtype))
            return cached[1]
        gate = torch.sigmoid(self.rho / self.settings.gate_temperature)
        return gate * self.mask

    @torch.no_grad()
    def refit_codebook(self, anchor):
        """
        Re-initialize the codebook (means, stds, mixing weights) of every group by
        k-means on its unmasked anchors, as at construction but on the survivors
        (groups without survivors keep theirs). The M-step that keeps ``K`` values
        for the weights that remain after pruning.
        """
        locs, scales, logits = (t.detach().clone() for t in (self.locs, self.scales, self.logits))
        new_locs, new_scales, new_weights, present = _codebooks(anchor, self.grouping, locs.shape[-1],
                                                                self.sensitivity, keep=self.mask)
        present = present.to(locs.device)
        locs[present] = new_locs.to(locs)[present]
        scales[present] = new_scales.to(scales)[present]
        logits[present] = new_weights.to(logits)[present].log()
        self.locs, self.scales, self.logits = locs, scales, logits  # PyroModule: sets the parameters' values

    def component_probs(self, anchor, tau=None):
        """``phi`` of every weight: shape ``anchor.shape + (K,)``."""
        g = self.grouping.gather
        tau = self.settings.tau if tau is None else tau
        return component_probs(anchor, g(self.locs), g(self.scales), g(self.logits), tau)


class SQSGuide(AutoMessenger):
    """
    The SQS guide: a :class:`~sqs_pyro.distributions.SparseGMM` at every
    compressed site of an :class:`~sqs_pyro.models.SQSModel`.

    Parameters are created eagerly at construction (k-means on each group of
    the anchors), so ``guide.parameters()`` can be handed to an optimizer
    straight away.

    :param model: an :class:`~sqs_pyro.models.SQSModel` (anything with
        ``.sites``: name -> object with ``anchor`` and ``settings``).
    :param dict groupings: optional ``name -> Grouping`` overriding the windows
        that the sites' settings ask for.
    :param str gates: ``"learned"`` (``gamma = sigmoid(rho / s)``) or ``"hard"``
        (``gamma`` = the mask; see the module docstring).
    :param bool straight_through: straight-through gradients to the anchors.
    :param dict sensitivity: optional ``name -> per-weight importance`` (e.g.
        :func:`~sqs_pyro.guides.fisher.diagonal_fisher`): those sites' codebooks
        start from (and are refitted by) k-means weighted by it; a site whose
        settings say ``init="fisher"`` must have one.
    """

    GATES = ("learned", "hard")

    def __init__(self, model, *, groupings=None, gates="learned", straight_through=False, amortized_plates=(),
                 sensitivity=None):
        super().__init__(model, amortized_plates=amortized_plates)
        groupings, sensitivity = groupings or {}, sensitivity or {}
        unknown = set(sensitivity) - set(model.sites)
        if unknown:
            raise ValueError(f"sensitivity given for {sorted(unknown)}, which are not compressed sites")
        for name, site in model.sites.items():
            if site.settings.guide.init == "fisher" and name not in sensitivity:
                raise ValueError(
                    f"site {name!r} asks for init='fisher' but no sensitivity was given for it: pass "
                    "SQSGuide(..., sensitivity=diagonal_fisher(...)) (sqs_pyro.guides.fisher), or use init='kmeans'"
                )
            grouping = groupings.get(name) or build_grouping(site.anchor.detach(), site.settings.guide)
            params = SiteParams(site.anchor, grouping, site.settings.guide, sensitivity=sensitivity.get(name))
            deep_setattr(self, "site_params." + name, params)
        self.configure(gates=gates, straight_through=straight_through)

    def configure(self, *, gates=None, straight_through=None):
        """Set the gate family and the anchors' gradient (``None`` leaves one as it is)."""
        if gates is not None:
            if gates not in self.GATES:
                raise ValueError(f"gates must be one of {self.GATES}, got {gates!r}")
            self.gates = gates
            for name in self.site_names:
                self.params_of(name).hard_gates = gates == "hard"
        if straight_through is not None:
            self.straight_through = bool(straight_through)
        return self

    def params_of(self, name):
        """The :class:`SiteParams` of site ``name``."""
        return attrgetter(name)(self.site_params)

    @property
    def site_names(self):
        return list(self.model.sites)

    #: The plug-in of the last :class:`~sqs_pyro.SQSELBO` evaluation with gradients
    #: (``"mean"`` or ``"sample"``; None before any): set by the ELBO, read by the
    #: predictive helpers to warn about predictive uncertainty from a mean-plug-in fit.
    fit_plug_in = None

    def get_posterior(self, name, prior):
        """
        The posterior at a compressed site, drawn exactly when sampled
        (:class:`~sqs_pyro.handlers.ExactDraws`; the sampled ELBO asks for the
        relaxation through :class:`~sqs_pyro.handlers.RelaxedDraws`). An
        unobserved likelihood site (``y=None``, as in
        ``pyro.infer.Predictive(model, guide=guide, ...)``) keeps the model's own
        distribution: that is the posterior predictive.
        """
        if name not in self.model.sites:
            if name in getattr(self.model, "observation_sites", ("obs",)):
                warn_if_mean_plug_in(self, stacklevel=6)
                return prior
            raise NotImplementedError(
                f"SQSGuide only covers compressed weights; site {name!r} is not one of them"
            )
        return ExactDraws.wrap(self.posterior(name))

    #: Default of :meth:`posterior`'s ``fused``.
    fused = True

    def posterior(self, name, tau=None, fused=None):
        """
        The posterior of site ``name`` (an ``Independent`` over the weight's shape): an
        :class:`~sqs_pyro.distributions.anchored.AnchoredSparseGMM` (memory-efficient mean and KL)
        or, with ``fused=False`` (default: :attr:`fused`), the explicit :class:`SparseGMM`.
        """
        p = self.params_of(name)
        anchor = self.model.sites[name].anchor
        g = p.grouping.gather
        if not (self.fused if fused is None else fused):
            if self.straight_through:
                raise ValueError("straight-through gradients need the fused posterior (fused=True)")
            q = SparseGMM(p.gate_probs(), p.component_probs(anchor, tau), g(p.locs), g(p.scales))
        else:
            index = p.grouping.index  # windows: (G, K) tables indexed per weight, not gathered
            codebook = (p.locs, p.scales, p.logits) if index is not None else map(g, (p.locs, p.scales, p.logits))
            tau = p.settings.tau if tau is None else tau
            q = AnchoredSparseGMM(p.gate_probs(), anchor, *codebook, tau, group_index=index,
                                  straight_through=self.straight_through, hard_gates=p.hard_gates)
        return q.to_event(anchor.dim())

    def refit_codebooks(self):
        """:meth:`SiteParams.refit_codebook` of every site (after the masks change)."""
        for name, site in self.model.sites.items():
            self.params_of(name).refit_codebook(site.anchor)

    def masks(self):
        """``name -> bool mask`` (False = pruned)."""
        return {name: self.params_of(name).mask for name in self.site_names}

    @torch.no_grad()
    def set_masks(self, masks):
        """Set pruning masks: ``name -> bool tensor`` of the site's shape."""
        for name, mask in masks.items():
            self.params_of(name).mask.copy_(mask)
