"""
The SQS evidence lower bound.

``ELBO = E_q[log p(D | theta)] - KL(q || pi)`` where the KL of each compressed
site is the registered Jensen bound (docs/method.md §4, an upper bound on the KL, so
this stays a lower bound on the evidence). The data term has two estimators,
the *plug-ins*:

``"sample"``
    ``log p(D | theta)`` at (relaxed, reparameterized) draws ``theta ~ q``: a
    Monte Carlo estimate of ``E_q log p(D | theta)``, so the objective is a real
    ELBO and the fitted ``q`` has a spread the data shaped. A statistician's
    posterior predictive needs this.
``"mean"``
    ``log p(D | theta_bar)`` at the posterior-mean weights
    ``theta_bar = gamma * sum_k phi_k mu_k`` (the SQS paper's choice; cheap,
    deterministic). It is **not** an estimate of ``E_q log p(D | theta)``: the
    data term never sees the component scales or the gates' spread, so those
    stay where the KL puts them (near the prior's). Use it to compress large
    networks; do not read predictive uncertainty from such a fit
    (:class:`MeanPlugInWarning`).
``"auto"`` (default)
    ``"sample"`` when the model has at most :data:`AUTO_SAMPLE_MAX_WEIGHTS`
    compressed weights, else ``"mean"``.

Example::

    >>> import torch, pyro
    >>> from sqs_pyro import PriorSpec
    >>> from sqs_pyro.models import SQSModel, Gaussian
    >>> from sqs_pyro.guides import SQSGuide
    >>> net = torch.nn.Linear(3, 1)
    >>> model = SQSModel(net, PriorSpec({"_default": {"num_components": 2}}), Gaussian(), num_data=8)
    >>> guide = SQSGuide(model)
    >>> elbo = SQSELBO()
    >>> loss = elbo.differentiable_loss(model, guide, torch.randn(8, 3), torch.randn(8))
    >>> sorted(elbo.last_terms["kl"])
    ['weight']
    >>> elbo.last_plug_in                      # 3 weights: small enough to sample
    'sample'
"""

import warnings

import torch
from torch.distributions import kl_divergence

import pyro.poutine as poutine
from pyro.infer import TraceMeanField_ELBO
from pyro.infer.trace_mean_field_elbo import _check_mean_field_requirement
from pyro.infer.util import is_validation_enabled, torch_item
from pyro.poutine.trace_struct import Trace
from pyro.poutine.util import prune_subsample_sites
from pyro.util import check_model_guide_match, warn_if_nan

from .distributions.anchored import summed_kl
from .handlers import PosteriorMean, RelaxedDraws

PLUG_INS = ("auto", "mean", "sample")

#: ``plug_in="auto"`` samples up to this many compressed weights and uses the
#: posterior mean above it (memory and gradient noise of the sampled data term
#: grow with the number of weights; a CNN of ~0.5M weights is compressed with
#: the mean plug-in).
AUTO_SAMPLE_MAX_WEIGHTS = 100_000


class MeanPlugInWarning(UserWarning):
    """Predictive uncertainty asked of a posterior fitted with the posterior-mean plug-in."""


MEAN_PLUG_IN_MESSAGE = (
    "this guide was fitted with the posterior-mean plug-in (SQSELBO(plug_in='mean')): its data term saw only "
    "gamma * sum_k phi_k mu_k, never the spread of q, so the component scales and gates carry the prior's spread "
    "and predictive intervals from it are not calibrated (typically far too wide). For predictive uncertainty, "
    "refit with SQSELBO(plug_in='sample') (affordable up to ~1e5 compressed weights)."
)


def warn_if_mean_plug_in(guide, stacklevel=3):
    """Warn (:class:`MeanPlugInWarning`) when ``guide`` was last trained with the mean plug-in."""
    if getattr(guide, "fit_plug_in", None) == "mean":
        warnings.warn(MEAN_PLUG_IN_MESSAGE, MeanPlugInWarning, stacklevel=stacklevel)


def num_compressed_weights(model, guide=None):
    """The number of compressed weights of an SQS model (via ``model.sites`` or ``guide.model.sites``), or None."""
    for obj in (model, poutine.unwrap(guide) if guide is not None else None):
        sites = getattr(obj, "sites", None) or getattr(getattr(obj, "model", None), "sites", None)
        if sites:
            return sum(site.anchor.numel() for site in sites.values())
    return None


