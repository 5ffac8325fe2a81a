import json
import os
import struct

import numpy as np
import pytest
import safetensors.torch
import torch

from sqs_pyro.export import (
    FORMAT_VERSION,
    CompressedFileError,
    CompressedTensor,
    load,
    load_into,
    load_state_dict,
    save,
)


def random_compressed(shape, num_codebook, sparsity, outliers=False, seed=0, probs=None):
    g = torch.Generator().manual_seed(seed)
    mask = torch.rand(shape, generator=g) >= sparsity
    nnz = int(mask.sum())
    if probs is None:
        codes = torch.randint(0, num_codebook, (nnz,), generator=g)
    else:
        codes = torch.multinomial(torch.as_tensor(probs, dtype=torch.float), nnz, replacement=True, generator=g)
    codebook = torch.randn(num_codebook, generator=g)
    idx = vals = None
    if outliers:
        free = torch.nonzero(~mask.reshape(-1)).reshape(-1)
        idx = free[torch.randperm(free.numel(), generator=g)[: min(7, free.numel())]]
        vals = torch.randn(idx.numel(), generator=g) * 5
    return CompressedTensor(tuple(shape), codebook, codes, mask, idx, vals)


def assert_same(a, b):
    assert a.shape == b.shape
    assert torch.equal(a.codebook.float(), b.codebook.float())
    assert torch.equal(a.codes, b.codes) and torch.equal(a.mask, b.mask)
    assert (a.outlier_index is None) == (b.outlier_index is None)
    if a.outlier_index is not None:
        assert torch.equal(a.outlier_index, b.outlier_index)
        assert torch.equal(a.outlier_values, b.outlier_values) and a.outlier_values.dtype == b.outlier_values.dtype
    assert torch.equal(a.to_dense(), b.to_dense())


@pytest.mark.parametrize("entropy_coded", [False, True])
@pytest.mark.parametrize("codebook_dtype", ["float16", "float32"])
@pytest.mark.parametrize("outliers", [False, True])
@pytest.mark.parametrize("sparsity", [0.0, 0.5, 0.99])
@pytest.mark.parametrize("num_codebook", [2, 4, 16, 200])
def test_round_trip_is_bit_exact(tmp_path, num_codebook, sparsity, outliers, codebook_dtype, entropy_coded):
    ct = random_compressed((40, 33), num_codebook, sparsity, outliers, seed=num_codebook)
    ct = ct.with_codebook_dtype(codebook_dtype)
    dense = {"bias": torch.randn(40), "steps": torch.tensor(3), "half": torch.randn(3, 2).half()}
    path = tmp_path / "m.safetensors"
    save(path, {"layer.weight": ct}, dense, metadata={"base": "test"}, codebook_dtype=codebook_dtype,
         entropy_coded=entropy_coded)
    compressed, loaded_dense, manifest = load(path)
    assert_same(compressed["layer.weight"], ct)
    assert set(loaded_dense) == set(dense)
    for k, v in dense.items():
        assert loaded_dense[k].dtype == v.dtype and torch.equal(loaded_dense[k], v)
    assert manifest["metadata"] == {"base": "test"} and manifest["format_version"] == FORMAT_VERSION
    assert manifest["entropy_coded"] is entropy_coded
    entry = manifest["compressed"]["layer.weight"]
    assert entry["num_codebook"] == num_codebook and entry["nnz"] == ct.nnz
    assert entry["parts"]["codebook"] == num_codebook * (2 if codebook_dtype == "float16" else 4)
    assert not [f for f in os.listdir(tmp_path) if f != "m.safetensors"]  # no temp files left


def test_codebook_must_be_rounded_first(tmp_path):
    ct = random_compressed((10, 10), 4, 0.5)
    with pytest.raises(ValueError, match="with_codebook_dtype"):
        save(tmp_path / "a.safetensors", {"w": ct}, codebook_dtype="float16")
    save(tmp_path / "a.safetensors", {"w": ct}, codebook_dtype="float16", round_codebook=True)
    rebuilt = load_state_dict(tmp_path / "a.safetensors")["w"]
    assert torch.equal(rebuilt, ct.with_codebook_dtype(torch.float16).to_dense())
    save(tmp_path / "b.safetensors", {"w": ct}, codebook_dtype="float32")  # float32 keeps it as is
    assert torch.equal(load_state_dict(tmp_path / "b.safetensors")["w"], ct.to_dense())


