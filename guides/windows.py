"""
Windows: groups for long-tailed weight matrices (docs/method.md §5; SQS, arXiv 2510.08999).

One Gaussian mixture per layer spends most of its ``K`` components on a few
extreme weights when the layer is long-tailed (LLMs). Windows cut a layer into
groups by the *rank* of each weight, so each group gets its own codebook:

- :func:`equal_windows` — sort, cut into ``blocks`` equal-count windows.
- :func:`outlier_windows` — the SQS rule: the weights beyond the Tukey fences
  ``Q1 - factor * IQR`` and ``Q3 + factor * IQR`` form two tail groups (or stay
  at full precision), the middle is cut into ``blocks - 2`` equal-count windows.

Both return a :class:`~sqs_pyro.guides.Grouping`; group ids follow the value
order (group 0 holds the smallest weights), and ties are ranked by position, as
a stable sort would. Quartiles and window edges come from one sort of the
*values* (no argsort, no :func:`torch.quantile`, which stops at 16M elements);
each weight then finds its window by thresholding, so a 20M-weight matrix is
windowed in about a second or two on CPU.

Example::

    >>> import torch
    >>> w = torch.cat([torch.linspace(-1, 1, 96), torch.tensor([-50., -40., 40., 50.])])
    >>> g = outlier_windows(w, blocks=4)
    >>> g.num_groups, g.index[-4:].tolist()
    (4, [0, 0, 3, 3])
    >>> e_outlier = window_reconstruction_error(w, g, num_components=4)
    >>> e_equal = window_reconstruction_error(w, equal_windows(w, blocks=4), num_components=4)
    >>> e_outlier < e_equal
    True
"""

import numpy as np
import torch

from .groups import Grouping
from .kmeans import kmeans_1d

_TAILS = ("gmm", "full")


def _flat_and_sorted(weight):
    """
    The flattened weights (upcast to float32 if they are half precision or
    integers; exact) and the same values sorted ascending.

    Only the *values* are sorted, never an argsort: windows are recovered from
    thresholds (:func:`_rank_windows`), which keeps this ``O(N)`` memory and fast.
    On CPU NumPy's vectorized sort is used: it is an order of magnitude faster
    than :func:`torch.sort` there.
    """
    flat = weight.detach().reshape(-1)
    if flat.numel() == 0:
        raise ValueError("cannot window an empty weight tensor")
    if flat.dtype not in (torch.float32, torch.float64):
        flat = flat.to(torch.float32)
    if flat.device.type == "cpu":
        values = torch.from_numpy(np.sort(flat.numpy()))
    else:
        values = torch.sort(flat).values
    if not (torch.isfinite(values[0]) and torch.isfinite(values[-1])):
        raise ValueError("cannot window weights that contain NaN or infinite values")
    return flat, values


def _rank_windows(flat, values, cuts):
    """
    Window id of each weight when the sorted order is cut before each rank in
    ``cuts`` (strictly increasing, inside ``(0, N)``): weight ``i`` lands in
    window ``#{j : cuts[j] <= rank(i)}``. Ties are ranked by flat position, as a
    stable sort would, so every window gets exactly its share of ranks.
    """
    if not cuts:
        return torch.zeros(flat.shape, dtype=torch.long, device=flat.device)
    cuts_t = torch.tensor(cuts, dtype=torch.long, device=flat.device)
    last_before = values[cuts_t - 1]  # the largest value of the window left of each cut
    # A weight strictly above the last value of window j-1 has rank >= cuts[j];
    # one at or below it has a smaller rank unless that value straddles the cut.
    index = torch.bucketize(flat, last_before, right=False)
    for v in torch.unique(last_before[values[cuts_t] == last_before]).tolist():
        # a run of equal values straddles a cut: rank its members by position
        v = torch.tensor(v, dtype=values.dtype, device=values.device)
        first = torch.searchsorted(values, v, right=False)
        tied = (flat == v).nonzero().squeeze(1)
        ranks = first + torch.arange(tied.numel(), device=flat.device)
        index[tied] = torch.searchsorted(cuts_t, ranks, right=True)
    return index


