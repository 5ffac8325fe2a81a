"""
Bit packing, vectorized with numpy: unsigned integers of ``b`` bits, boolean
masks, and a *position code* for very sparse (or very dense) masks.

All streams use little-endian bit order: bit ``j`` of byte ``i`` is stream bit
``8 i + j``, and an integer's least significant bit comes first. The last byte
is padded with zeros.

The position code stores the gaps between consecutive ``True`` positions
(``g_0 = p_0``, ``g_i = p_i - p_{i-1} - 1``) with a Rice code of parameter
``k`` (Golomb, 1966; Rice, 1979): the quotient ``g >> k`` in unary and the
remainder in ``k`` bits. For i.i.d. masks the gaps are geometric and a Rice
code with the right ``k`` comes within a few percent of the entropy. The unary
parts and the remainders go to two separate streams so that decoding is
vectorized too: the ``i``-th zero of the unary stream ends the ``i``-th quotient.

Example::

    >>> import numpy as np
    >>> data = pack_uint(np.array([5, 0, 7, 2]), bits=3)
    >>> data.nbytes, unpack_uint(data, bits=3, count=4).tolist()
    (2, [5, 0, 7, 2])
    >>> mask = np.zeros(10_000, dtype=bool); mask[[3, 400, 9000]] = True
    >>> encoding, data, params = encode_mask(mask)
    >>> encoding, data.nbytes < pack_bits(mask).nbytes
    ('positions', True)
    >>> bool((decode_mask(encoding, data, params, mask.size) == mask).all())
    True
"""

import math

import numpy as np

__all__ = [
    "MASK_ENCODINGS",
    "decode_mask",
    "decode_positions",
    "encode_mask",
    "encode_positions",
    "mask_encoding_sizes",
    "pack_bits",
    "pack_uint",
    "unpack_bits",
    "unpack_uint",
]

MAX_BITS = 63
_CHUNK = 1 << 18  # elements per chunk; a multiple of 8, so chunks start on byte boundaries
MASK_ENCODINGS = ("bitmap", "positions", "positions_inverted")


def _numpy(x):
    if hasattr(x, "detach"):  # a torch tensor
        x = x.detach().cpu().numpy()
    return np.asarray(x)


def _word_dtype(bits):
    for dtype in ("<u2", "<u4", "<u8"):
        if bits <= 8 * np.dtype(dtype).itemsize:
            return np.dtype(dtype)


def _check_bits(bits):
    if not (isinstance(bits, (int, np.integer)) and 1 <= bits <= MAX_BITS):
        raise ValueError(f"bits must be an int in [1, {MAX_BITS}], got {bits!r}")
    return int(bits)


def packed_nbytes(count, bits):
    """Bytes taken by ``count`` integers of ``bits`` bits."""
    return (count * bits + 7) // 8


def pack_uint(values, bits):
    """Pack non-negative integers ``< 2**bits`` into a ``uint8`` array of ``ceil(n bits / 8)`` bytes."""
    bits = _check_bits(bits)
    values = _numpy(values).reshape(-1)
    if values.size and not np.issubdtype(values.dtype, np.integer):
        raise ValueError(f"pack_uint needs integers, got dtype {values.dtype}")
    if values.size and (int(values.min()) < 0 or int(values.max()) >= 1 << bits):
        raise ValueError(f"values must lie in [0, 2**{bits}), got range [{int(values.min())}, {int(values.max())}]")
    if bits in (8, 16, 32):  # whole bytes: no bit shuffling needed
        return values.astype(f"<u{bits // 8}").view(np.uint8)
    word = _word_dtype(bits)
    out = np.empty(packed_nbytes(values.size, bits), dtype=np.uint8)
    for start in range(0, values.size, _CHUNK):
        chunk = values[start : start + _CHUNK].astype(word)
        matrix = np.unpackbits(chunk.view(np.uint8).reshape(-1, word.itemsize), axis=1, count=bits, bitorder="little")
        packed = np.packbits(matrix.reshape(-1), bitorder="little")
        offset = start * bits // 8
        out[offset : offset + packed.size] = packed
    return out


