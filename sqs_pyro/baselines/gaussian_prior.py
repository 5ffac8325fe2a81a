"""
The paper's ablation: SQS with a plain Gaussian prior ``N(0, sigma_0^2)``
instead of the spike-and-slab (``spike = false`` in the spec: ``PriorSettings(spike=False)``). Everything
else -- guide, schedule, budget, export -- is the SQS run's; the gate is then a
pruning device outside the KL (see :mod:`sqs_pyro.distributions.kl`).

Example::

    >>> gaussian_prior_spec({"_default": {"num_components": 4}, "fc": "dense"})
    {'_default': {'num_components': 4, 'spike': False}, 'fc': None}
"""

from sqs_pyro.prior_spec import PriorSpec


def gaussian_prior_spec(prior):
    """The same prior spec with ``spike=False`` in every rule that compresses (a dict)."""
    rules = PriorSpec.coerce(prior).to_dict()
    return {selector: None if rule is None else {**rule, "spike": False} for selector, rule in rules.items()}


def gaussian_prior_config(cfg, prior):
    """A copy of the run config whose prior is :func:`gaussian_prior_spec` of ``prior``."""
    return cfg.replace_prior(gaussian_prior_spec(prior))
