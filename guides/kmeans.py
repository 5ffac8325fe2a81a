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
    """Codebook initialization of one group: means, stds and fractions (docs/method.md §3)."""

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


def kmeans_groups(x, num_clusters, weights=None, num_iters=50, min_scale=1e-6):
    """
    Weighted 1-d k-means of every row of ``x`` at once: one codebook per group
    (e.g. per output channel), vectorised across groups — one sort of the
    ``(G, n)`` matrix, then Lloyd iterations on prefix sums with a batched
    :func:`torch.searchsorted` (no loop over groups).

    With ``weights`` (non-negative, shape of ``x``) the centres minimize
    ``sum_i w_i (x_i - mu_{k(i)})^2`` within each row, the sensitivity-weighted
    k-means of SqueezeLLM [1], where ``w_i`` is the diagonal Fisher
    information of weight ``i`` (see :func:`~sqs_pyro.guides.fisher.diagonal_fisher`).
    A zero weight leaves a point out (pruned or full-precision weights).
    Centres start at weighted quantiles ``(k + 1/2) / K``; the mixing weights
    are the fractions of the (positively weighted) members of each cluster, the
    stds their weighted within-cluster stds.

    :param torch.Tensor x: ``(G, n)`` data, one group a row (a 1-d tensor is one group).
    :param int num_clusters: ``K``.
    :param torch.Tensor weights: optional ``(G, n)`` non-negative weights.
    :returns: :class:`KMeansInit` of ``(G, K)`` tensors (means sorted in each row).

    **References**

    [1] S. Kim, C. Hooper, A. Gholami, Z. Dong, X. Li, S. Shen, M. W. Mahoney, K. Keutzer,
        "SqueezeLLM: Dense-and-Sparse Quantization", arXiv:2306.07629 (2023).

    Example::

        >>> x = torch.tensor([[0., 0., 1., 10.], [5., 5., 6., 6.]])
        >>> kmeans_groups(x, 2).locs
        tensor([[ 0.3333, 10.0000],
                [ 5.0000,  6.0000]])
        >>> kmeans_groups(x, 2, weights=torch.tensor([[1., 1., 100., 1.], [1., 1., 1., 1.]])).locs[0]
        tensor([ 0.9804, 10.0000])
    """
    x = x.detach()
    one = x.dim() == 1
    xs = x.reshape(1, -1) if one else x
    if xs.dim() != 2 or xs.shape[1] == 0:
        raise ValueError(f"kmeans_groups needs a (groups, n) tensor with n >= 1, got shape {tuple(x.shape)}")
    xs = xs.to(torch.float64)
    if weights is None:
        w = torch.ones_like(xs)
    else:
        w = weights.detach().reshape(xs.shape).to(torch.float64)
        if not (torch.isfinite(w).all() and (w >= 0).all()):
            raise ValueError("k-means weights must be finite and non-negative")
    xs, order = xs.sort(dim=1)
    w = w.gather(1, order)
    g, n = xs.shape
    k = int(num_clusters)
    zero = xs.new_zeros(g, 1)
    cw = torch.cat([zero, w.cumsum(1)], 1)
    cwx = torch.cat([zero, (w * xs).cumsum(1)], 1)
    cwxx = torch.cat([zero, (w * xs * xs).cumsum(1)], 1)
    cn = torch.cat([zero, (w > 0).to(xs.dtype).cumsum(1)], 1)
    total = cw[:, -1:]
    empty = total[:, 0] <= 0
    # weighted quantiles (k + 1/2) / K: the first point whose mid-mass reaches them
    mid = (cw[:, :-1] + cw[:, 1:]) / 2
    targets = (torch.arange(k, dtype=xs.dtype, device=xs.device) + 0.5) / k * total
    first = torch.searchsorted(mid.contiguous(), targets.contiguous()).clamp(max=n - 1)
    locs = xs.gather(1, first)

    def ranges(locs):
        edges = torch.searchsorted(xs, ((locs[:, 1:] + locs[:, :-1]) / 2).contiguous())
        lo = torch.cat([edges.new_zeros(g, 1), edges], 1)
        hi = torch.cat([edges, edges.new_full((g, 1), n)], 1)
        return lo, hi

    for _ in range(num_iters):
        lo, hi = ranges(locs)
        mass = cw.gather(1, hi) - cw.gather(1, lo)
        sums = cwx.gather(1, hi) - cwx.gather(1, lo)
        new = torch.where(mass > 0, sums / mass.clamp(min=1e-300), locs).sort(dim=1).values
        if torch.equal(new, locs):
            break
        locs = new
    lo, hi = ranges(locs)
    mass = cw.gather(1, hi) - cw.gather(1, lo)
    counts = cn.gather(1, hi) - cn.gather(1, lo)
    var = (cwxx.gather(1, hi) - cwxx.gather(1, lo)) / mass.clamp(min=1e-300) - locs * locs
    scales = var.clamp(min=0).sqrt()
    valid = (counts > 1) & (scales > min_scale) & torch.isfinite(scales)
    spread = ((xs[:, -1] - xs[:, 0]) / (2 * k)).clamp(min=min_scale)
    smallest = torch.where(valid, scales, torch.inf).amin(1)
    fallback = torch.where(torch.isfinite(smallest), smallest, spread).unsqueeze(1)
    scales = torch.where(valid, scales, fallback)
    fractions = (counts + 1e-3) / (counts + 1e-3).sum(1, keepdim=True)
    if empty.any():  # a group without any weight: quantiles of its values, unit fractions
        locs[empty] = xs[empty].gather(1, first[empty])
    dtype = x.dtype if x.is_floating_point() else torch.float32
    out = KMeansInit(locs.to(dtype), scales.to(dtype), fractions.to(dtype))
    return KMeansInit(*(t[0] for t in out)) if one else out