def test_entropy_coding_approaches_the_bound(tmp_path):
    probs = [0.6, 0.2, 0.1, 0.05] + [0.05 / 12] * 12
    ct = random_compressed((1000, 1000), 16, 0.9, probs=probs).with_codebook_dtype("float16")
    plain = save(tmp_path / "plain.safetensors", {"w": ct})
    coded = save(tmp_path / "ec.safetensors", {"w": ct}, entropy_coded=True)
    assert coded["file"]["bytes"] < 0.8 * plain["file"]["bytes"]
    entry = coded["compressed"]["w"]
    assert entry["codes"]["encoding"] == "ans"
    bound_bytes = (entry["entropy_bits"]["codes"] + entry["entropy_bits"]["mask"]) / 8
    coded_bytes = entry["parts"]["codes"] + entry["parts"]["code_counts"] + entry["parts"]["mask"]
    assert bound_bytes <= coded_bytes < 1.02 * bound_bytes
    assert_same(load(tmp_path / "ec.safetensors")[0]["w"], ct)


def test_tied_and_non_contiguous_dense_tensors(tmp_path):
    shared = torch.randn(4, 6)
    dense = {"a": shared, "b": shared, "c": shared.t()}
    save(tmp_path / "t.safetensors", {}, dense)
    loaded = load(tmp_path / "t.safetensors")[1]
    for k, v in dense.items():
        assert torch.equal(loaded[k], v)


def _net(hidden=32):
    torch.manual_seed(0)
    return torch.nn.Sequential(torch.nn.Linear(16, hidden), torch.nn.BatchNorm1d(hidden), torch.nn.ReLU(),
                               torch.nn.Linear(hidden, 4))


def _export(net, path):
    compressed = {}
    with torch.no_grad():
        for name in ("0.weight", "3.weight"):
            w = net.get_parameter(name)
            ct = random_compressed(w.shape, 8, 0.6, outliers=name == "3.weight", seed=len(name))
            ct = ct.with_codebook_dtype("float16")
            w.copy_(ct.to_dense())
            compressed[name] = ct
        net[1].running_mean.normal_()
        net[1].num_batches_tracked.fill_(17)
    dense = {k: v for k, v in net.state_dict().items() if k not in compressed}
    return save(path, compressed, dense, metadata={"arch": "mlp"}, entropy_coded=True)


def test_load_into_reproduces_the_weights_exactly(tmp_path):
    net = _net()
    _export(net, tmp_path / "net.safetensors")
    fresh = _net()
    for p in fresh.parameters():
        torch.nn.init.zeros_(p)
    load_into(fresh, tmp_path / "net.safetensors")
    expected = net.state_dict()
    for k, v in fresh.state_dict().items():
        assert v.dtype == expected[k].dtype and torch.equal(v, expected[k]), k
    x = torch.randn(5, 16)
    net.eval(), fresh.eval()
    assert torch.equal(net(x), fresh(x))


def test_load_into_mismatched_module(tmp_path):
    path = tmp_path / "net.safetensors"
    _export(_net(), path)
    with pytest.raises(CompressedFileError, match=r"shape mismatch: \['0.weight: file \(32, 16\) vs module \(24, 16\)"):
        load_into(_net(hidden=24), path)
    bigger = torch.nn.Sequential(*_net(), torch.nn.Linear(4, 2))
    with pytest.raises(CompressedFileError, match=r"missing in the file: \['4.weight', '4.bias'\]"):
        load_into(bigger, path)
    result = load_into(bigger, path, strict=False)
    assert result.missing_keys == ["4.weight", "4.bias"]
    with pytest.raises(CompressedFileError, match=r"not in the module: \[.*'3.weight'"):
        load_into(torch.nn.Sequential(*list(_net())[:3]), path)


@pytest.fixture
def saved(tmp_path):
    path = tmp_path / "net.safetensors"
    _export(_net(), path)
    return path


