"""
One compressed weight tensor: a codebook, the codebook index of every kept
weight, the sparsity mask and (optionally) a few outliers kept verbatim.

This is the greedy MAP weight of docs/method.md §7 in its compressed form. Weight
``i`` (row-major flat index) is

* ``outlier_values[j]`` if ``i == outlier_index[j]``,
* ``codebook[codes[r]]`` if ``mask`` holds its ``r``-th ``True`` at ``i``,
* ``0`` otherwise,

and :meth:`CompressedTensor.to_dense` rebuilds exactly that tensor. The codebook
is flat: with ``G`` groups of ``K`` components it holds ``C = G * K`` values and
the codes index into it directly (``ceil(log2 C)`` bits a code). With
``group_size`` the groups are *positional* (one per run of ``group_size``
consecutive weights in row-major order: an output channel, or a block of its
columns), so a weight's group follows from its position and its code is the
component ``k`` in ``[0, K)`` of its own group (``ceil(log2 K)`` bits):
the weight is ``codebook[(i // group_size) * K + k]``.

Example::

    >>> import torch
    >>> ct = CompressedTensor(
    ...     shape=(2, 3),
    ...     codebook=torch.tensor([-0.5, 0.25]),
    ...     codes=torch.tensor([1, 0, 1]),
    ...     mask=torch.tensor([[True, False, True], [False, True, False]]),
    ... )
    >>> ct.to_dense()
    tensor([[ 0.2500,  0.0000, -0.5000],
            [ 0.0000,  0.2500,  0.0000]])
    >>> ct.nnz, ct.bits_per_code, round(ct.sparsity, 2)
    (3, 1, 0.5)
    >>> torch.equal(CompressedTensor.from_dense(ct.to_dense()).to_dense(), ct.to_dense())
    True
"""

import dataclasses
import math
from typing import Optional

import torch

__all__ = ["CompressedTensor"]


def _fail(msg):
    raise ValueError(f"CompressedTensor: {msg}")


