import numpy as np
import pytest

from sqs_pyro.export.bitpack import (
    decode_mask,
    decode_positions,
    encode_mask,
    encode_positions,
    mask_encoding_sizes,
    pack_bits,
    pack_uint,
    unpack_bits,
    unpack_uint,
)


@pytest.mark.parametrize("bits", list(range(1, 17)) + [20, 31, 40])
@pytest.mark.parametrize("count", [0, 1, 7, 8, 13, 1001])
def test_uint_round_trip(bits, count):
    rng = np.random.default_rng(bits * 1000 + count)
    values = rng.integers(0, 1 << bits, size=count)
    if count:
        values[0] = (1 << bits) - 1  # the extremes survive
        values[-1] = 0
    data = pack_uint(values, bits)
    assert data.dtype == np.uint8 and data.size == (count * bits + 7) // 8
    np.testing.assert_array_equal(unpack_uint(data, bits, count), values)


def test_uint_round_trip_across_chunks():
    values = np.random.default_rng(0).integers(0, 1 << 11, size=(1 << 18) * 2 + 5)
    np.testing.assert_array_equal(unpack_uint(pack_uint(values, 11), 11, values.size), values)


def test_uint_rejects_bad_input():
    with pytest.raises(ValueError, match=r"\[0, 2\*\*3\)"):
        pack_uint(np.array([8]), 3)
    with pytest.raises(ValueError, match="bits"):
        pack_uint(np.array([1]), 0)
    with pytest.raises(ValueError, match="need"):
        unpack_uint(np.zeros(1, dtype=np.uint8), 5, 4)


@pytest.mark.parametrize("count", [0, 1, 9, 64, 1003])
def test_bits_round_trip(count):
    mask = np.random.default_rng(count).random(count) < 0.3
    data = pack_bits(mask)
    assert data.size == (count + 7) // 8
    np.testing.assert_array_equal(unpack_bits(data, count), mask)


@pytest.mark.parametrize("density", [0.0, 1e-4, 0.01, 0.3, 0.99, 1.0])
@pytest.mark.parametrize("count", [0, 1, 17, 20_000])
def test_mask_round_trip_every_encoding(density, count):
    mask = np.random.default_rng(count).random(count) < density
    sizes = mask_encoding_sizes(mask)
    for encoding in ("bitmap", "positions", "positions_inverted"):
        enc, data, params = encode_mask(mask, encoding)
        assert enc == encoding
        np.testing.assert_array_equal(decode_mask(enc, data, params, count), mask)
        if encoding != "positions_inverted" or mask.sum() > count // 2:
            assert data.size == sizes[encoding]


def test_positions_round_trip_with_large_gaps():
    positions = np.array([0, 1, 2, 1_000_000, 1_000_001, 5_000_000_000])
    data, params = encode_positions(positions)
    np.testing.assert_array_equal(decode_positions(data, params), positions)


def test_cheapest_mask_encoding_is_picked():
    rng = np.random.default_rng(0)
    sparse = rng.random(100_000) < 0.002
    enc, data, _ = encode_mask(sparse)
    assert enc == "positions" and data.size < pack_bits(sparse).size / 5
    dense = ~sparse
    enc, data, _ = encode_mask(dense)
    assert enc == "positions_inverted" and data.size < pack_bits(dense).size / 5
    half = rng.random(100_000) < 0.5
    assert encode_mask(half)[0] == "bitmap"
    # a Rice code of i.i.d. gaps comes close to the entropy of the mask
    p = sparse.mean()
    entropy_bytes = sparse.size * -(p * np.log2(p) + (1 - p) * np.log2(1 - p)) / 8
    assert encode_mask(sparse)[1].size < 1.1 * entropy_bytes


def test_all_false_and_all_true_masks_cost_nothing():
    assert encode_mask(np.zeros(1000, dtype=bool))[1].size == 0
    assert encode_mask(np.ones(1000, dtype=bool))[1].size == 0


def test_corrupt_position_code_is_detected():
    mask = np.zeros(1000, dtype=bool)
    mask[[5, 500]] = True
    enc, data, params = encode_mask(mask, "positions")
    with pytest.raises(ValueError):
        decode_mask(enc, data, params, 100)  # points past the end
    with pytest.raises(ValueError):
        decode_mask(enc, data[:-1], params, 1000)
