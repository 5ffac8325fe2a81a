"""
Fashion-MNIST from the Debian package ``dataset-fashion-mnist``, with a
scikit-learn digits fallback.

Nothing is ever downloaded: the loader reads the gzip idx files that
``apt-get install dataset-fashion-mnist`` puts under
``/usr/share/datasets/fashion-mnist``. Another folder holding the four files
(gzipped or not) can be given as ``root`` or through the environment variable
``SQS_FASHION_MNIST``.

Example::

    >>> train, test, info = load_image_data("fashion-mnist")  # doctest: +SKIP
    >>> info["name"], info["num_classes"], info["input_shape"], info["train_size"]  # doctest: +SKIP
    ('fashion-mnist', 10, (1, 28, 28), 60000)
    >>> x, y = train[0]  # doctest: +SKIP
    >>> x.shape, x.dtype, y.dtype  # doctest: +SKIP
    (torch.Size([1, 28, 28]), torch.float32, torch.int64)
"""

import gzip
import logging
import os
from pathlib import Path

import numpy as np
import torch
from torch.utils.data import TensorDataset

logger = logging.getLogger(__name__)

DEFAULT_ROOT = "/usr/share/datasets/fashion-mnist"
ENV_VAR = "SQS_FASHION_MNIST"
INSTALL_HINT = "apt-get install dataset-fashion-mnist"

#: Per-pixel mean / std of the 60k training images after scaling to [0, 1].
FASHION_MNIST_MEAN = 0.2860
FASHION_MNIST_STD = 0.3530

FASHION_MNIST_CLASSES = (
    "T-shirt/top", "Trouser", "Pullover", "Dress", "Coat",
    "Sandal", "Shirt", "Sneaker", "Bag", "Ankle boot",
)
DIGITS_CLASSES = tuple(str(d) for d in range(10))

_FILES = {
    True: ("train-images-idx3-ubyte", "train-labels-idx1-ubyte"),
    False: ("t10k-images-idx3-ubyte", "t10k-labels-idx1-ubyte"),
}
_SIZES = {True: 60000, False: 10000}

# idx type codes -> big-endian numpy dtypes (http://yann.lecun.com/exdb/mnist/)
_IDX_DTYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}


class IdxFormatError(ValueError):
    """Raised when a file is not a well-formed idx file of the expected shape."""


def read_idx(path, ndim=None):
    """
    Reads an idx file (gzip-compressed when the name ends in ``.gz``).

    :param path: file path.
    :param int ndim: expected number of dimensions (checked when given).
    :returns: a numpy array of the stored dtype and shape.
    :raises IdxFormatError: on a bad magic number, truncated data or a wrong
        number of dimensions.
    """
    path = Path(path)
    opener = gzip.open if path.suffix == ".gz" else open
    try:
        with opener(path, "rb") as f:
            raw = f.read()
    except (OSError, EOFError) as e:  # gzip.BadGzipFile is an OSError
        raise IdxFormatError(f"{path}: cannot read idx file ({e}); reinstall with `{INSTALL_HINT}`") from e
    if len(raw) < 4 or raw[0] != 0 or raw[1] != 0 or raw[2] not in _IDX_DTYPES:
        raise IdxFormatError(f"{path}: bad idx magic number {raw[:4].hex() or '(empty file)'}")
    dims = raw[3]
    if ndim is not None and dims != ndim:
        raise IdxFormatError(f"{path}: expected {ndim} dimensions, the header says {dims}")
    header = 4 + 4 * dims
    if len(raw) < header:
        raise IdxFormatError(f"{path}: truncated header")
    shape = tuple(int(d) for d in np.frombuffer(raw, dtype=">u4", count=dims, offset=4))
    dtype = np.dtype(_IDX_DTYPES[raw[2]])
    expected = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
    if len(raw) - header != expected:
        raise IdxFormatError(
            f"{path}: header announces shape {shape} ({expected} bytes) but the file holds {len(raw) - header} bytes"
        )
    return np.frombuffer(raw, dtype=dtype, offset=header).reshape(shape)


def fashion_mnist_root(root=None):
    """The folder to read: ``root``, else ``$SQS_FASHION_MNIST``, else the Debian path."""
    return Path(root or os.environ.get(ENV_VAR) or DEFAULT_ROOT)


def _find(folder, stem):
    for name in (stem + ".gz", stem):
        if (folder / name).is_file():
            return folder / name
    return None


def fashion_mnist_available(root=None):
    """Whether all four Fashion-MNIST files are present (contents are not checked)."""
    folder = fashion_mnist_root(root)
    return all(_find(folder, stem) is not None for pair in _FILES.values() for stem in pair)


