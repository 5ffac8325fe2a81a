"""
One-dimensional k-means, exact and fast, for initializing codebooks.

In one dimension the k-means clusters are contiguous ranges of the sorted data,
so after a single sort each Lloyd iteration costs ``O(K log N)`` with prefix
sums (no ``N x K`` distance matrix). This scales to groups of hundreds of
millions of weights.

Example::

    >>> import torch
    >>> x = torch.cat([torch.randn(500) * 0.01 - 1, torch.randn(500) * 0.01 + 1])
    >>> init = kmeans_1d(x, 2)
    >>> init.locs.round()
    tensor([-1.,  1.])
"""

from typing import NamedTuple

import torch


class KMeansInit(NamedTuple):
    """Codebook initialization of one group: means, stds and fractions (method.md §3)."""

    locs: torch.Tensor
    scales: torch.Tensor
    weights: torch.Tensor


def kmeans_1d(x, num_clusters, num_iters=50, min_scale=1e-6):
    """
    K-means on a 1-d tensor, initialized at quantiles.

    :param torch.Tensor x: data, any shape (flattened).
    :param int num_clusters: ``K``.
    :returns: :class:`KMeansInit` with sorted means, within-cluster stds
        (zero or undefined stds replaced by the smallest valid one) and
        cluster fractions.
    """
    xs = x.detach().reshape(-1).to(torch.float64).sort().values
    n, k = xs.numel(), int(num_clusters)
    if n == 0:
        raise ValueError("cannot initialize a codebook from an empty group of weights")
    zero = xs.new_zeros(1)
    csum = torch.cat([zero, xs.cumsum(0)])
    csq = torch.cat([zero, (xs * xs).cumsum(0)])
    positions = ((torch.arange(k, dtype=torch.float64, device=xs.device) + 0.5) / k * (n - 1)).round().long()
    locs = xs[positions].clone()
    for _ in range(num_iters):
        edges = torch.searchsorted(xs, (locs[1:] + locs[:-1]) / 2)
        lo = torch.cat([edges.new_zeros(1), edges])
        hi = torch.cat([edges, edges.new_full((1,), n)])
        counts = (hi - lo).to(xs.dtype)
        sums = csum[hi] - csum[lo]
        new = torch.where(counts > 0, sums / counts.clamp(min=1), locs)
        new = new.sort().values
        if torch.equal(new, locs):
            break
        locs = new
    edges = torch.searchsorted(xs, (locs[1:] + locs[:-1]) / 2)
    lo = torch.cat([edges.new_zeros(1), edges])
    hi = torch.cat([edges, edges.new_full((1,), n)])
    counts = (hi - lo).to(xs.dtype)
    var = (csq[hi] - csq[lo]) / counts.clamp(min=1) - locs * locs
    scales = var.clamp(min=0).sqrt()
    valid = (counts > 1) & (scales > min_scale) & torch.isfinite(scales)
    fallback = scales[valid].min() if valid.any() else torch.tensor(max(float(xs[-1] - xs[0]) / (2 * k), min_scale))
    scales = torch.where(valid, scales, fallback.to(scales))
    weights = (counts + 1e-3) / (counts + 1e-3).sum()
    dtype = x.dtype if x.is_floating_point() else torch.float32
    return KMeansInit(locs.to(dtype), scales.to(dtype), weights.to(dtype))
