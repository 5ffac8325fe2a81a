"""
Groups: which weights of a compressed tensor share one Gaussian mixture.

A :class:`Grouping` partitions the weights of one site into ``G`` groups. Each
group has its own codebook ``mu_g``, stds ``sigma_g`` and mixing weights
``pi_g`` in the guide. A whole layer is one group; windows (docs/method.md §5) are
several; so are the *positional* groupings of LLM quantizers
(:mod:`sqs_pyro.guides.channels`): one group per output channel, or per block of
``group_size`` input columns of each output channel. The guide only ever calls
:meth:`Grouping.gather`, :meth:`Grouping.members` and (positional groupings)
:meth:`Grouping.matrix`, so new window strategies slot in without touching it.

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
    :param str kind: a label for reports (``"layer"``, ``"equal"``, ``"outlier"``,
        ``"channel"``, ``"columns"``).
    :param int group_size: for positional groupings only: the weight, viewed as
        ``(shape[0], prod(shape[1:]))``, is cut into runs of ``group_size``
        consecutive columns of a row, group ``g`` being the ``g``-th run in
        row-major order (so ``G = numel / group_size``). The group of a weight
        is then a function of its position, which the export stores for free.
    """

    def __init__(self, shape, index=None, num_groups=1, full_precision=None, kind="layer", group_size=None):
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
        self.group_size = None if group_size is None else int(group_size)
        if self.group_size is not None and self.group_size * self.num_groups != self.shape.numel():
            raise ValueError(
                f"{self.num_groups} groups of {self.group_size} weights do not cover shape {tuple(self.shape)}")

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

    def matrix(self, weight):
        """
        A positional grouping's weights as a ``(G, group_size)`` matrix (a view
        when ``weight`` is contiguous): row ``g`` holds group ``g``'s weights.
        """
        if self.group_size is None:
            raise ValueError(f"{self!r} is not positional: use members()")
        return weight.reshape(self.num_groups, self.group_size)

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
