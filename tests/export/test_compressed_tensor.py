import pytest
import torch

from sqs_pyro.export import CompressedTensor


def _random(shape=(6, 5), num_codebook=4, density=0.5, outliers=0, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(shape, generator=g) < density
    codes = torch.randint(0, num_codebook, (int(mask.sum()),), generator=g)
    codebook = torch.randn(num_codebook, generator=g)
    idx = vals = None
    if outliers:
        free = torch.nonzero(~mask.reshape(-1)).reshape(-1)
        idx = free[torch.randperm(free.numel(), generator=g)[:outliers]]
        vals = torch.randn(idx.numel(), generator=g) * 10
    return CompressedTensor(shape, codebook, codes, mask, idx, vals)


def test_to_dense_places_codes_in_row_major_order_and_outliers():
    ct = _random(outliers=3)
    w = ct.to_dense()
    assert w.shape == ct.shape and w.dtype == torch.float32
    torch.testing.assert_close(w[ct.mask], ct.codebook[ct.codes], rtol=0, atol=0)
    flat = w.reshape(-1)
    assert torch.equal(flat[ct.outlier_index], ct.outlier_values)
    rest = torch.ones(ct.numel, dtype=torch.bool)
    rest[ct.outlier_index] = False
    rest &= ~ct.mask.reshape(-1)
    assert (flat[rest] == 0).all()
    assert ct.to_dense(torch.float64).dtype == torch.float64


@pytest.mark.parametrize("num_codebook,bits", [(1, 1), (2, 1), (3, 2), (4, 2), (5, 3), (16, 4), (17, 5), (256, 8)])
def test_bits_per_code(num_codebook, bits):
    assert _random(num_codebook=num_codebook).bits_per_code == bits


def test_from_dense_round_trip():
    ct = _random(num_codebook=8, outliers=0)
    again = CompressedTensor.from_dense(ct.to_dense(), ct.codebook)
    assert torch.equal(again.to_dense(), ct.to_dense())
    with pytest.raises(ValueError, match="not codebook values"):
        CompressedTensor.from_dense(torch.tensor([0.0, 0.3]), torch.tensor([0.5]))


def test_with_codebook_dtype_rounds_to_float16():
    ct = _random()
    half = ct.with_codebook_dtype(torch.float16)
    assert half.codebook.dtype == torch.float32
    assert torch.equal(half.codebook, ct.codebook.half().float())
    with pytest.raises(ValueError, match="overflows"):
        big = CompressedTensor((1,), torch.tensor([1e6]), torch.tensor([0]), torch.tensor([True]))
        big.with_codebook_dtype("float16")


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(codes=torch.tensor([0, 1])), "codes but the mask keeps"),
        (dict(codes=torch.tensor([0, 9, 1])), r"codes must lie in \[0, 2\)"),
        (dict(codes=torch.tensor([0.0, 1.0, 1.0])), "integer"),
        (dict(mask=torch.ones(2, 2, dtype=torch.bool)), "mask must be a bool tensor of shape"),
        (dict(codebook=torch.tensor([0.0, float("nan")])), "non-finite"),
        (dict(codebook=torch.zeros(0)), "empty"),
        (dict(outlier_index=torch.tensor([1])), "both"),
        (dict(outlier_index=torch.tensor([0]), outlier_values=torch.tensor([3.0])), "overlaps"),
        (dict(outlier_index=torch.tensor([1, 1]), outlier_values=torch.tensor([3.0, 4.0])), "repeated"),
        (dict(outlier_index=torch.tensor([7]), outlier_values=torch.tensor([3.0])), r"\[0, 4\)"),
        (dict(num_components=3), "must divide"),
    ],
)
def test_validation(kwargs, match):
    args = dict(shape=(4,), codebook=torch.tensor([0.5, -0.5]), codes=torch.tensor([0, 1, 1]),
                mask=torch.tensor([True, False, True, True]))
    args.update(kwargs)
    with pytest.raises(ValueError, match=match):
        CompressedTensor(**args)
