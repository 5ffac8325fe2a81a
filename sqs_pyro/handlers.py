"""
Effect handlers used by the SQS ELBO.

:class:`PosteriorMean` sets the value of every latent site whose distribution
has a closed-form mean to that mean, instead of sampling it: the likelihood is
then evaluated at the posterior-mean weights ``gamma * sum_k phi_k mu_k``
(docs/method.md §4), deterministically and differentiably. This is the *posterior-mean
plug-in*: cheap, but not an estimate of ``E_q log p(D | theta)``.

:class:`RelaxedDraws` makes the SQS posterior sites draw their reparameterized
(concrete) relaxation instead of an exact sample: what
``SQSELBO(plug_in="sample")`` differentiates. Outside it, an
:class:`~sqs_pyro.guides.SQSGuide` site draws *exactly* (:class:`ExactDraws`):
exact zeros from the spike, a component from ``phi``, a value from its
Gaussian. That is what :class:`pyro.infer.Predictive` sees.
:class:`CodebookDraws` draws the *compressed networks* instead: every weight
exactly 0 or exactly a codebook value ``mu_k`` (``k ~ phi``), what Bayesian
averaging (docs/method.md §7) evaluates.

Example::

    >>> import torch, pyro, pyro.distributions as dist
    >>> def model():
    ...     return pyro.sample("w", dist.Normal(torch.tensor(2.0), 1.0))
    >>> with PosteriorMean():
    ...     model()
    tensor(2.)
"""

import torch

from pyro.distributions import Independent
from pyro.poutine.messenger import Messenger

__all__ = ["CodebookDraws", "ExactDraws", "PosteriorMean", "RelaxedDraws", "codebook_sample"]


class ExactDraws(Independent):
    """
    An :class:`~pyro.distributions.Independent` whose plain draws (``fn()``, what
    ``pyro.sample`` calls) are the base distribution's exact :meth:`sample`, not
    its :meth:`rsample`.

    :class:`~sqs_pyro.distributions.SparseGMM`'s ``rsample`` is a concrete
    relaxation that is never exactly zero; it stays available for
    :class:`RelaxedDraws` (the sampled plug-in of :class:`~sqs_pyro.SQSELBO`),
    while every other consumer of the guide (``Predictive``, ``poutine.trace``)
    gets exact draws. Exact draws of the gate and component are not
    reparameterized, and :attr:`has_rsample` says so: a generic Pyro ELBO
    (``Trace_ELBO``) then uses score-function gradients for these sites, and
    ``TraceMeanField_ELBO`` with validation refuses them; ``SQSELBO`` uses the
    analytic KL and enters its own plug-in handler.
    """

    has_rsample = False

    @classmethod
    def wrap(cls, fn):
        """``fn`` (an ``Independent``) as :class:`ExactDraws`, sharing its base distribution."""
        if isinstance(fn, cls):
            return fn
        return cls(fn.base_dist, fn.reinterpreted_batch_ndims, validate_args=False)


class PosteriorMean(Messenger):
    """
    Replace sampling by the distribution's mean at latent sample sites.

    Enter it *outside* a guide so that it sees the guide's posterior
    (handlers closer to the model act first).

    :param sites: optional collection of site names to restrict to.
    """

    def __init__(self, sites=None):
        super().__init__()
        self.sites = None if sites is None else set(sites)

    def _pyro_sample(self, msg):
        if msg["is_observed"] or msg["value"] is not None:
            return
        if msg["infer"].get("is_auxiliary"):
            return
        if self.sites is not None and msg["name"] not in self.sites:
            return
        msg["value"] = msg["fn"].mean


class RelaxedDraws(Messenger):
    """
    Draw the reparameterized relaxation (``fn.rsample()``) at the latent sites
    that would otherwise draw exactly (:class:`ExactDraws`): the sampled
    plug-in of :class:`~sqs_pyro.SQSELBO`. Enter it outside the guide, like
    :class:`PosteriorMean`.
    """

    def _pyro_sample(self, msg):
        if msg["is_observed"] or msg["value"] is not None:
            return
        fn = msg["fn"]
        if isinstance(fn, ExactDraws):
            msg["value"] = fn.rsample(*msg["args"], **msg["kwargs"])


@torch.no_grad()
def codebook_sample(q, sample_shape=torch.Size()):
    """
    A draw of a :class:`~sqs_pyro.distributions.SparseGMM` ``q`` with the
    component noise left out: ``0`` with probability ``1 - gamma``, else
    exactly ``mu_k`` with ``k ~ Categorical(phi)``.
    """
    from pyro.distributions import Categorical

    shape = q._extended_shape(sample_shape)
    keep = torch.bernoulli(q.gate_probs.expand(shape)).bool()
    index = Categorical(probs=q.component_probs, validate_args=False).sample(sample_shape)
    locs, _ = q._gather_components(index)
    return torch.where(keep, locs, locs.new_zeros(()))


class CodebookDraws(Messenger):
    """
    Draw compressed networks at the SQS posterior sites: each weight exactly
    ``0`` or exactly a codebook value (:func:`codebook_sample`). Enter it
    around ``pyro.infer.Predictive(model, guide=guide, ...)`` to predict with
    the networks that Bayesian averaging uses.
    """

    def _pyro_sample(self, msg):
        if msg["is_observed"] or msg["value"] is not None:
            return
        fn = msg["fn"]
        if isinstance(fn, ExactDraws):
            value = codebook_sample(fn.base_dist, *msg["args"], **msg["kwargs"])
            msg["value"] = value