def _equal_cuts(start, count, blocks):
    """Cut ranks ``start .. start + count - 1`` into ``min(blocks, count)`` runs whose sizes differ by at most one."""
    blocks = min(int(blocks), count)
    return [start + j * count // blocks for j in range(1, blocks)], blocks


def _quantile_sorted(values, q):
    """Linear-interpolation quantile of sorted ``values`` (the same rule as :func:`torch.quantile`)."""
    pos = q * (values.numel() - 1)
    lo = int(pos)
    hi = min(lo + 1, values.numel() - 1)
    a, b = float(values[lo]), float(values[hi])
    return a + (pos - lo) * (b - a)


def _fences(values, factor):
    q1, q3 = _quantile_sorted(values, 0.25), _quantile_sorted(values, 0.75)
    iqr = q3 - q1
    return q1 - factor * iqr, q3 + factor * iqr


def outlier_fences(weight, factor=5.0):
    """
    The Tukey fences of docs/method.md §5: ``(Q1 - factor * IQR, Q3 + factor * IQR)``.

    Quartiles interpolate linearly between order statistics, like
    :func:`torch.quantile`, but work for any number of weights.

    :param torch.Tensor weight: weights, any shape.
    :param float factor: fence width in IQRs (SQS uses 5).
    :returns: ``(low, high)`` as Python floats.
    """
    _, values = _flat_and_sorted(weight)
    return _fences(values, factor)


def equal_windows(weight, blocks=4):
    """
    Equal-count windows (docs/method.md §5): sort the weights, cut the sorted order
    into ``blocks`` contiguous windows of equal size (within one), and give
    each weight the id of its window (the same result as scattering the window
    ids back through the inverse permutation of a stable sort).

    A tensor with fewer than ``blocks`` weights gets one window per weight.

    :param torch.Tensor weight: weights, any shape.
    :param int blocks: number of windows.
    :rtype: ~sqs_pyro.guides.Grouping

    Example::

        >>> g = equal_windows(torch.tensor([[4., 1.], [3., 2.]]), blocks=2)
        >>> g.index
        tensor([[1, 0],
                [1, 0]])
    """
    if int(blocks) < 1:
        raise ValueError(f"equal windows need blocks >= 1, got {blocks}")
    flat, values = _flat_and_sorted(weight)
    cuts, num_groups = _equal_cuts(0, values.numel(), blocks)
    index = _rank_windows(flat, values, cuts).reshape(weight.shape)
    return Grouping(weight.shape, index, num_groups, kind="equal")


def outlier_windows(weight, blocks=4, factor=5.0, tails="gmm"):
    """
    Outlier-aware windows, the SQS rule (docs/method.md §5, arXiv 2510.08999).

    With quartiles ``Q1``, ``Q3`` and ``IQR = Q3 - Q1``, the *left tail* is every
    weight below ``Q1 - factor * IQR`` and the *right tail* every weight above
    ``Q3 + factor * IQR``. The weights in between are cut by rank into
    ``blocks - 2`` equal-count windows.

    - ``tails="gmm"``: each non-empty tail is a group of its own (its own
      codebook), so there are ``blocks`` groups when both tails are non-empty
      and fewer otherwise — no group is ever empty.
    - ``tails="full"``: tail weights are kept at full precision
      (:attr:`Grouping.full_precision`); they still carry the id of the nearest
      middle window so that ``index`` covers every weight. ``full_precision`` is
      ``None`` when there are no tail weights.

    Group ids follow the value order: left tail, middle windows, right tail.

    :param torch.Tensor weight: weights, any shape.
    :param int blocks: number of groups including the two tails (at least 3).
    :param float factor: fence width in IQRs (SQS uses 5).
    :param str tails: ``"gmm"`` or ``"full"``.
    :rtype: ~sqs_pyro.guides.Grouping

    Example::

        >>> w = torch.cat([torch.randn(1000), torch.tensor([100.])])
        >>> g = outlier_windows(w, blocks=4)            # no left tail: 3 groups
        >>> g.num_groups, int(g.index[-1])
        (3, 2)
        >>> g = outlier_windows(w, blocks=4, tails="full")
        >>> g.num_groups, int(g.full_precision.sum()), int(g.index[-1])
        (2, 1, 1)
    """
    if int(blocks) < 3:
        raise ValueError(
            f"outlier-aware windows need blocks >= 3 (two tails and at least one middle window), got {blocks}; "
            "use equal_windows for fewer blocks"
        )
    if tails not in _TAILS:
        raise ValueError(f"tails must be one of {_TAILS}, got {tails!r}")
    if not factor >= 0:
        raise ValueError(f"the outlier factor must be >= 0, got {factor}")
    flat, values = _flat_and_sorted(weight)
    n = values.numel()
    low, high = (torch.tensor(f, dtype=values.dtype, device=values.device) for f in _fences(values, factor))
    num_left = int(torch.searchsorted(values, low, right=False))  # weights < low
    num_right = n - int(torch.searchsorted(values, high, right=True))  # weights > high
    num_middle = n - num_left - num_right
    if num_middle == 0:
        raise ValueError(f"no weights lie between the fences ({float(low)}, {float(high)}); use a larger factor")
    middle_cuts, num_windows = _equal_cuts(num_left, num_middle, int(blocks) - 2)
    full_precision = None
    if tails == "gmm":  # each non-empty tail is a group: cut right after the left tail, right before the right one
        cuts = ([num_left] if num_left else []) + middle_cuts + ([n - num_right] if num_right else [])
        num_groups = len(cuts) + 1
    else:  # tails stay at full precision and carry the id of the nearest middle window
        cuts, num_groups = middle_cuts, num_windows
        if num_left or num_right:
            full_precision = ((flat < low) | (flat > high)).reshape(weight.shape)
    index = _rank_windows(flat, values, cuts).reshape(weight.shape)
    return Grouping(weight.shape, index, num_groups, full_precision=full_precision, kind="outlier")


def window_reconstruction_error(weight, grouping, num_components):
    """
    Mean squared error of hard quantization with per-group k-means codebooks.

    Each group's codebook is :func:`~sqs_pyro.guides.kmeans_1d` with
    ``num_components`` clusters on :meth:`Grouping.members`; each weight is
    replaced by the nearest centre of its own group's codebook, full-precision
    weights keep their value. The mean runs over all weights of the tensor.
    This is the yardstick tests and benchmarks use to compare window strategies.

    :param torch.Tensor weight: weights, any shape.
    :param ~sqs_pyro.guides.Grouping grouping: a grouping of ``weight``.
    :param int num_components: ``K``, codebook size per group.
    :rtype: float

    Example::

        >>> w = torch.tensor([0., 0., 1., 1.])
        >>> window_reconstruction_error(w, Grouping.layer(w.shape), 2)
        0.0
    """
    if grouping.shape != weight.shape:
        raise ValueError(f"grouping is for shape {tuple(grouping.shape)}, weight has {tuple(weight.shape)}")
    total = 0.0
    for members in grouping.members(weight.detach()):
        if members.numel() == 0:
            continue
        x = members.to(torch.float64)
        if x.device.type == "cpu":  # order is irrelevant here; pre-sorted input makes kmeans_1d's own sort cheap
            x = torch.from_numpy(np.sort(x.numpy()))
        locs = kmeans_1d(x, num_components).locs  # sorted
        nearest = torch.searchsorted((locs[1:] + locs[:-1]) / 2, x)
        total += float(((x - locs[nearest]) ** 2).sum())
    return total / weight.numel()