def unpack_uint(data, bits, count):
    """Inverse of :func:`pack_uint`: ``count`` integers (``int64``)."""
    bits = _check_bits(bits)
    data = _numpy(data).reshape(-1)
    if data.dtype != np.uint8:
        raise ValueError(f"packed data must be uint8, got {data.dtype}")
    if data.size < packed_nbytes(count, bits):
        raise ValueError(f"{count} values of {bits} bits need {packed_nbytes(count, bits)} bytes, got {data.size}")
    if bits in (8, 16, 32):
        return data[: count * bits // 8].view(f"<u{bits // 8}").astype(np.int64)
    word = _word_dtype(bits)
    out = np.empty(count, dtype=np.int64)
    for start in range(0, count, _CHUNK):
        n = min(_CHUNK, count - start)
        offset = start * bits // 8
        stream = np.unpackbits(data[offset : offset + packed_nbytes(n, bits)], count=n * bits, bitorder="little")
        packed = np.packbits(stream.reshape(n, bits), axis=1, bitorder="little")  # (n, ceil(bits / 8))
        if packed.shape[1] == 1:
            out[start : start + n] = packed[:, 0]
            continue
        if packed.shape[1] != word.itemsize:
            packed = np.concatenate([packed, np.zeros((n, word.itemsize - packed.shape[1]), np.uint8)], axis=1)
        out[start : start + n] = packed.view(word).reshape(n)
    return out


def pack_bits(mask):
    """One bit per element of a boolean array (flattened in row-major order)."""
    return np.packbits(_numpy(mask).reshape(-1).astype(bool), bitorder="little")


def unpack_bits(data, count):
    """Inverse of :func:`pack_bits`: a flat boolean array of ``count`` elements."""
    data = _numpy(data).reshape(-1)
    if data.size < (count + 7) // 8:
        raise ValueError(f"{count} bits need {(count + 7) // 8} bytes, got {data.size}")
    return np.unpackbits(data, count=count, bitorder="little").astype(bool)


def _gaps(positions):
    gaps = np.diff(positions, prepend=positions.dtype.type(-1))
    gaps -= 1
    return gaps


def _rice_nbytes(gaps, k):
    unary_bits = int((gaps >> k).sum()) + gaps.size
    return (unary_bits + 7) // 8 + packed_nbytes(gaps.size, k)


def _best_k(gaps):
    """The Rice parameter with the shortest code, and that length in bytes."""
    if gaps.size == 0:
        return 0, 0
    # for geometric gaps of mean m the best k is near log2(m ln 2) (Gallager & van Voorhis, 1975)
    guess = int(round(math.log2(max(1.0, float(gaps.mean()) * math.log(2)))))
    top = min(MAX_BITS, 8 * gaps.itemsize - 1, guess + 2)  # shifts past the word width are undefined
    sizes = {k: _rice_nbytes(gaps, k) for k in range(max(0, min(guess - 1, top - 1)), top)}
    k = min(sizes, key=lambda k: (sizes[k], k))
    return k, sizes[k]


def encode_positions(positions, k=None):
    """
    Rice-code strictly increasing non-negative ``positions`` (with the best
    parameter ``k`` unless given).

    :returns: ``(data, params)`` with ``params = {"k", "count", "unary_bytes"}``.
    """
    positions = _numpy(positions).reshape(-1).astype(np.int64)
    gaps = _gaps(positions)
    if gaps.size and int(gaps.min()) < 0:
        raise ValueError("positions must be strictly increasing and non-negative")
    if k is None:
        k, _ = _best_k(gaps)
    quotients = gaps >> k
    unary = np.ones(int(quotients.sum()) + gaps.size, dtype=np.uint8)
    unary[np.cumsum(quotients + 1) - 1] = 0  # the terminator of each quotient
    unary = np.packbits(unary, bitorder="little")
    rest = pack_uint(gaps & ((1 << k) - 1), k) if k else np.zeros(0, dtype=np.uint8)
    params = {"k": k, "count": int(gaps.size), "unary_bytes": int(unary.size)}
    return np.concatenate([unary, rest]), params


def decode_positions(data, params):
    """Inverse of :func:`encode_positions`."""
    data = _numpy(data).reshape(-1)
    k, count, unary_bytes = (params[key] for key in ("k", "count", "unary_bytes"))
    for name, v, hi in (("k", k, 62), ("count", count, 8 * data.size), ("unary_bytes", unary_bytes, data.size)):
        if not isinstance(v, (int, np.integer)) or isinstance(v, bool) or not 0 <= v <= hi:
            raise ValueError(f"position code parameter {name} = {v!r} is not an integer in [0, {hi}]")
    k, count, unary_bytes = int(k), int(count), int(unary_bytes)
    if count > 8 * unary_bytes:  # every position needs at least its unary terminator bit
        raise ValueError(f"{count} positions cannot fit in {unary_bytes} bytes of unary code")
    if data.size != unary_bytes + (packed_nbytes(count, k) if k else 0):
        raise ValueError(f"position code of {count} positions has {data.size} bytes, "
                         f"expected {unary_bytes} + remainders")
    ends = np.flatnonzero(np.unpackbits(data[:unary_bytes], bitorder="little") == 0)[:count]
    if ends.size < count:
        raise ValueError(f"position code ends after {ends.size} of {count} positions")
    gaps = (np.diff(ends, prepend=-1) - 1) << k
    if k:
        gaps |= unpack_uint(data[unary_bytes:], k, count)
    return np.cumsum(gaps + 1) - 1


def _positions(flat, value):
    dtype = np.int32 if flat.size < 2**31 else np.int64
    return np.flatnonzero(flat == value).astype(dtype, copy=False)


def _candidates(flat):
    """``encoding -> (bytes, Rice k)`` (the inverted code only where most entries are True)."""
    ones = int(np.count_nonzero(flat))
    sizes = {"bitmap": ((flat.size + 7) // 8, None)}
    k, nbytes = _best_k(_gaps(_positions(flat, True)))
    sizes["positions"] = (nbytes, k)
    if ones > flat.size // 2:
        k, nbytes = _best_k(_gaps(_positions(flat, False)))
        sizes["positions_inverted"] = (nbytes, k)
    return sizes


def mask_encoding_sizes(mask):
    """Bytes each of :data:`MASK_ENCODINGS` would take for a boolean array (the
    inverted position code is only sized when most entries are ``True``)."""
    return {e: nbytes for e, (nbytes, _) in _candidates(_numpy(mask).reshape(-1).astype(bool)).items()}


def encode_mask(mask, encoding=None):
    """
    Encode a boolean array with the cheapest of :data:`MASK_ENCODINGS` (or the
    one given): a bitmap, the Rice-coded positions of the ``True`` entries, or
    those of the ``False`` entries.

    :returns: ``(encoding, data, params)``.
    """
    flat = _numpy(mask).reshape(-1).astype(bool)
    k = None
    if encoding is None:
        sizes = _candidates(flat)
        encoding = min(sizes, key=lambda e: (sizes[e][0], MASK_ENCODINGS.index(e)))  # ties: bitmap first
        k = sizes[encoding][1]
    if encoding == "bitmap":
        return encoding, pack_bits(flat), {}
    if encoding in ("positions", "positions_inverted"):
        return (encoding, *encode_positions(_positions(flat, encoding == "positions"), k))
    raise ValueError(f"unknown mask encoding {encoding!r}; expected one of {MASK_ENCODINGS}")


def decode_mask(encoding, data, params, numel):
    """Inverse of :func:`encode_mask`: a flat boolean array of ``numel`` elements."""
    if encoding == "bitmap":
        if _numpy(data).size != (numel + 7) // 8:
            raise ValueError(f"bitmap of {numel} bits has {_numpy(data).size} bytes")
        return unpack_bits(data, numel)
    if encoding not in MASK_ENCODINGS:
        raise ValueError(f"unknown mask encoding {encoding!r}; expected one of {MASK_ENCODINGS}")
    if not isinstance(params, dict):
        raise ValueError("position code parameters are not a mapping")
    if isinstance(params.get("k"), int) and not isinstance(params["k"], bool) and params["k"] > max(1, int(numel).bit_length()):
        raise ValueError(f"Rice parameter k = {params['k']} is too large for a mask of {numel} elements")
    positions = decode_positions(data, params)
    if positions.size and (int(positions[0]) < 0 or int(positions[-1]) >= numel or (np.diff(positions) <= 0).any()):
        raise ValueError(f"position code does not give increasing positions inside a mask of {numel} elements")
    flat = np.zeros(numel, dtype=bool)
    flat[positions] = True
    return ~flat if encoding == "positions_inverted" else flat
