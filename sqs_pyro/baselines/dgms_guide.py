"""
DGMS, the baseline SQS builds on, as a guide: a Gaussian mixture per group of
weights with one component pinned at zero, no spike and no gate (docs/method.md §10).

Per group ``g``: ``K`` trainable nonzero means ``mu_g1..mu_gK`` plus the zero
component ``mu_g0 = 0`` (a buffer, never trained), ``K + 1`` stds ``sigma_g``
and ``K + 1`` mixing logits (both trainable, the zero component's included).
The component probabilities ``phi_ik`` are the tempered responsibilities of
the anchor ``w_i``, exactly as in SQS (:func:`~sqs_pyro.soft_quantize.component_probs`).

* **Training** uses the soft weight ``sum_k phi_ik mu_gk``: the guide's
  posterior is a :class:`~sqs_pyro.distributions.SparseGMM` whose gate is
  identically one, so its mean *is* the soft weight and
  ``SQSELBO(kl_weight=0)`` (posterior-mean plug-in, task loss only, no KL
  gradient) trains it, with :class:`pyro.infer.SVI` or a ``torch.optim`` loop.
* **Export** is the argmax: weight ``i`` takes ``mu_{g, argmax_k phi_ik}``; a
  weight whose argmax is the zero component is exactly ``0`` (pruned). The
  nonzero codebook has ``K`` values, like every other method at the same
  ``K``: the zero is stored by the mask, not as a codebook entry. (Dong et al.
  count the zero among their ``2^b`` levels; here it costs nothing extra in
  the codes, so giving DGMS ``K`` nonzero values is the like-for-like setting.)
* **Initialization** (ours; the paper initializes by k-means on all weights):
  to hit a target sparsity ``s``, the ``floor(s N)`` smallest-magnitude anchors
  over all sites (a global threshold, as for magnitude pruning) are the zero
  component's initial members: ``sigma_g0`` is their root mean square and
  ``K``-means on the remaining weights gives ``mu_g1..K``, ``sigma_g1..K`` and
  the fractions. The zero component's mixing logit is then shifted so that, in
  every group, as many weights have it as their argmax as it has members (the
  argmax set is an interval around zero whose ends the mixture places, so it is
  nearly, not exactly, the smallest magnitudes). Training may move the argmax
  sparsity away from ``s``; ``hard_assignment(sparsity=s)`` exports exactly
  ``s`` (the weights whose zero component is most probable are pruned), which
  is what the baseline comparison uses.

Example::

    >>> import torch
    >>> from sqs_pyro import PriorSpec, SQSELBO
    >>> from sqs_pyro.models import SQSModel, Categorical
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 32), torch.nn.ReLU(), torch.nn.Linear(32, 3))
    >>> model = SQSModel(net, PriorSpec({"_default": {"num_components": 4}}), Categorical(), num_data=64)
    >>> guide = DGMSGuide(model, init_sparsity=0.5)
    >>> round(guide.sparsity(), 2)
    0.5
    >>> x, y = torch.randn(64, 8), torch.zeros(64, dtype=torch.long)
    >>> loss = SQSELBO(kl_weight=0.0).differentiable_loss(model, guide, x, y)
    >>> ct = guide.hard_assignment()["0.weight"]
    >>> ct.codebook.numel(), bool((ct.to_dense()[~ct.mask] == 0).all())
    (4, True)

**References**

[1] R. Dong, Z. Tan, M. Wu, L. Zhang, K. Ma, "Finding the Task-Optimal Low-Bit
    Sub-Distribution in Deep Neural Networks", ICML 2022.
"""

import copy
from operator import attrgetter

import torch
from torch.distributions import constraints

from pyro.infer.autoguide import AutoMessenger
from pyro.infer.autoguide.utils import deep_setattr
from pyro.nn.module import PyroModule, PyroParam

from sqs_pyro.distributions import SparseGMM
from sqs_pyro.export import CompressedTensor
from sqs_pyro.guides import build_grouping, kmeans_1d
from sqs_pyro.run.schedules import global_topk_masks
from sqs_pyro.soft_quantize import component_probs, responsibility_logits

_MIN_SCALE = 1e-6


