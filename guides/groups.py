"""
Groups: which weights of a compressed tensor share one Gaussian mixture.

A :class:`Grouping` partitions the weights of one site into ``G`` groups. Each
group has its own codebook ``mu_g``, stds ``sigma_g`` and mixing weights
``pi_g`` in the guide. A whole layer is one group; windows (method.md §5) are
several. The guide only ever calls :meth:`Grouping.gather` and
:meth:`Grouping.members`, so new window strategies slot in without touching it.

Example::

    >>> import torch
    >>> g = Grouping.layer(torch.Size([3, 2]))
    >>> g.gather(torch.arange(4.).reshape(1, 4)).shape
    torch.Size([1, 1, 4])
"""

import torch


class Grouping:
    """
    A partition of a weight tensor of shape ``shape`` into ``num_groups`` groups.

    :param torch.Size shape: shape of the weight tensor.
    :param torch.Tensor index: long tensor of ``shape`` with the group of each
        weight, or ``None`` when the whole tensor is one group.
    :param int num_groups: number of groups ``G``.
    :param torch.Tensor full_precision: optional bool tensor of ``shape``; weights
        marked ``True`` are kept at full precision (not quantized, not pruned).
    :param str kind: a label for reports (``"layer"``, ``"equal"``, ``"outlier"``).
    """

    def __init__(self, shape, index=None, num_groups=1, full_precision=None, kind="layer"):
        self.shape = torch.Size(shape)
        if index is not None:
            if index.shape != self.shape:
                raise ValueError(f"group index has shape {tuple(index.shape)}, expected {tuple(self.shape)}")
            index = index.long()
        elif num_groups != 1:
            raise ValueError("a grouping without an index has exactly one group")
        self.index = index
        self.num_groups = int(num_groups)
        self.full_precision = full_precision
        self.kind = kind

    @classmethod
    def layer(cls, shape):
        """The whole tensor is one group."""
        return cls(shape)

    def gather(self, param):
        """
        Map a per-group parameter of shape ``(G, K)`` to one broadcastable
        against ``shape + (K,)``.
        """
        if self.index is None:
            return param.reshape((1,) * len(self.shape) + param.shape[-1:])
        return param[self.index]

    def members(self, weight):
        """The weights of each group (1-d tensors), in group order, excluding full-precision ones."""
        keep = None if self.full_precision is None else ~self.full_precision
        if self.index is None:
            return [weight.reshape(-1) if keep is None else weight[keep]]
        flat_w, flat_i = weight.reshape(-1), self.index.reshape(-1)
        if keep is not None:
            flat_w, flat_i = flat_w[keep.reshape(-1)], flat_i[keep.reshape(-1)]
        order = torch.argsort(flat_i, stable=True)
        counts = torch.bincount(flat_i, minlength=self.num_groups).tolist()
        return list(torch.split(flat_w[order], counts))

    def __repr__(self):
        return f"Grouping(kind={self.kind!r}, shape={tuple(self.shape)}, num_groups={self.num_groups})"


def build_grouping(weight, settings):
    """
    The grouping a :class:`~sqs_pyro.PriorSettings` asks for: ``window="layer"``,
    ``"equal"`` or ``"outlier"`` (method.md §5).
    """
    if settings.window == "layer":
        return Grouping.layer(weight.shape)
    from .windows import equal_windows, outlier_windows

    if settings.window == "equal":
        return equal_windows(weight, settings.blocks)
    if settings.window == "outlier":
        return outlier_windows(weight, settings.blocks, settings.outlier_factor, tails=settings.tails)
    raise ValueError(f"unknown window strategy {settings.window!r}: use 'layer', 'equal' or 'outlier'")
