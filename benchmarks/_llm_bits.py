"""
Honest bits of the LLM baselines' compressed matrices: every stored bit counted
(codes, scales, zero points, masks, kept values), none of the "4-bit" shorthand.

A group-quantized matrix (GPTQ, AutoRound, HQQ) of shape ``(rows, cols)``
with ``b``-bit codes and groups of ``g`` consecutive input columns stores, per
row and group, one scale and (asymmetric) one zero point:

* codes: ``rows x cols x b`` bits;
* scales: ``rows x ceil(cols / g)`` values (counted at fp16, the storage dtype
  of these libraries' exports);
* zero points: an integer in ``[0, 2^b)`` for GPTQ / AutoRound (``b`` bits),
  a float for HQQ (16 bits), none for a symmetric grid.

So GPTQ w4 g64 asymmetric is ``4 + (16 + 4) / 64 = 4.3125`` bits per weight
and HQQ w4 g64 ``4 + 32 / 64 = 4.5``. A sparse matrix also pays a 1-bit mask per
weight and stores codes (or values) for its nonzeros only; a dense one pays no
mask bits. When the mask is dearer than coding the zeros in place (a
quantized matrix below ``1 / b`` sparsity), the dense layout is counted.

Example::

    >>> layer = group_quantized((576, 576), bits=4, group_size=64)
    >>> layer.bits_per_weight
    4.3125
    >>> sparse_values((576, 576), nnz=576 * 288).bits_per_weight   # 50% sparse, fp16 values
    9.0
    >>> round(bits_per_weight([layer, group_quantized((1536, 576), bits=4, group_size=64)]), 4)
    4.3125
"""

import dataclasses
import math

__all__ = ["LayerBits", "bits_per_weight", "dense_values", "group_quantized", "sparse_values"]

FP16 = 16


@dataclasses.dataclass
class LayerBits:
    """``parts``: ``name -> bits`` of everything stored for a matrix of ``numel`` weights."""

    shape: tuple
    parts: dict

    @property
    def numel(self):
        return math.prod(self.shape)

    @property
    def total_bits(self):
        return sum(self.parts.values())

    @property
    def bits_per_weight(self):
        return self.total_bits / self.numel

    def to_dict(self):
        return {"shape": list(self.shape), "parts": dict(self.parts), "bits_per_weight": self.bits_per_weight}


def num_groups(shape, group_size):
    """Groups of ``group_size`` consecutive input columns per row (the last one may be shorter)."""
    rows, cols = shape
    return rows * math.ceil(cols / group_size)


def group_quantized(shape, bits, group_size, *, scale_bits=FP16, zero_bits=None, nnz=None):
    """
    A ``bits``-bit group-quantized ``(rows, cols)`` matrix.

    :param int zero_bits: bits of one zero point; ``None`` = ``bits`` (integer
        zero point, GPTQ / AutoRound asymmetric), ``16`` for HQQ's float zeros,
        ``0`` for a symmetric grid.
    :param int nnz: nonzeros of a pruned matrix (``None``: dense, no mask).
    """
    shape = tuple(int(s) for s in shape)
    numel = math.prod(shape)
    groups = num_groups(shape, group_size)
    zero_bits = bits if zero_bits is None else zero_bits
    parts = {"codes": numel * bits, "scales": groups * scale_bits, "zero_points": groups * zero_bits}
    if nnz is not None and numel + nnz * bits < numel * bits:
        parts.update(codes=nnz * bits, mask=numel)
    return LayerBits(shape, parts)


def sparse_values(shape, nnz, *, value_bits=FP16):
    """A pruned matrix whose kept weights are stored as ``value_bits`` floats, with a 1-bit mask."""
    shape = tuple(int(s) for s in shape)
    return LayerBits(shape, {"values": int(nnz) * value_bits, "mask": math.prod(shape)})


def dense_values(shape, *, value_bits=FP16):
    """A matrix stored dense (no mask, every weight a ``value_bits`` float)."""
    shape = tuple(int(s) for s in shape)
    return LayerBits(shape, {"values": math.prod(shape) * value_bits})


def bits_per_weight(layers):
    """Total stored bits over total weights of several matrices."""
    layers = list(layers)
    return sum(layer.total_bits for layer in layers) / sum(layer.numel for layer in layers)


def parts_per_weight(layers):
    """``part -> bits per weight`` summed over several matrices (how the total splits)."""
    layers = list(layers)
    numel = sum(layer.numel for layer in layers)
    out = {}
    for layer in layers:
        for name, b in layer.parts.items():
            out[name] = out.get(name, 0) + b
    return {name: b / numel for name, b in out.items()}
