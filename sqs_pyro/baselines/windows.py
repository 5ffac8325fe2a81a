"""
Training-free baselines on the same groups (windows) as SQS: magnitude
pruning, then per-window round-to-nearest or per-window k-means.

For a fair comparison at the same bits, each compressed weight is cut into the
groups its :class:`~sqs_pyro.GuideSettings` ask for (``window="layer"``,
``"equal"`` or ``"outlier"``, :func:`~sqs_pyro.guides.build_grouping`, built on
the dense weight exactly as the SQS guide builds them), and every group gets
``K`` codebook values:

* ``"rtn"`` -- ``K`` uniform levels spanning the group's surviving weights
  (:func:`sqs_pyro.baselines.uniform_quantize`), each weight rounded to the nearest;
* ``"kmeans"`` -- ``K`` k-means centroids of the group's survivors
  (:func:`sqs_pyro.baselines.kmeans_quantize`).

Pruning is global magnitude pruning over all compressed weights (the rule of
:func:`sqs_pyro.baselines.common.magnitude_masks`). The result is a
``name -> CompressedTensor`` dict with a flat codebook of ``G * K`` values,
the same layout as :func:`~sqs_pyro.guides.hard_assignment`, so both go
through the same writer and size report.

Example::

    >>> import torch
    >>> from sqs_pyro import PriorSpec
    >>> net = torch.nn.Sequential(torch.nn.Linear(64, 64))
    >>> spec = PriorSpec({"_default": {"num_components": 4, "window": "equal", "blocks": 2}})
    >>> out = window_baselines(net, spec, method="kmeans", sparsity=0.5)
    >>> ct = out["0.weight"]
    >>> ct.codebook.numel(), ct.num_components, round(ct.sparsity, 2)
    (8, 4, 0.5)
"""

import torch

from sqs_pyro.export import CompressedTensor
from sqs_pyro.guides import build_grouping
from sqs_pyro.prior_spec import PriorSpec
from sqs_pyro.run.schedules import global_topk_masks

from .deep_compression import kmeans_quantize
from .rtn import uniform_quantize

__all__ = ["METHODS", "magnitude_masks", "window_baselines", "windowed_quantize"]


METHODS = ("rtn", "kmeans")
#: ``method -> quantizer(values, K)`` of :func:`window_baselines`.
QUANTIZERS = {"rtn": uniform_quantize, "kmeans": kmeans_quantize}


@torch.no_grad()
def magnitude_masks(weights, sparsity):
    """Global magnitude pruning: ``name -> bool mask`` keeping all but the ``floor(sparsity N)`` smallest ``|w|``."""
    return global_topk_masks({name: w.detach().abs() for name, w in weights.items()}, sparsity)


@torch.no_grad()
def windowed_quantize(weight, mask, grouping, num_components, quantize, codebook_dtype=torch.float32):
    """
    Quantize the kept weights of each group separately with ``quantize(weight,
    mask, K, codebook_dtype) -> CompressedTensor`` and join the groups into one
    :class:`CompressedTensor` (group ``g`` owns codebook entries ``g*K .. g*K+K-1``).
    Full-precision weights of the grouping (outlier tails kept as they are) are
    stored as outliers.
    """
    weight = weight.detach().float().cpu()
    mask = mask.cpu().clone()
    outlier_index = outlier_values = None
    if grouping.full_precision is not None:
        fp = grouping.full_precision.cpu()
        outlier_index = fp.reshape(-1).nonzero().squeeze(1)
        outlier_values = weight.reshape(-1)[outlier_index]
        mask &= ~fp
    if grouping.index is None:
        parts = [quantize(weight, mask, num_components, codebook_dtype)]
        group_of_kept = torch.zeros(int(mask.sum()), dtype=torch.long)
    else:
        index = grouping.index.cpu()
        parts = [quantize(weight, mask & (index == g), num_components, codebook_dtype) for g in range(grouping.num_groups)]
        group_of_kept = index[mask]
    positional = grouping.group_size is not None  # the position gives the group: codes are group-local, as SQS's
    codes = torch.empty(int(mask.sum()), dtype=torch.long)
    for g, ct in enumerate(parts):  # codes of group g come in row-major order of its kept weights
        codes[group_of_kept == g] = ct.codes + (0 if positional else g * num_components)
    codebook = torch.cat([ct.codebook for ct in parts])
    return CompressedTensor(tuple(weight.shape), codebook, codes, mask, outlier_index, outlier_values,
                            num_components=num_components, group_size=grouping.group_size)


@torch.no_grad()
def window_baselines(net, spec, *, method, sparsity=0.0, codebook_dtype=torch.float32):
    """
    Compress every weight ``spec`` selects in ``net`` with magnitude pruning to
    ``sparsity`` and per-window ``method`` (``"rtn"`` or ``"kmeans"``) at each
    weight's ``num_components``. ``net`` is not modified.

    :returns: ``name -> CompressedTensor``.
    """
    quantizers = QUANTIZERS
    if method not in quantizers:
        raise ValueError(f"method must be one of {METHODS}, got {method!r}")
    settings = PriorSpec.coerce(spec).resolve(net)
    weights = {name: net.get_parameter(name).detach() for name in settings}
    masks = magnitude_masks(weights, sparsity)
    out = {}
    for name, layer in settings.items():
        s = layer.guide
        grouping = build_grouping(weights[name], s)
        out[name] = windowed_quantize(weights[name], masks[name], grouping, s.num_components, quantizers[method],
                                      codebook_dtype)
    return out