class SQSELBO(TraceMeanField_ELBO):
    """
    :class:`~pyro.infer.TraceMeanField_ELBO` with the SQS conventions.

    :param str plug_in: the estimator of the data term (module docstring):
        ``"auto"`` (default: ``"sample"`` up to :data:`AUTO_SAMPLE_MAX_WEIGHTS`
        compressed weights, else ``"mean"``), ``"sample"`` (the likelihood at
        relaxed draws from the guide: a Monte Carlo ELBO) or ``"mean"`` (the
        likelihood at the posterior-mean weights: the paper's cheap surrogate,
        not an ELBO estimate).
    :param float kl_weight: ``beta`` multiplying the KL (1 = the proper ELBO).
    :param int num_particles: particles (only useful with ``plug_in="sample"``).
    :param int auto_max_weights: the threshold of ``plug_in="auto"``.

    After each evaluation, :attr:`last_terms` holds the loss breakdown:
    ``{"data": ..., "kl": {site: KL}, "kl_total": ..., "elbo": ..., "plug_in": ...}``
    (floats, averaged over particles; KL before ``kl_weight``). ``data`` is
    ``log p(D | theta)`` at the draws (an estimate of ``E_q log p(D | theta)``)
    under ``"sample"`` and ``log p(D | theta_bar)`` under ``"mean"``;
    :attr:`last_plug_in` says which. An evaluation with gradients enabled also
    records the plug-in on the guide (``guide.fit_plug_in``), which the
    predictive helpers read to warn about a mean-plug-in fit.
    """

    def __init__(self, num_particles=1, *, plug_in="auto", kl_weight=1.0, auto_max_weights=AUTO_SAMPLE_MAX_WEIGHTS,
                 **kwargs):
        if plug_in not in PLUG_INS:
            raise ValueError(f"plug_in must be one of {PLUG_INS}, got {plug_in!r}")
        if kl_weight < 0:
            raise ValueError(f"kl_weight must be >= 0, got {kl_weight}")
        super().__init__(num_particles=num_particles, **kwargs)
        self.plug_in = plug_in
        self.kl_weight = float(kl_weight)
        self.auto_max_weights = int(auto_max_weights)
        self.last_plug_in = None
        self._particle_terms = []
        self._last_particle_terms = []

    def resolve_plug_in(self, model, guide):
        """The plug-in used for ``model`` and ``guide``: ``"mean"`` or ``"sample"`` (resolves ``"auto"``)."""
        if self.plug_in != "auto":
            return self.plug_in
        n = num_compressed_weights(model, guide)
        return "sample" if n is None or n <= self.auto_max_weights else "mean"

    def _get_traces(self, model, guide, args, kwargs):
        self._particle_terms = []
        yield from super()._get_traces(model, guide, args, kwargs)
        self._summarize_terms()

    def _get_trace(self, model, guide, args, kwargs):
        plug_in = self.resolve_plug_in(model, guide)
        self.last_plug_in = plug_in
        if torch.is_grad_enabled():
            unwrapped = poutine.unwrap(guide)
            if hasattr(unwrapped, "fit_plug_in"):
                unwrapped.fit_plug_in = plug_in
        with PosteriorMean() if plug_in == "mean" else RelaxedDraws():
            model_trace, guide_trace = self._importance_trace(model, guide, args, kwargs)
        if is_validation_enabled():
            _check_mean_field_requirement(model_trace, guide_trace)
        return model_trace, guide_trace

    def _importance_trace(self, model, guide, args, kwargs):
        # As pyro.infer.enum.get_importance_trace, but the guide's log-densities are
        # not computed: every SQS site uses its analytic KL bound instead.
        unwrapped = poutine.unwrap(guide)
        if isinstance(unwrapped, poutine.messenger.Messenger):
            guide(*args, **kwargs)
            model_trace, guide_trace = unwrapped.get_traces()
            # the guide would hold this step's sites (weights, posteriors, their caches) until its next call: the
            # size of the model again, at the next step's peak
            unwrapped.trace = Trace()
        else:
            guide_trace = poutine.trace(guide).get_trace(*args, **kwargs)
            model_trace = poutine.trace(poutine.replay(model, trace=guide_trace)).get_trace(*args, **kwargs)
        if is_validation_enabled():
            check_model_guide_match(model_trace, guide_trace, self.max_plate_nesting)
        guide_trace = prune_subsample_sites(guide_trace)
        model_trace = prune_subsample_sites(model_trace)
        model_trace.compute_log_prob(site_filter=lambda name, site: site["is_observed"])
        return model_trace, guide_trace

    def _site_kl(self, model_site, guide_site):
        scale, mask = guide_site["scale"], guide_site["mask"]
        if mask is None and (not torch.is_tensor(scale) or scale.numel() == 1):
            # the site's total in one pass, without a KL per weight (anchored.summed_kl)
            total = summed_kl(guide_site["fn"], model_site["fn"])
            if total is not None:
                return total * scale
        try:
            kl = kl_divergence(guide_site["fn"], model_site["fn"])
        except NotImplementedError:
            # Monte Carlo fallback: log q(theta) - log p(theta) at the guide's value.
            value = guide_site["value"]
            kl = guide_site["fn"].log_prob(value) - model_site["fn"].log_prob(value)
        if mask is not None:
            kl = kl * mask
        return (kl * scale).sum()

    def _differentiable_loss_particle(self, model_trace, guide_trace):
        data = 0.0
        kls = {}
        for name, site in model_trace.nodes.items():
            if site["type"] != "sample":
                continue
            if site["is_observed"]:
                data = data + site["log_prob_sum"]
            else:
                kls[name] = self._site_kl(site, guide_trace.nodes[name])
        kl_total = sum(kls.values()) if kls else torch.zeros(())
        elbo = data - self.kl_weight * kl_total
        detach = lambda v: v.detach() if torch.is_tensor(v) else v  # noqa: E731
        self._particle_terms.append({"data": detach(data), "kl": {k: v.detach() for k, v in kls.items()}})
        warn_if_nan(elbo, "elbo")
        return -torch_item(elbo), -elbo

    def _summarize_terms(self):
        self._last_particle_terms, self._particle_terms = self._particle_terms, []

    @property
    def last_terms(self):
        """The loss breakdown of the last evaluation (floats; synchronizes with the device)."""
        terms = self._last_particle_terms
        if not terms:
            return None
        n = len(terms)
        data = sum(torch_item(t["data"]) for t in terms) / n
        kl = {k: sum(torch_item(t["kl"][k]) for t in terms) / n for k in terms[0]["kl"]}
        kl_total = sum(kl.values())
        return {"data": data, "kl": kl, "kl_total": kl_total, "elbo": data - self.kl_weight * kl_total,
                "plug_in": self.last_plug_in}