def load_fashion_mnist(root=None, *, train=True):
    """
    Loads the Fashion-MNIST training (60k) or test (10k) split.

    Images are scaled to [0, 1] and normalized with the training-set mean and
    std (:data:`FASHION_MNIST_MEAN`, :data:`FASHION_MNIST_STD`).

    :param root: folder with the idx files (default: ``$SQS_FASHION_MNIST``,
        then ``/usr/share/datasets/fashion-mnist``).
    :param bool train: training split if True, else the test split.
    :returns: ``TensorDataset(images, labels)`` with float32 images of shape
        ``(N, 1, 28, 28)`` and int64 labels in ``0..9``.
    :raises FileNotFoundError: when the files are missing.
    :raises IdxFormatError: when a file is corrupt.
    """
    folder = fashion_mnist_root(root)
    paths = [_find(folder, stem) for stem in _FILES[train]]
    if any(p is None for p in paths):
        missing = [stem for stem, p in zip(_FILES[train], paths) if p is None]
        raise FileNotFoundError(f"Fashion-MNIST files {missing} not found in {folder}; install them with `{INSTALL_HINT}`")
    images = read_idx(paths[0], ndim=3)
    labels = read_idx(paths[1], ndim=1)
    if images.shape[1:] != (28, 28):
        raise IdxFormatError(f"{paths[0]}: expected 28x28 images, got {images.shape[1:]}")
    if images.shape[0] != labels.shape[0]:
        raise IdxFormatError(f"{folder}: {images.shape[0]} images but {labels.shape[0]} labels")
    if labels.size and (labels.min() < 0 or labels.max() > 9):
        raise IdxFormatError(f"{paths[1]}: labels outside 0..9")
    if images.shape[0] != _SIZES[train]:
        logger.warning("%s holds %d images, not the usual %d", paths[0], images.shape[0], _SIZES[train])
    x = torch.from_numpy(images.astype(np.float32) / 255.0).unsqueeze(1)
    x = (x - FASHION_MNIST_MEAN) / FASHION_MNIST_STD
    y = torch.from_numpy(labels.astype(np.int64))
    return TensorDataset(x, y)


def load_digits_28(*, test_fraction=0.2, seed=0):
    """
    scikit-learn's 1,797 8x8 digits as 28x28 images, for smoke runs.

    Each 8x8 image (values 0..16) is upsampled 3x by pixel repetition to
    24x24 and zero-padded by 2 pixels on every side to 1x28x28 (like MNIST,
    whose digits sit in the centre of the frame), scaled to [0, 1] and
    normalized with the training split's mean and std. The split is
    stratified by class and fixed by ``seed``.

    :returns: ``(train, test)`` TensorDatasets.
    """
    try:
        from sklearn.datasets import load_digits
    except ImportError as e:
        raise ImportError("the digits fallback needs scikit-learn (`pip install scikit-learn`)") from e
    digits = load_digits()
    images = digits.images.astype(np.float32) / 16.0
    images = images.repeat(3, axis=1).repeat(3, axis=2)
    images = np.pad(images, ((0, 0), (2, 2), (2, 2)))
    labels = digits.target.astype(np.int64)
    rng = np.random.default_rng(seed)
    test_idx = []
    for c in np.unique(labels):
        idx = rng.permutation(np.flatnonzero(labels == c))
        test_idx.append(idx[: int(round(test_fraction * len(idx)))])
    is_test = np.zeros(len(labels), dtype=bool)
    is_test[np.concatenate(test_idx)] = True
    x_tr, x_te = images[~is_test], images[is_test]
    mean, std = float(x_tr.mean()), float(x_tr.std())

    def to_ds(x, y):
        return TensorDataset(torch.from_numpy((x - mean) / std).unsqueeze(1), torch.from_numpy(y))

    return to_ds(x_tr, labels[~is_test]), to_ds(x_te, labels[is_test])


def load_image_data(name="fashion-mnist", root=None, *, fallback=True):
    """
    Train/test image data for the CNN experiments.

    ``name="fashion-mnist"`` reads Fashion-MNIST; when it is not installed and
    ``fallback`` is true, a warning says so (and how to install it) and
    scikit-learn's digits are returned instead (see :func:`load_digits_28`).
    ``name="digits"`` asks for the digits directly.

    Example::

        >>> train, test, info = load_image_data("digits")
        >>> info["name"], info["input_shape"], info["train_size"] + info["test_size"]
        ('digits', (1, 28, 28), 1797)

    :returns: ``(train, test, info)``, ``info`` a dict with ``name``,
        ``num_classes``, ``input_shape``, ``train_size``, ``test_size``,
        ``classes``, ``source`` and ``fallback`` (True when digits replaced
        the requested data).
    """
    name = name.lower().replace("_", "-")
    if name not in ("fashion-mnist", "digits"):
        raise ValueError(f"unknown image data {name!r}; choose 'fashion-mnist' or 'digits'")
    used_fallback = False
    if name == "fashion-mnist":
        if fashion_mnist_available(root):
            train = load_fashion_mnist(root, train=True)
            test = load_fashion_mnist(root, train=False)
            info = {"name": "fashion-mnist", "classes": FASHION_MNIST_CLASSES, "source": str(fashion_mnist_root(root))}
        elif not fallback:
            raise FileNotFoundError(f"Fashion-MNIST not found in {fashion_mnist_root(root)}; install it with `{INSTALL_HINT}`")
        else:
            logger.warning(
                "Fashion-MNIST not found in %s; falling back to scikit-learn's 8x8 digits (1,797 images, "
                "results are NOT Fashion-MNIST results). Install the real data with `sudo %s`.",
                fashion_mnist_root(root), INSTALL_HINT,
            )
            used_fallback = True
            name = "digits"
    if name == "digits":
        train, test = load_digits_28()
        info = {"name": "digits", "classes": DIGITS_CLASSES, "source": "sklearn.datasets.load_digits"}
    return train, test, {
        "name": info["name"],
        "num_classes": 10,
        "input_shape": tuple(train.tensors[0].shape[1:]),
        "train_size": len(train),
        "test_size": len(test),
        "classes": info["classes"],
        "source": info["source"],
        "fallback": used_fallback,
    }
