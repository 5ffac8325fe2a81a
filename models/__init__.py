"""Pyro models: networks + spike-and-slab priors + likelihoods."""

from .likelihoods import CausalLM, Categorical, Gaussian, Likelihood, get_likelihood
from .sqs_model import SQSModel, WeightSite, spike_slab_prior

__all__ = ["CausalLM", "Categorical", "Gaussian", "Likelihood", "SQSModel", "WeightSite", "get_likelihood", "spike_slab_prior"]
