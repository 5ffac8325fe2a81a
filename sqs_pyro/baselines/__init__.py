"""
Baselines beside SQS, on the same base network, layers, data, ``K``, target
sparsity, writer and evaluation (issue 3; docs/method.md §10):

* magnitude pruning + uniform round-to-nearest (:mod:`.rtn`),
* Deep-Compression-style prune -> fine-tune -> k-means (:mod:`.deep_compression`),
* DGMS (:mod:`.dgms`, its Pyro guide :class:`DGMSGuide` in :mod:`.dgms_guide`),
* SQS with a plain Gaussian prior (:mod:`.gaussian_prior`),
* SQS itself (:mod:`.sqs`),
* training-free per-window RTN and k-means on SQS's own groups (:mod:`.windows`).

:func:`run_baselines` runs them and writes the table (:mod:`.table`).

Example::

    >>> from sqs_pyro.baselines import METHODS
    >>> list(METHODS)
    ['rtn', 'deep-compression', 'dgms', 'sqs-gaussian', 'sqs']
"""

from .deep_compression import deep_compression, kmeans_quantize
from .dgms import train_dgms
from .dgms_guide import DGMSGuide
from .gaussian_prior import gaussian_prior_spec
from .rtn import magnitude_rtn, uniform_quantize
from .run import METHODS, run_baselines
from .table import format_table, write_results
from .windows import window_baselines

__all__ = [
    "METHODS",
    "DGMSGuide",
    "deep_compression",
    "format_table",
    "gaussian_prior_spec",
    "kmeans_quantize",
    "magnitude_rtn",
    "run_baselines",
    "train_dgms",
    "uniform_quantize",
    "window_baselines",
    "write_results",
]