@dataclasses.dataclass(eq=False)
class CompressedTensor:
    """
    :param tuple shape: shape of the dense tensor.
    :param torch.Tensor codebook: ``(C,)`` floating codebook values (finite).
    :param torch.LongTensor codes: ``(nnz,)`` indices into ``codebook``, one per
        ``True`` of ``mask`` in row-major order.
    :param torch.BoolTensor mask: ``shape``; ``False`` = pruned (exact zero).
    :param torch.LongTensor outlier_index: optional ``(m,)`` distinct flat
        indices of weights stored verbatim; disjoint from ``mask``'s ``True`` positions.
    :param torch.Tensor outlier_values: optional ``(m,)`` floating values of the outliers.
    :param int num_components: optional ``K``, the number of components per
        group (defaults to ``C``); used for the paper's compression rate, and
        required with ``group_size``.
    :param int group_size: optional size of positional groups (see above);
        codes are then group-local, in ``[0, K)``.
    """

    shape: tuple
    codebook: torch.Tensor
    codes: torch.Tensor
    mask: torch.Tensor
    outlier_index: Optional[torch.Tensor] = None
    outlier_values: Optional[torch.Tensor] = None
    num_components: Optional[int] = None
    group_size: Optional[int] = None

    def __post_init__(self):
        try:
            self.shape = tuple(int(s) for s in self.shape)
        except (TypeError, ValueError):
            _fail(f"shape must be a tuple of ints, got {self.shape!r}")
        if any(s < 0 for s in self.shape):
            _fail(f"shape has a negative size: {self.shape}")
        for field in ("codebook", "codes", "mask"):
            if not isinstance(getattr(self, field), torch.Tensor):
                _fail(f"{field} must be a torch.Tensor, got {type(getattr(self, field)).__name__}")
        cb, codes, mask = self.codebook, self.codes, self.mask
        if cb.dim() != 1 or not cb.is_floating_point():
            _fail(f"codebook must be a 1-D floating tensor, got dtype {cb.dtype} and shape {tuple(cb.shape)}")
        if cb.numel() == 0:
            _fail("codebook is empty")
        if not torch.isfinite(cb).all():
            _fail("codebook has non-finite values")
        if mask.dtype != torch.bool or tuple(mask.shape) != self.shape:
            _fail(f"mask must be a bool tensor of shape {self.shape}, "
                  f"got dtype {mask.dtype} and shape {tuple(mask.shape)}")
        if codes.dim() != 1 or codes.dtype.is_floating_point or codes.dtype == torch.bool or codes.is_complex():
            _fail(f"codes must be a 1-D integer tensor, got dtype {codes.dtype} and shape {tuple(codes.shape)}")
        self.codes = codes = codes.long()
        nnz = int(mask.sum())
        if codes.numel() != nnz:
            _fail(f"got {codes.numel()} codes but the mask keeps {nnz} weights")
        if self.group_size is not None:
            self.group_size = int(self.group_size)
            if self.num_components is None:
                _fail("group_size needs num_components (K)")
            if self.group_size < 1 or self.numel % self.group_size:
                _fail(f"group_size={self.group_size} does not divide the {self.numel} weights")
            if cb.numel() != self.numel // self.group_size * int(self.num_components):
                _fail(f"{self.numel // self.group_size} groups of {int(self.num_components)} components need "
                      f"{self.numel // self.group_size * int(self.num_components)} codebook values, got {cb.numel()}")
        if nnz and (int(codes.min()) < 0 or int(codes.max()) >= self.num_symbols):
            _fail(f"codes must lie in [0, {self.num_symbols}), got range [{int(codes.min())}, {int(codes.max())}]")
        self._check_outliers()
        if self.num_components is not None:
            self.num_components = int(self.num_components)
            if self.num_components < 1 or cb.numel() % self.num_components:
                _fail(f"num_components={self.num_components} must divide the codebook size {cb.numel()}")

    def _check_outliers(self):
        idx, val = self.outlier_index, self.outlier_values
        if (idx is None) != (val is None):
            _fail("outlier_index and outlier_values must both be given or both be None")
        if idx is None:
            return
        if not (isinstance(idx, torch.Tensor) and isinstance(val, torch.Tensor)):
            _fail("outlier_index and outlier_values must be torch.Tensors")
        if idx.dim() != 1 or idx.dtype.is_floating_point or idx.dtype == torch.bool:
            _fail(f"outlier_index must be a 1-D integer tensor, got dtype {idx.dtype} and shape {tuple(idx.shape)}")
        if val.dim() != 1 or not val.is_floating_point():
            _fail(f"outlier_values must be a 1-D floating tensor, got dtype {val.dtype} and shape {tuple(val.shape)}")
        if idx.numel() != val.numel():
            _fail(f"{idx.numel()} outlier indices but {val.numel()} outlier values")
        self.outlier_index = idx = idx.long()
        if idx.numel():
            if int(idx.min()) < 0 or int(idx.max()) >= self.numel:
                _fail(f"outlier_index must lie in [0, {self.numel})")
            if torch.unique(idx).numel() != idx.numel():
                _fail("outlier_index has repeated indices")
            if self.mask.reshape(-1)[idx.to(self.mask.device)].any():
                _fail("outlier_index overlaps the mask's True positions")

    @property
    def numel(self):
        """Number of weights of the dense tensor."""
        return math.prod(self.shape)

    @property
    def nnz(self):
        """Number of kept (coded) weights."""
        return self.codes.numel()

    @property
    def num_outliers(self):
        return 0 if self.outlier_index is None else self.outlier_index.numel()

    @property
    def sparsity(self):
        """Fraction of pruned weights (outliers count as kept)."""
        return 1.0 - (self.nnz + self.num_outliers) / self.numel if self.numel else 0.0

    @property
    def num_symbols(self):
        """The size of the code alphabet: ``K`` with positional groups, else ``C``."""
        return int(self.num_components) if self.group_size is not None else self.codebook.numel()

    @property
    def bits_per_code(self):
        """Bits of a plain code: ``ceil(log2 K)`` with positional groups, else ``ceil(log2 C)``; at least 1."""
        return max(1, math.ceil(math.log2(self.num_symbols)))

    def codebook_index(self):
        """Index into :attr:`codebook` of every kept weight (the codes, offset by their group's ``g * K``)."""
        if self.group_size is None:
            return self.codes
        position = self.mask.reshape(-1).nonzero().squeeze(1).to(self.codes.device)
        return position // self.group_size * int(self.num_components) + self.codes

    def to_dense(self, dtype=torch.float32):
        """The dense tensor (on the codebook's device): zeros, codebook values, outliers."""
        device = self.codebook.device
        w = torch.zeros(self.shape, dtype=dtype, device=device)
        w.masked_scatter_(self.mask.to(device), self.codebook.to(dtype)[self.codebook_index().to(device)])
        if self.num_outliers:
            w.view(-1)[self.outlier_index.to(device)] = self.outlier_values.to(device=device, dtype=dtype)
        return w

    def with_codebook_dtype(self, dtype):
        """
        A copy whose codebook is rounded to ``dtype`` (e.g. ``torch.float16``, as
        stored in a file) and kept as float32. The greedy weights are then *defined*
        by the rounded codebook: round before evaluating what you will save.
        """
        dtype = getattr(torch, dtype) if isinstance(dtype, str) else dtype
        rounded = self.codebook.to(dtype)
        if not torch.isfinite(rounded).all():
            _fail(f"codebook overflows {dtype}")
        return dataclasses.replace(self, codebook=rounded.to(torch.float32))

    @classmethod
    def from_assignment(cls, codebook, codes, keep, *, codebook_dtype=torch.float32, **kwargs):
        """
        The export of a hard assignment: ``codebook`` (the component locations, any
        shape; stored rounded to ``codebook_dtype``), every weight's code (a tensor
        of the weight's shape) and its ``keep`` mask; the codes of pruned weights
        are dropped. Everything moves to the CPU.

            >>> ct = CompressedTensor.from_assignment(torch.tensor([0.5, -1.0]), torch.tensor([[0, 1], [1, 0]]),
            ...                                       torch.tensor([[True, True], [False, True]]), num_components=2)
            >>> ct.to_dense()
            tensor([[ 0.5000, -1.0000],
                    [ 0.0000,  0.5000]])
        """
        codebook = codebook.detach().reshape(-1).to(codebook_dtype).float()
        return cls(tuple(keep.shape), codebook.cpu(), codes[keep].cpu(), keep.cpu(), **kwargs)

    @classmethod
    def from_dense(cls, weight, codebook=None, **kwargs):
        """
        Compress a dense tensor whose nonzeros all lie on ``codebook`` (default:
        its distinct nonzero values). Exact zeros become pruned weights.
        """
        flat = weight.detach().reshape(-1)
        mask = flat != 0
        values = flat[mask]
        codebook = torch.unique(values) if codebook is None else codebook.detach().reshape(-1)
        if codebook.numel() == 0:
            codebook = torch.zeros(1, dtype=weight.dtype, device=weight.device)
        ordered, order = torch.sort(codebook.to(values.dtype))
        pos = torch.searchsorted(ordered, values).clamp(max=ordered.numel() - 1)
        if not torch.equal(ordered[pos], values):
            raise ValueError("CompressedTensor.from_dense: some nonzero weights are not codebook values")
        return cls(tuple(weight.shape), codebook.float(), order[pos], mask.reshape(weight.shape), **kwargs)
