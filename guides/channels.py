"""
Positional groups: one codebook per output channel, or per block of input columns.

LLM quantizers give each output channel (row of a ``Linear`` weight, output
channel of a convolution) its own quantization grid: GPTQ [1] and AWQ with a
scale per group of 64 or 128 input columns, SqueezeLLM [2] with a 16-entry
lookup table per output channel. Here the same partitions give each group its
own Gaussian mixture (codebook ``mu_g``, ``sigma_g``, ``pi_g``):

- :func:`channel_groups` — one group per row of the weight viewed as
  ``(shape[0], prod(shape[1:]))``: the output channels of ``nn.Linear`` and
  ``nn.Conv*d``. (transformers' ``Conv1D`` stores its weight as ``(in, out)``,
  so there a row is an *input* feature.)
- :func:`column_groups` — one group per (row, block of ``group_size``
  consecutive columns); ``group_size`` must divide the number of columns.

The group of a weight is a function of its position, so the export stores no
group index: a code costs ``ceil(log2 K)`` bits, and the file pays ``G * K``
codebook values (fp16: ``16 G K`` bits).

**Outliers.** With ``outlier_factor`` the weights of a group beyond its own Tukey
fences ``Q1 - f IQR`` and ``Q3 + f IQR`` are kept at full precision
(:attr:`~sqs_pyro.guides.Grouping.full_precision`, the dense-and-sparse split
of SqueezeLLM [2]); they are left out of their group's k-means. The export stores
each as an exact value (the anchor's dtype, e.g. 32 bits) plus its flat position
(``ceil(log2 numel)`` bits), and it is not coded, so it costs about
``32 + log2 numel`` bits instead of ``log2 K``.

Example::

    >>> import torch
    >>> w = torch.randn(4, 8)
    >>> channel_groups(w).num_groups, column_groups(w, 4).index[1].tolist()
    (4, [2, 2, 2, 2, 3, 3, 3, 3])
    >>> w[0, 0] = 100.0
    >>> g = channel_groups(w, outlier_factor=3.0)
    >>> int(g.full_precision.sum()), bool(g.full_precision[0, 0])
    (1, True)

**References**

[1] E. Frantar, S. Ashkboos, T. Hoefler, D. Alistarh, "GPTQ: Accurate Post-Training
    Quantization for Generative Pre-trained Transformers", arXiv:2210.17323 (2022).
[2] S. Kim, C. Hooper, A. Gholami, Z. Dong, X. Li, S. Shen, M. W. Mahoney, K. Keutzer,
    "SqueezeLLM: Dense-and-Sparse Quantization", arXiv:2306.07629 (2023).
"""

import torch

from .groups import Grouping


def _rows_and_columns(shape):
    if len(shape) < 2:
        raise ValueError(f"positional groups need a weight with at least 2 dimensions, got shape {tuple(shape)}")
    rows = int(shape[0])
    return rows, torch.Size(shape).numel() // max(rows, 1)


def _divisors(n, around):
    return sorted((d for d in range(1, n + 1) if n % d == 0), key=lambda d: (abs(d - around), d))[:4]


def group_outliers(matrix, factor):
    """
    The weights beyond their row's Tukey fences ``Q1 - factor * IQR``,
    ``Q3 + factor * IQR`` (quartiles interpolated as :func:`torch.quantile`,
    from one sort along the rows; no size limit).

    :param torch.Tensor matrix: ``(G, n)`` weights, one group a row.
    :rtype: torch.BoolTensor of ``matrix``'s shape
    """
    if not factor >= 0:
        raise ValueError(f"the outlier factor must be >= 0, got {factor}")
    x = matrix.detach()
    x = x if x.dtype in (torch.float32, torch.float64) else x.float()
    values = x.sort(dim=1).values
    n = values.shape[1]

    def quantile(q):
        pos = q * (n - 1)
        lo = int(pos)
        hi = min(lo + 1, n - 1)
        return values[:, lo] + (pos - lo) * (values[:, hi] - values[:, lo])

    q1, q3 = quantile(0.25), quantile(0.75)
    iqr = (q3 - q1).unsqueeze(1)
    return (x < q1.unsqueeze(1) - factor * iqr) | (x > q3.unsqueeze(1) + factor * iqr)


def column_groups(weight, group_size, outlier_factor=None, kind="columns"):
    """
    One group per (row, run of ``group_size`` consecutive columns) of the
    weight viewed as ``(shape[0], prod(shape[1:]))``; group ``g`` is the
    ``g``-th run in row-major order.

    :param torch.Tensor weight: weights, at least 2-d.
    :param int group_size: columns per group; must divide the number of columns.
    :param float outlier_factor: optional fence width in IQRs: weights beyond
        their group's fences stay at full precision (see the module docstring).
    :rtype: ~sqs_pyro.guides.Grouping
    """
    rows, columns = _rows_and_columns(weight.shape)
    if isinstance(group_size, bool) or int(group_size) != group_size or group_size < 1:
        raise ValueError(f"group_size must be a positive integer, got {group_size!r}")
    group_size = int(group_size)
    if columns % group_size:
        raise ValueError(
            f"group_size={group_size} does not divide the {columns} columns of a weight of shape "
            f"{tuple(weight.shape)}: use one of {_divisors(columns, group_size)} (divisors of {columns}), "
            "or window='channel'"
        )
    blocks = columns // group_size
    num_groups = rows * blocks
    col = torch.arange(columns, device=weight.device) // group_size
    index = (torch.arange(rows, device=weight.device).unsqueeze(1) * blocks + col).reshape(weight.shape)
    full_precision = None
    if outlier_factor is not None:
        fp = group_outliers(weight.detach().reshape(num_groups, group_size), outlier_factor)
        full_precision = fp.reshape(weight.shape) if fp.any() else None
    return Grouping(weight.shape, index, num_groups, full_precision=full_precision, kind=kind, group_size=group_size)


def channel_groups(weight, outlier_factor=None):
    """
    One group per output channel: a row of the weight viewed as
    ``(shape[0], prod(shape[1:]))``. Same as :func:`column_groups` with
    ``group_size`` the number of columns.

    :param torch.Tensor weight: weights, at least 2-d.
    :param float outlier_factor: optional fence width in IQRs (see :func:`column_groups`).
    :rtype: ~sqs_pyro.guides.Grouping
    """
    _, columns = _rows_and_columns(weight.shape)
    return column_groups(weight, columns, outlier_factor=outlier_factor, kind="channel")
