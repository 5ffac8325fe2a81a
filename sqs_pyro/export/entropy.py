"""
Entropy coding of i.i.d. symbols under their empirical distribution, with
asymmetric numeral systems (ANS; Duda, 2013) from the ``constriction`` library
(Bamler, 2022).

The model is a categorical distribution built from integer symbol counts. The
counts are stored beside the code, so encoder and decoder build the very same
(deterministically quantized) model and decoding is exact. Under that model a
message of ``n`` symbols costs about ``n H`` bits, ``H`` the empirical entropy,
plus a few bytes of coder state: :func:`entropy_bits` is that bound.

Example::

    >>> import numpy as np
    >>> symbols = np.random.default_rng(0).choice(4, 10_000, p=[0.7, 0.2, 0.05, 0.05])
    >>> counts = np.bincount(symbols, minlength=4)
    >>> words = ans_encode(symbols, counts)
    >>> bool((ans_decode(words, counts, symbols.size) == symbols).all())
    True
    >>> 0.99 < 8 * words.nbytes / entropy_bits(counts) < 1.02
    True

References: J. Duda, *Asymmetric numeral systems*, arXiv 1311.2540;
R. Bamler, *Understanding entropy coding with asymmetric numeral systems
(ANS): a statistician's perspective*, arXiv 2201.01741.
"""

import constriction
import numpy as np

__all__ = ["ans_decode", "ans_encode", "entropy_bits"]


def entropy_bits(counts):
    """``sum_s n_s log2(n / n_s)``: the empirical entropy of a message with these symbol counts, in bits."""
    counts = np.asarray(counts, dtype=np.float64)
    total = counts.sum()
    used = counts[counts > 0]
    return float((used * np.log2(total / used)).sum()) if total else 0.0


def _model(counts):
    counts = np.asarray(counts, dtype=np.float64)
    if counts.ndim != 1 or counts.size == 0 or (counts < 0).any():
        raise ValueError("symbol counts must be a non-empty 1-D array of non-negative numbers")
    if counts.size == 1:  # one symbol carries no information; constriction wants an alphabet of 2
        counts = np.append(counts, 0.0)
    total = counts.sum()
    probabilities = counts / total if total else np.full(counts.size, 1.0 / counts.size)
    return constriction.stream.model.Categorical(probabilities, perfect=False)


def ans_encode(symbols, counts):
    """Encode ``symbols`` (integers in ``[0, len(counts))``) into a ``uint32`` array."""
    symbols = np.asarray(symbols).reshape(-1)
    if symbols.size == 0:
        return np.zeros(0, dtype=np.uint32)
    if int(symbols.min()) < 0 or int(symbols.max()) >= len(counts):
        raise ValueError(f"symbols must lie in [0, {len(counts)})")
    coder = constriction.stream.stack.AnsCoder()
    coder.encode_reverse(symbols.astype(np.int32), _model(counts))
    return coder.get_compressed()


def ans_decode(words, counts, count):
    """Inverse of :func:`ans_encode`: ``count`` symbols (``int64``)."""
    if count == 0:
        return np.zeros(0, dtype=np.int64)
    words = np.ascontiguousarray(words, dtype=np.uint32)
    if words.size and words[-1] == 0:  # the coder's top word is never zero: constriction would reject it
        raise ValueError("entropy-coded stream is corrupted (its last word is zero)")
    try:
        coder = constriction.stream.stack.AnsCoder(words)
        symbols = coder.decode(_model(counts), int(count)).astype(np.int64)
        empty = coder.is_empty()
    except Exception as e:  # noqa: BLE001 - the coder's own errors on corrupted data
        raise ValueError(f"entropy-coded stream is corrupted ({e})") from None
    if not empty:
        raise ValueError("entropy-coded stream has data left after the last symbol")
    return symbols
