import gzip
import logging

import numpy as np
import pytest
import torch

from sqs_pyro.data.fashion_mnist import (
    IdxFormatError,
    fashion_mnist_available,
    load_fashion_mnist,
    load_image_data,
    read_idx,
)

needs_fashion_mnist = pytest.mark.skipif(
    not fashion_mnist_available(), reason="Fashion-MNIST not installed (apt-get install dataset-fashion-mnist)"
)


def _write_idx(path, array, type_code=0x08):
    header = bytes([0, 0, type_code, array.ndim]) + np.array(array.shape, dtype=">u4").tobytes()
    with gzip.open(path, "wb") as f:
        f.write(header + array.astype(">u1").tobytes())


def _fake_root(tmp_path, n=5):
    rng = np.random.default_rng(0)
    for prefix in ("train", "t10k"):
        _write_idx(tmp_path / f"{prefix}-images-idx3-ubyte.gz", rng.integers(0, 256, (n, 28, 28)))
        _write_idx(tmp_path / f"{prefix}-labels-idx1-ubyte.gz", rng.integers(0, 10, n))
    return tmp_path


@needs_fashion_mnist
def test_real_shapes_and_labels():
    test = load_fashion_mnist(train=False)
    x, y = test.tensors
    assert x.shape == (10000, 1, 28, 28) and x.dtype == torch.float32
    assert y.shape == (10000,) and y.dtype == torch.int64
    assert y.min() == 0 and y.max() == 9
    assert torch.equal(torch.bincount(y), torch.full((10,), 1000))
    train, test2, info = load_image_data("fashion-mnist")
    assert len(train) == 60000 and len(test2) == 10000
    assert info["name"] == "fashion-mnist" and not info["fallback"]
    assert info["num_classes"] == 10 and info["input_shape"] == (1, 28, 28)
    xt = train.tensors[0]
    assert abs(xt.mean().item()) < 1e-2 and abs(xt.std().item() - 1) < 1e-2  # normalized with train stats


def test_root_override_and_env_var(tmp_path, monkeypatch):
    root = _fake_root(tmp_path)
    ds = load_fashion_mnist(root, train=True)
    assert ds.tensors[0].shape == (5, 1, 28, 28) and ds.tensors[1].dtype == torch.int64
    monkeypatch.setenv("SQS_FASHION_MNIST", str(root))
    assert len(load_fashion_mnist(train=False)) == 5


@pytest.mark.parametrize(
    "corrupt, match",
    [
        (lambda raw: b"\x00\x00\x42\x03" + raw[4:], "magic"),  # unknown type code
        (lambda raw: raw[:-10], "holds"),  # truncated pixels
        (lambda raw: raw[:4].replace(b"\x03", b"\x02", 1) + raw[4:], "dimensions"),
    ],
)
def test_corrupted_idx_raises_clear_error(tmp_path, corrupt, match):
    root = _fake_root(tmp_path)
    path = root / "train-images-idx3-ubyte.gz"
    raw = gzip.decompress(path.read_bytes())
    path.write_bytes(gzip.compress(corrupt(raw)))
    with pytest.raises(IdxFormatError, match=match):
        load_fashion_mnist(root, train=True)


def test_not_gzip_raises_clear_error(tmp_path):
    root = _fake_root(tmp_path)
    (root / "t10k-labels-idx1-ubyte.gz").write_bytes(b"this is not a gzip file")
    with pytest.raises(IdxFormatError, match="cannot read"):
        load_fashion_mnist(root, train=False)


def test_read_idx_round_trip(tmp_path):
    a = np.arange(24).reshape(2, 3, 4)
    _write_idx(tmp_path / "a.gz", a)
    np.testing.assert_array_equal(read_idx(tmp_path / "a.gz", ndim=3), a)


def test_fallback_to_digits(tmp_path, caplog):
    with caplog.at_level(logging.WARNING):
        train, test, info = load_image_data("fashion-mnist", root=tmp_path / "missing")
    assert "apt-get install dataset-fashion-mnist" in caplog.text
    assert info["name"] == "digits" and info["fallback"]
    assert info["input_shape"] == (1, 28, 28) and info["num_classes"] == 10
    assert len(train) + len(test) == 1797 and len(test) == info["test_size"]
    assert train.tensors[0].shape[1:] == (1, 28, 28)
    # deterministic split
    train2, test2, _ = load_image_data("digits")
    assert torch.equal(test.tensors[1], test2.tensors[1]) and torch.equal(train.tensors[0], train2.tensors[0])
    with pytest.raises(FileNotFoundError, match="apt-get install"):
        load_image_data("fashion-mnist", root=tmp_path / "missing", fallback=False)
    with pytest.raises(ValueError, match="fashion-mnist"):
        load_image_data("cifar-100")
