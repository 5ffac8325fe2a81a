"""
sqs-pyro: Bayesian compression of deep networks with sparse quantized
sub-distributions (SQS; Wang, Jiang, Lin & Song, arXiv 2510.08999), in Pyro.

Five lines from a trained network to a sparse, quantized one::

    spec = PriorSpec({"_default": {"num_components": 4}})        # spike-and-slab prior, K = 4
    model = SQSModel(net, spec, Categorical(), num_data=len(X))  # sqs_pyro.models
    guide = SQSGuide(model)                                      # sqs_pyro.guides
    svi = pyro.infer.SVI(model, guide, pyro.optim.Adam({"lr": 1e-3}), SQSELBO())
    compressed = greedy_map(model, guide)                        # after svi.step(X, y) a few hundred times

``SQSELBO()`` estimates the data term at draws from the guide (a Monte Carlo
ELBO) up to 100,000 compressed weights and at the posterior mean above; see
:mod:`sqs_pyro.elbo` and docs/statisticians.md.
"""

from .elbo import SQSELBO, MeanPlugInWarning
from .handlers import PosteriorMean, RelaxedDraws
from .prior_spec import GuideSettings, LayerSettings, PriorSettings, PriorSpec
from .state import load_fit, save_fit

__version__ = "0.1.0"

__all__ = ["GuideSettings", "LayerSettings", "MeanPlugInWarning", "PosteriorMean", "PriorSettings", "PriorSpec", "RelaxedDraws", "SQSELBO",
           "__version__", "load_fit", "save_fit"]
