import doctest
import json
import math
import os
import struct

import pytest
import torch

import sqs_pyro.export
from sqs_pyro.export import CompressedTensor, load, save, size_report
from sqs_pyro.export import bitpack, compressed_tensor, entropy, format, report


def _ct(shape, k, density, seed=0):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(shape, generator=g) < density
    codes = torch.randint(0, k, (int(mask.sum()),), generator=g)
    return CompressedTensor(shape, torch.arange(k, dtype=torch.float32) - k / 2, codes, mask)


@pytest.mark.parametrize("entropy_coded", [False, True])
def test_reported_bytes_equal_the_file(tmp_path, entropy_coded):
    path = tmp_path / "m.safetensors"
    compressed = {"a": _ct((64, 64), 4, 0.5), "b": _ct((32, 128), 16, 0.25, seed=1)}
    dense = {"bias": torch.zeros(64), "steps": torch.tensor(5), "emb": torch.zeros(10, 8, dtype=torch.float16)}
    manifest = save(path, compressed, dense, entropy_coded=entropy_coded)
    size = os.path.getsize(path)
    for source in (path, str(path), manifest, load(path)[2]):
        r = size_report(source)
        assert r.file_bytes == size
    data = path.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    assert r.overhead_bytes == 8 + header_len  # every other byte is accounted to a tensor
    assert r.stored_bytes == sum(l.stored_bytes for l in r.layers.values())
    assert r.dense_bytes == 64 * 4 + 8 + 80 * 2
    assert r.model_fp32_bytes == 4 * (64 * 64 + 32 * 128 + 64 + 80) + 8
    assert r.model_fp16_bytes == 2 * (64 * 64 + 32 * 128 + 64 + 80) + 8
    assert r.model_cr == pytest.approx(r.model_fp32_bytes / size)
    a = r.layers["a"]
    assert a.bits_per_weight == pytest.approx(8 * a.stored_bytes / 4096)
    assert a.paper_cr == pytest.approx(32 / (2 * a.nnz / 4096))
    assert r.layers["b"].paper_cr == pytest.approx(32 / (4 * r.layers["b"].nnz / 4096))
    assert r.paper_cr == pytest.approx(32 * 8192 / (2 * a.nnz + 4 * r.layers["b"].nnz))
    assert a.dense_fp32_bytes == 4 * 4096 and a.dense_fp16_bytes == 2 * 4096
    assert 0 < r.entropy_bound_bytes <= r.coded_bytes
    json.dumps(r.to_dict())
    md = r.to_markdown()
    assert "| a | 64x64 | 4 |" in md and f"{size:,} B" in md


def test_paper_cr_matches_the_paper_settings(tmp_path):
    # ResNet-56 setting: K=4, 50% nonzero -> 32x; BERT setting: K=16, 25% nonzero -> 32x
    mask = torch.zeros(1000, dtype=torch.bool)
    mask[::2] = True
    k4 = CompressedTensor((1000,), torch.tensor([-1.0, -0.5, 0.5, 1.0]), torch.zeros(500, dtype=torch.long), mask)
    mask = torch.zeros(1000, dtype=torch.bool)
    mask[::4] = True
    k16 = CompressedTensor((1000,), torch.arange(16.0), torch.zeros(250, dtype=torch.long), mask)
    r = size_report(save(tmp_path / "x", {"k4": k4, "k16": k16}))
    assert r.layers["k4"].paper_cr == pytest.approx(32)
    assert r.layers["k16"].paper_cr == pytest.approx(32)
    assert r.paper_cr == pytest.approx(32)
    mask = torch.tensor([True, False, False])
    one = CompressedTensor((3,), torch.tensor([1.0]), torch.zeros(1, dtype=torch.long), mask)
    assert size_report(save(tmp_path / "y", {"one": one})).paper_cr is None  # log2 K = 0: infinite
    assert math.isfinite(size_report(tmp_path / "y").bits_per_weight)


@pytest.mark.parametrize("module", [sqs_pyro.export, bitpack, compressed_tensor, entropy, format, report])
def test_docstring_examples(module):
    result = doctest.testmod(module, optionflags=doctest.NORMALIZE_WHITESPACE)
    assert result.attempted > 0 and result.failed == 0
