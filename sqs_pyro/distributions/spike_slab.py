"""
The spike-and-slab prior of SQS (docs/method.md §2).
"""

import torch
from torch.distributions import constraints

from pyro.distributions import Normal, TorchDistribution
from pyro.distributions.util import broadcast_shape

#: Scale of the default Normal slab (docs/method.md §2: ``sigma_0 = 3``).
DEFAULT_SLAB_SCALE = 3.0


def _reference_tensor(slab):
    # A tensor carrying the slab's dtype and device, used to convert a float
    # ``inclusion_prob``.
    if slab is not None:
        for value in vars(slab).values():
            if torch.is_tensor(value) and value.is_floating_point():
                return value
    return torch.zeros(())


class SpikeSlab(TorchDistribution):
    r"""
    Spike-and-slab distribution: an atom at zero mixed with a continuous slab,

    .. math::

        \pi(\theta) = (1 - \lambda_0)\, \delta_0(\theta) + \lambda_0\, p_{\rm slab}(\theta).

    This is the i.i.d. per-weight prior of SQS [1]. :meth:`log_prob` is the
    density of this mixed measure with respect to ``delta_0 + Lebesgue``: at
    exactly ``0`` it is ``log(1 - lambda_0)``, elsewhere
    ``log(lambda_0) + slab.log_prob(value)``. A sample is exactly zero with
    probability ``1 - lambda_0``.

    The KL divergence from a :class:`~sqs_pyro.distributions.SparseGMM` to this
    distribution is registered (see :mod:`sqs_pyro.distributions.kl`), so
    :class:`~pyro.infer.TraceMeanField_ELBO` uses it analytically.

    Example::

        >>> import torch, pyro.distributions as dist
        >>> prior = SpikeSlab(torch.tensor(0.01), dist.Laplace(0.0, 1.0))
        >>> prior.log_prob(torch.tensor([0.0, 1.0])).exp()
        tensor([0.9900, 0.0018])
        >>> prior.expand([3, 2]).sample().shape
        torch.Size([3, 2])

    **References**

    [1] Z. Wang, N. Jiang, G. Lin, Q. Song,
        "SQS: Bayesian DNN Compression through Sparse Quantized Sub-distributions",
        arXiv:2510.08999 (2025).

    :param inclusion_prob: prior inclusion probability ``lambda_0``, the mass
        of the slab.
    :type inclusion_prob: float or torch.Tensor
    :param slab: a univariate distribution (empty ``event_shape``) on the
        reals; defaults to ``Normal(0, 3)``.
    :type slab: ~torch.distributions.Distribution
    """

    arg_constraints = {"inclusion_prob": constraints.unit_interval}
    support = constraints.real
    has_rsample = False

    def __init__(self, inclusion_prob, slab=None, validate_args=None):
        if not torch.is_tensor(inclusion_prob):
            ref = _reference_tensor(slab)
            inclusion_prob = torch.as_tensor(
                inclusion_prob, dtype=ref.dtype, device=ref.device
            )
        if slab is None:
            slab = Normal(
                inclusion_prob.new_zeros(()),
                inclusion_prob.new_full((), DEFAULT_SLAB_SCALE),
            )
        if slab.event_shape:
            raise ValueError(
                "SpikeSlab expected a slab with empty event_shape but got {}".format(
                    slab.event_shape
                )
            )
        batch_shape = torch.Size(
            broadcast_shape(inclusion_prob.shape, slab.batch_shape)
        )
        self._inclusion_prob = inclusion_prob.expand(batch_shape)
        # The unexpanded slab is kept: the registered KL works on its (usually
        # scalar) parameters rather than on a batch-sized expansion.
        self._base_slab = slab
        self._slab = slab.expand(batch_shape)
        super().__init__(batch_shape, validate_args=validate_args)

    @property
    def inclusion_prob(self):
        """The slab mass ``lambda_0``, expanded to ``batch_shape``."""
        return self._inclusion_prob

    @property
    def slab(self):
        """The slab distribution, expanded to ``batch_shape``."""
        return self._slab

    def expand(self, batch_shape, _instance=None):
        new = self._get_checked_instance(SpikeSlab, _instance)
        batch_shape = torch.Size(batch_shape)
        new._inclusion_prob = self._inclusion_prob.expand(batch_shape)
        new._base_slab = self._base_slab
        new._slab = self._slab.expand(batch_shape)
        super(SpikeSlab, new).__init__(batch_shape, validate_args=False)
        new._validate_args = self._validate_args
        return new

    def log_prob(self, value):
        if self._validate_args:
            self._validate_sample(value)
        lam = self._inclusion_prob
        log_slab = lam.log() + self._slab.log_prob(value)
        return torch.where(value == 0, (-lam).log1p(), log_slab)

    def sample(self, sample_shape=torch.Size()):
        shape = self._extended_shape(sample_shape)
        with torch.no_grad():
            keep = torch.bernoulli(self._inclusion_prob.expand(shape)).bool()
            draws = self._slab.sample(sample_shape)
            return torch.where(keep, draws, draws.new_zeros(()))

    @property
    def mean(self):
        return self._inclusion_prob * self._slab.mean

    @property
    def variance(self):
        slab_mean = self._slab.mean
        second_moment = self._inclusion_prob * (self._slab.variance + slab_mean**2)
        return second_moment - self.mean**2