def _init_group(weights, keep, num_components):
    """``(locs (K,), scales (K+1,), logits (K+1,))`` of one group; ``keep`` False = zero component."""
    n = weights.numel()
    zeros, survivors = weights[~keep], weights[keep]
    init = kmeans_1d(survivors if survivors.numel() else weights, num_components)
    if zeros.numel() > 1:
        sigma0 = zeros.pow(2).mean().sqrt()
    else:
        sigma0 = init.scales.min()
    sigma0 = sigma0.clamp(min=_MIN_SCALE) if torch.isfinite(sigma0) else init.scales.min()
    frac0 = (zeros.numel() + 1e-3) / (n + 1e-3)
    fracs = torch.cat([init.weights.new_tensor([frac0]), (1 - frac0) * init.weights])
    locs = init.locs
    scales = torch.cat([sigma0.reshape(1).to(init.scales), init.scales])
    logits = fracs.log()
    # Calibrate the zero component's logit: the argmax is the zero component exactly when
    # d_i = max_{k>0} r_ik - r_i0 <= offset, so the offset is a quantile of d.
    full_locs = torch.cat([locs.new_zeros(1), locs])
    r = responsibility_logits(weights, full_locs, scales, logits)
    d = (r[:, 1:].max(-1).values - r[:, 0]).sort().values
    target = zeros.numel()
    if target == 0:
        offset = d[0] - 1.0
    elif target >= n:
        offset = d[-1] + 1.0
    else:
        offset = (d[target - 1] + d[target]) / 2
    logits = logits.clone()
    logits[0] = logits[0] + offset
    return locs, scales, logits


class DGMSSiteParams(PyroModule):
    """Parameters of one compressed site under DGMS: ``K`` nonzero means, ``K + 1`` stds and logits."""

    def __init__(self, anchor, grouping, settings, keep=None):
        super().__init__()
        self.grouping = grouping
        self.settings = settings
        num_components = settings.num_components
        anchor = anchor.detach()
        keep = torch.ones_like(anchor, dtype=torch.bool) if keep is None else keep.to(anchor.device)
        inits = [
            _init_group(w.float(), k, num_components)
            for w, k in zip(grouping.members(anchor), grouping.members(keep))
        ]
        self.locs = PyroParam(torch.stack([i[0] for i in inits]).to(anchor), event_dim=2)
        self.scales = PyroParam(torch.stack([i[1] for i in inits]).to(anchor), constraint=constraints.positive,
                                event_dim=2)
        self.logits = PyroParam(torch.stack([i[2] for i in inits]).to(anchor), event_dim=2)
        self.register_buffer("zero", anchor.new_zeros(len(inits), 1))
        if grouping.index is not None:
            self.register_buffer("group_index", grouping.index)

    @property
    def num_components(self):
        """``K``, the number of nonzero components."""
        return self.settings.num_components

    def all_locs(self):
        """The ``(G, K + 1)`` means, the pinned zero first."""
        return torch.cat([self.zero, self.locs], dim=-1)

    def component_probs(self, anchor, tau=None):
        """``phi`` over the ``K + 1`` components: shape ``anchor.shape + (K + 1,)``."""
        g = self.grouping.gather
        tau = self.settings.tau if tau is None else tau
        return component_probs(anchor, g(self.all_locs()), g(self.scales), g(self.logits), tau)

    @torch.no_grad()
    def assignment(self, anchor):
        """The argmax component of every weight (``0`` = the zero component)."""
        g = self.grouping.gather
        return responsibility_logits(anchor, g(self.all_locs()), g(self.scales), g(self.logits)).argmax(-1)


