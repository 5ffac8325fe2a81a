"""
Distributions of SQS: the spike-and-slab prior, the sparse Gaussian-mixture
posterior, and the registered Jensen bound on the KL between them.
"""

from .sparse_gmm import SparseGMM
from .spike_slab import SpikeSlab
from . import kl  # noqa: F401  (registers KL(SparseGMM || SpikeSlab))
from .kl import component_kl, kl_bound_terms

__all__ = [
    "SparseGMM",
    "SpikeSlab",
    "component_kl",
    "kl_bound_terms",
]