def test_truncated_file(saved):
    data = saved.read_bytes()
    for keep in (len(data) - 1, len(data) // 2, 100, 4, 0):
        saved.write_bytes(data[:keep])
        with pytest.raises(CompressedFileError, match=str(saved)):
            load(saved)


def test_every_flipped_byte_is_detected(saved):
    data = saved.read_bytes()
    (header_len,) = struct.unpack("<Q", data[:8])
    rng = np.random.default_rng(0)
    positions = sorted({0, 3, 8, 9, 8 + header_len - 1, 8 + header_len, len(data) - 1}
                       | set(rng.integers(0, len(data), 40).tolist()))
    for pos in positions:
        bad = bytearray(data)
        bad[pos] ^= 0xFF
        saved.write_bytes(bytes(bad))
        with pytest.raises(CompressedFileError, match=str(saved)):
            load(saved)
    saved.write_bytes(data)
    bad = bytearray(data)
    bad[-1] ^= 0x01  # one bit of tensor data
    saved.write_bytes(bytes(bad))
    with pytest.raises(CompressedFileError, match="checksum mismatch"):
        load(saved)


def _rewrite_metadata(path, **changes):
    with __import__("safetensors").safe_open(path, "pt") as f:
        meta = f.metadata()
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    meta.update(changes)
    safetensors.torch.save_file(tensors, path, metadata={k: v for k, v in meta.items() if v is not None})


def test_wrong_format_or_version(saved, tmp_path):
    _rewrite_metadata(saved, format_version=str(FORMAT_VERSION + 1))
    with pytest.raises(CompressedFileError, match=rf"format version '{FORMAT_VERSION + 1}' is not supported"):
        load(saved)
    _rewrite_metadata(saved, format_version=str(FORMAT_VERSION), format="something-else")
    with pytest.raises(CompressedFileError, match="not an sqs-pyro compressed file"):
        load(saved)
    plain = tmp_path / "plain.safetensors"
    safetensors.torch.save_file({"w": torch.zeros(3)}, plain)
    with pytest.raises(CompressedFileError, match="not an sqs-pyro compressed file"):
        load(plain)
    junk = tmp_path / "junk.bin"
    junk.write_bytes(b"PK\x03\x04 this is a zip file, not safetensors")
    with pytest.raises(CompressedFileError, match="not a readable safetensors file"):
        load(junk)


def test_tampered_manifest_is_detected(saved):
    with __import__("safetensors").safe_open(saved, "pt") as f:
        manifest = json.loads(f.metadata()["manifest"])
    manifest["compressed"]["0.weight"]["codebook_dtype"] = "float32"
    _rewrite_metadata(saved, manifest=json.dumps(manifest, sort_keys=True, separators=(",", ":")))
    with pytest.raises(CompressedFileError, match="checksum mismatch"):
        load(saved)


def test_save_rejects_bad_arguments(tmp_path):
    ct = random_compressed((4, 4), 2, 0.5).with_codebook_dtype("float16")
    with pytest.raises(ValueError, match="both compressed and dense"):
        save(tmp_path / "x", {"w": ct}, {"w": torch.zeros(1)})
    with pytest.raises(ValueError, match="codebook_dtype"):
        save(tmp_path / "x", {"w": ct}, codebook_dtype="int8")
    with pytest.raises(ValueError, match="JSON"):
        save(tmp_path / "x", {"w": ct}, metadata={"f": object()})
    with pytest.raises(TypeError, match="CompressedTensor"):
        save(tmp_path / "x", {"w": ct.to_dense()})
    assert not os.listdir(tmp_path)


def test_failed_write_keeps_the_old_file(tmp_path, monkeypatch):
    path = tmp_path / "m.safetensors"
    ct = random_compressed((8, 8), 4, 0.5).with_codebook_dtype("float16")
    save(path, {"w": ct})
    before = path.read_bytes()
    monkeypatch.setattr(safetensors.torch, "save", lambda *args, **kwargs: object())  # f.write fails
    with pytest.raises(TypeError):
        save(path, {"w": ct}, entropy_coded=True)
    assert path.read_bytes() == before and os.listdir(tmp_path) == ["m.safetensors"]


def test_entropy_decoder_mismatch_is_detected(tmp_path, monkeypatch):
    import sqs_pyro.export.format as fmt

    probs = [0.7, 0.1, 0.1, 0.1]
    ct = random_compressed((100, 100), 4, 0.3, probs=probs).with_codebook_dtype("float16")
    path = tmp_path / "ec.safetensors"
    assert save(path, {"w": ct}, entropy_coded=True)["compressed"]["w"]["codes"]["encoding"] == "ans"
    decode = fmt.ans_decode
    monkeypatch.setattr(fmt, "ans_decode", lambda words, counts, n: (decode(words, counts, n) + 1) % len(counts))
    with pytest.raises(CompressedFileError, match="entropy coder mismatch"):
        load(path)
