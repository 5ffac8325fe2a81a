"""
Effect handlers used by the SQS ELBO.

:class:`PosteriorMean` sets the value of every latent site whose distribution
has a closed-form mean to that mean, instead of sampling it: the likelihood is
then evaluated at the posterior-mean weights ``gamma * sum_k phi_k mu_k``
(method.md §4), deterministically and differentiably.

Example::

    >>> import torch, pyro, pyro.distributions as dist
    >>> def model():
    ...     return pyro.sample("w", dist.Normal(torch.tensor(2.0), 1.0))
    >>> with PosteriorMean():
    ...     model()
    tensor(2.)
"""

from pyro.poutine.messenger import Messenger


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