class DGMSGuide(AutoMessenger):
    """
    The DGMS guide: at every compressed site of an
    :class:`~sqs_pyro.models.SQSModel`, a Gaussian mixture with a component
    pinned at zero and no gate (see the module docstring).

    :param model: an :class:`~sqs_pyro.models.SQSModel`.
    :param float init_sparsity: fraction of the smallest-magnitude anchors (one
        global threshold over all sites) the zero component initially covers.
    :param dict groupings: optional ``name -> Grouping`` overriding the windows
        the sites' settings ask for.
    """

    def __init__(self, model, *, init_sparsity=0.0, groupings=None, amortized_plates=()):
        super().__init__(model, amortized_plates=amortized_plates)
        if not 0.0 <= init_sparsity < 1.0:
            raise ValueError(f"init_sparsity must lie in [0, 1), got {init_sparsity}")
        self.init_sparsity = float(init_sparsity)
        groupings = groupings or {}
        scores = {name: site.anchor.detach().abs() for name, site in model.sites.items()}
        keeps = global_topk_masks(scores, init_sparsity)
        for name, site in model.sites.items():
            grouping = groupings.get(name) or build_grouping(site.anchor.detach(), site.settings.guide)
            deep_setattr(self, "site_params." + name, DGMSSiteParams(site.anchor, grouping, site.settings.guide, keeps[name]))

    def params_of(self, name):
        """The :class:`DGMSSiteParams` of site ``name``."""
        return attrgetter(name)(self.site_params)

    @property
    def site_names(self):
        return list(self.model.sites)

    def get_posterior(self, name, prior):
        if name not in self.model.sites:
            raise NotImplementedError(f"DGMSGuide only covers compressed weights; site {name!r} is not one of them")
        return self.posterior(name)

    def posterior(self, name, tau=None):
        """
        A :class:`SparseGMM` with gate one over the ``K + 1`` components: its
        mean is the DGMS soft weight ``sum_k phi_k mu_k``.
        """
        p = self.params_of(name)
        anchor = self.model.sites[name].anchor
        g = p.grouping.gather
        gate = anchor.new_ones(()).expand(anchor.shape)
        q = SparseGMM(gate, p.component_probs(anchor, tau), g(p.all_locs()), g(p.scales))
        return q.to_event(anchor.dim())

    def soft_weights(self):
        """``name -> sum_k phi_k mu_k``, the weights the network is trained with."""
        return {name: self.posterior(name).mean for name in self.site_names}

    @torch.no_grad()
    def sparsity(self):
        """Fraction of weights whose argmax is the zero component, over all sites."""
        zeros = total = 0
        for name, site in self.model.sites.items():
            k = self.params_of(name).assignment(site.anchor)
            zeros += int((k == 0).sum())
            total += k.numel()
        return zeros / total

    @torch.no_grad()
    def zero_scores(self):
        """
        ``name -> log r_0 - max_k log r_k`` per weight: how much more probable
        the zero component is than the best nonzero one (> 0 where the argmax is zero).
        """
        out = {}
        for name, site in self.model.sites.items():
            p = self.params_of(name)
            g = p.grouping.gather
            logr = responsibility_logits(site.anchor, g(p.all_locs()), g(p.scales), g(p.logits))
            out[name] = logr[..., 0] - logr[..., 1:].max(-1).values
        return out

    @torch.no_grad()
    def hard_assignment(self, codebook_dtype=torch.float32, sparsity=None):
        """
        The argmax export of every site as a :class:`~sqs_pyro.export.CompressedTensor`:
        the zero component's weights are pruned, the others index a flat codebook of
        ``G * K`` nonzero means (rounded to ``codebook_dtype``).

        :param float sparsity: optional target: prune exactly the ``floor(sparsity N)``
            weights (over all sites) whose zero component is most probable relative
            to their best nonzero one (:meth:`zero_scores`), and give every other
            weight its most probable nonzero component. Without it the sparsity is
            whatever the argmax gives (training moves it away from the initial one).
        """
        keeps = None
        if sparsity is not None:
            keeps = global_topk_masks({n: -z for n, z in self.zero_scores().items()}, sparsity)
        out = {}
        for name, site in self.model.sites.items():
            p = self.params_of(name)
            g = p.grouping.gather
            logr = responsibility_logits(site.anchor, g(p.all_locs()), g(p.scales), g(p.logits))
            if keeps is None:
                k = logr.argmax(-1)
                keep = k > 0
            else:
                k = logr[..., 1:].argmax(-1) + 1
                keep = keeps[name]
            num_components = p.num_components
            codes = k - 1 if p.grouping.index is None else p.grouping.index * num_components + k - 1
            out[name] = CompressedTensor.from_assignment(p.locs, codes, keep, codebook_dtype=codebook_dtype,
                                                         num_components=num_components)
        return out

    def greedy_weights(self, **kwargs):
        """``name -> dense argmax weight`` (on the anchors' device)."""
        hard = self.hard_assignment(**kwargs)
        return {name: hard[name].to_dense().to(site.anchor) for name, site in self.model.sites.items()}

    @torch.no_grad()
    def greedy_map(self, **kwargs):
        """A plain copy of the network with the argmax weights (an ``nn.Module``)."""
        net = copy.deepcopy(self.model.net)
        for name, weight in self.greedy_weights(**kwargs).items():
            param = net.get_parameter(name)
            param.copy_(weight)
            param.requires_grad_(True)
        return net
