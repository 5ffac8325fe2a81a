"""
The compressed file: one safetensors file that holds a sparse, quantized
network as it is on disk, not dense floats.

Layout
------
* Every compressed tensor is stored under its own name as a single ``uint8``
  blob, the concatenation of its parts in the order of :data:`PARTS`:
  ``codebook`` (``C`` values in the codebook dtype), ``codes`` (bit-packed at
  ``ceil(log2 C)`` bits, or ANS-coded), ``code_counts`` (the symbol counts of
  the ANS model; empty otherwise), ``mask`` (a bitmap, the Rice-coded positions
  of the kept or of the pruned weights, or ANS-coded bits: whichever is
  smallest), ``outlier_index`` (bit-packed flat indices) and ``outlier_values``.
* Every dense tensor is stored as it is (its own dtype and shape).
* The safetensors ``__metadata__`` holds ``format``, ``format_version``,
  ``manifest`` (JSON: the user's metadata, and per tensor the shape, ``K``/``C``,
  bits, ``nnz``, sparsity, codebook dtype, the encodings and the bytes of every
  part, the empirical entropy of codes and mask) and ``sha256``, a SHA-256 over
  the manifest and every stored tensor (name, dtype, shape and bytes).

Codebooks are stored in ``codebook_dtype`` (``float16`` by default). The saver
does not round silently: a codebook that ``float16`` cannot represent exactly
is an error unless ``round_codebook=True``. Round first with
:meth:`CompressedTensor.with_codebook_dtype`, so that the greedy weights you
evaluate are the ones the file rebuilds; :func:`load` returns the codebook as
float32 holding exactly the stored values.

:func:`load` checks format, version and checksum and raises
:class:`CompressedFileError` (a ``ValueError``) naming the file and the problem
for a truncated, corrupted or foreign file. Decoding is bounded (every count
checked against the bytes that hold it, at most :data:`ELEMENTS_PER_BYTE`
weights per byte of file). The checksum proves integrity, not authorship:
whoever edits a file can recompute it, so pass ``expected_sha256=`` (the
SHA-256 of a file you trust) when that matters.

Example::

    >>> import os, tempfile, torch
    >>> net = torch.nn.Sequential(torch.nn.Linear(8, 4), torch.nn.ReLU(), torch.nn.Linear(4, 2))
    >>> ct = CompressedTensor((4, 8), torch.tensor([-0.5, 0.5]), torch.tensor([0, 1, 1]),
    ...                       torch.arange(32).reshape(4, 8) % 11 == 0)
    >>> dense = {k: v for k, v in net.state_dict().items() if k != "0.weight"}
    >>> path = os.path.join(tempfile.mkdtemp(), "net.sqs.safetensors")
    >>> manifest = save(path, {"0.weight": ct}, dense, metadata={"arch": "mlp"})
    >>> _ = load_into(net, path)
    >>> torch.equal(net[0].weight, ct.to_dense())
    True
    >>> load(path)[2]["metadata"]
    {'arch': 'mlp'}
"""

import hashlib
import importlib.metadata
import json
import math
import os

import numpy as np
import safetensors.torch
import torch
from safetensors import safe_open

from sqs_pyro.io import atomic_write

from .bitpack import MAX_BITS, decode_mask, encode_mask, pack_uint, packed_nbytes, unpack_uint
from .compressed_tensor import CompressedTensor
from .entropy import ans_decode, ans_encode, entropy_bits

__all__ = [
    "CODEBOOK_DTYPES",
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "PARTS",
    "CompressedFileError",
    "load",
    "load_into",
    "load_state_dict",
    "read_manifest",
    "save",
]

FORMAT_NAME = "sqs-pyro-compressed"
FORMAT_VERSION = 2
#: Versions :func:`load` reads (2 added positional groups: ``group_size`` and group-local codes).
READ_VERSIONS = (1, 2)
CODEBOOK_DTYPES = {"float16": torch.float16, "bfloat16": torch.bfloat16, "float32": torch.float32}
PARTS = ("codebook", "codes", "code_counts", "mask", "outlier_index", "outlier_values")
#: Decoding limit: a file may decode to at most ``ELEMENTS_PER_BYTE * file bytes`` weights in all, so a hostile
#: manifest cannot make the loader allocate more than a fixed multiple of the file's size. :func:`load_into`
#: also allows the module's own size; pass ``max_elements=`` to :func:`load` for a file you trust. Real exports
#: stay below: a 99%-sparse layer takes some 70 weights a byte, a 99.9%-sparse one some 800.
ELEMENTS_PER_BYTE = 1024


class CompressedFileError(ValueError):
    """A compressed file that cannot be trusted: truncated, corrupted, of another format or version, or
    not matching the module it is loaded into."""

    exit_code = 3


# ---------------------------------------------------------------- helpers


def _dtype_name(dtype):
    return str(dtype).removeprefix("torch.")


def _dtype(name):
    dtype = getattr(torch, str(name), None)
    if not isinstance(dtype, torch.dtype):
        raise ValueError(f"unknown dtype {name!r}")
    return dtype


def _raw(tensor):
    """The bytes of a tensor as a flat uint8 numpy array (no copy when contiguous on the CPU)."""
    if tensor.numel() == 0:
        return np.zeros(0, dtype=np.uint8)
    return tensor.detach().cpu().contiguous().reshape(-1).view(torch.uint8).numpy()


def _from_raw(data, dtype):
    itemsize = torch.empty(0, dtype=dtype).element_size()
    if data.size % itemsize:
        raise ValueError(f"{data.size} bytes are not a whole number of {_dtype_name(dtype)} values")
    if data.size == 0:
        return torch.empty(0, dtype=dtype)
    return torch.from_numpy(data.copy()).view(dtype)


def _codebook_dtype_name(codebook_dtype):
    name = _dtype_name(codebook_dtype) if isinstance(codebook_dtype, torch.dtype) else str(codebook_dtype)
    if name not in CODEBOOK_DTYPES:
        raise ValueError(f"codebook_dtype must be one of {tuple(CODEBOOK_DTYPES)}, got {codebook_dtype!r}")
    return name


def _entropy_coder():
    return f"constriction {importlib.metadata.version('constriction')} AnsCoder, Categorical(perfect=False)"


def _checksum(manifest_json, tensors):
    h = hashlib.sha256(manifest_json.encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(json.dumps([name, _dtype_name(t.dtype), list(t.shape)]).encode())
        h.update(_raw(t))
    return h.hexdigest()


# ---------------------------------------------------------------- one compressed tensor


def _encode(ct, codebook_dtype, entropy_coded, round_codebook, name):
    dtype = CODEBOOK_DTYPES[codebook_dtype]
    codebook = ct.codebook.detach().cpu()
    stored = codebook.to(dtype)
    if not torch.equal(stored.to(codebook.dtype), codebook):
        if not round_codebook:
            raise ValueError(
                f"the codebook of {name!r} is not exactly representable in {codebook_dtype}; round it first with "
                f"ct.with_codebook_dtype(torch.{codebook_dtype}) (the greedy weights are then defined by the rounded "
                "codebook) or pass round_codebook=True"
            )
        if not torch.isfinite(stored).all():
            raise ValueError(f"the codebook of {name!r} overflows {codebook_dtype}")
    numel, nnz, num_codebook = ct.numel, ct.nnz, ct.codebook.numel()
    codes = ct.codes.cpu().numpy()
    mask = ct.mask.cpu().numpy().reshape(-1)
    counts = np.bincount(codes, minlength=ct.num_symbols)
    parts = dict.fromkeys(PARTS, np.zeros(0, dtype=np.uint8))
    parts["codebook"] = _raw(stored)

    parts["codes"] = pack_uint(codes, ct.bits_per_code)
    codes_entry = {"encoding": "packed", "bits": ct.bits_per_code}
    if entropy_coded and nnz:
        count_bits = max(1, int(counts.max()).bit_length())
        words = ans_encode(codes, counts).astype("<u4").view(np.uint8)
        table = pack_uint(counts, count_bits)
        if words.size + table.size < parts["codes"].size:
            parts["codes"], parts["code_counts"] = words, table
            codes_entry = {"encoding": "ans", "count_bits": count_bits}

    encoding, parts["mask"], params = encode_mask(mask)
    if entropy_coded and 0 < nnz < numel:
        words = ans_encode(mask.astype(np.int32), [numel - nnz, nnz]).astype("<u4").view(np.uint8)
        if words.size < parts["mask"].size:
            encoding, parts["mask"], params = "ans", words, {}
    mask_entry = {"encoding": encoding, **params}

    outliers_entry = None
    if ct.outlier_index is not None:
        index_bits = max(1, (numel - 1).bit_length())
        parts["outlier_index"] = pack_uint(ct.outlier_index.cpu().numpy(), index_bits)
        parts["outlier_values"] = _raw(ct.outlier_values)
        outliers_entry = {
            "count": ct.num_outliers,
            "index_bits": index_bits,
            "dtype": _dtype_name(ct.outlier_values.dtype),
        }

    part_bytes = {p: int(parts[p].size) for p in PARTS}
    entry = {
        "shape": list(ct.shape),
        "numel": numel,
        "nnz": nnz,
        "sparsity": ct.sparsity,
        "num_codebook": num_codebook,
        "num_components": ct.num_components or num_codebook,
        "bits_per_code": ct.bits_per_code,
        "group_size": ct.group_size,
        "codebook_dtype": codebook_dtype,
        "codes": codes_entry,
        "mask": mask_entry,
        "outliers": outliers_entry,
        "parts": part_bytes,
        "stored_bytes": sum(part_bytes.values()),
        "entropy_bits": {"codes": entropy_bits(counts), "mask": entropy_bits([numel - nnz, nnz])},
    }
    return np.concatenate([parts[p] for p in PARTS]), entry


def _count(entry, key, lo, hi, what=None):
    """``entry[key]`` as an int in ``[lo, hi]``, checked before anything is allocated from it."""
    v = entry[key]
    if not isinstance(v, int) or isinstance(v, bool) or not lo <= v <= hi:
        raise ValueError(f"{what or key} = {v!r} is not an integer in [{lo}, {hi}] (corrupted or hostile manifest)")
    return v


def _check_bytes(part, actual, expected):
    if actual != expected:
        raise ValueError(f"{part} has {actual} bytes, the manifest's counts need {expected}")


def _decode(entry, blob, limit):
    """One compressed tensor from its blob; every count of the manifest is checked against the bytes that
    hold it (and ``numel`` against ``limit``) before any allocation."""
    if not isinstance(entry, dict):
        raise ValueError("manifest entry is not a mapping")
    if not isinstance(entry.get("parts"), dict):
        raise ValueError("manifest entry has no 'parts' mapping")
    if blob.dtype != torch.uint8 or blob.dim() != 1:
        raise ValueError(f"stored blob is {blob.dtype} of shape {tuple(blob.shape)}, expected 1-D uint8")
    sizes = [_count(entry["parts"], p, 0, blob.numel(), f"parts.{p}") for p in PARTS]
    if blob.numel() != sum(sizes):
        raise ValueError(f"stored blob has {blob.numel()} bytes, its parts add up to {sum(sizes)}")
    data = blob.numpy()
    bounds = np.cumsum([0, *sizes])
    parts = {p: data[bounds[i] : bounds[i + 1]] for i, p in enumerate(PARTS)}
    shape = entry["shape"]
    if not isinstance(shape, list) or len(shape) > 32:
        raise ValueError(f"shape {shape!r} is not a list of at most 32 sizes")
    shape = tuple(_count({"size": s}, "size", 0, limit, "shape size") for s in shape)
    numel = _count(entry, "numel", 0, limit)
    if math.prod(shape) != numel:
        raise ValueError(f"shape {shape} does not have {numel} elements")
    nnz = _count(entry, "nnz", 0, numel)
    if entry.get("codebook_dtype") not in CODEBOOK_DTYPES:
        raise ValueError(f"codebook dtype {entry.get('codebook_dtype')!r} is not one of {tuple(CODEBOOK_DTYPES)}")
    itemsize = torch.empty(0, dtype=CODEBOOK_DTYPES[entry["codebook_dtype"]]).element_size()
    num_codebook = _count(entry, "num_codebook", 1, max(1, sizes[0] // itemsize))
    _check_bytes("codebook", sizes[0], num_codebook * itemsize)
    codebook = _from_raw(parts["codebook"], CODEBOOK_DTYPES[entry["codebook_dtype"]]).float()
    num_components = _count(entry, "num_components", 1, num_codebook)
    group_size = entry.get("group_size")
    num_symbols = num_codebook
    if group_size is not None:
        group_size = _count(entry, "group_size", 1, max(1, numel), "group_size")
        if numel % group_size or numel // group_size * num_components != num_codebook:
            raise ValueError(f"group_size {group_size} and K = {num_components} do not fit {numel} weights and "
                             f"{num_codebook} codebook values")
        num_symbols = num_components

    codes_entry = entry["codes"]
    if not isinstance(codes_entry, dict):
        raise ValueError("manifest 'codes' is not a mapping")
    if codes_entry.get("encoding") == "packed":
        bits = _count(codes_entry, "bits", 1, MAX_BITS, "codes.bits")
        _check_bytes("packed codes", sizes[1], packed_nbytes(nnz, bits))
        codes = unpack_uint(parts["codes"], bits, nnz)
    elif codes_entry.get("encoding") == "ans":
        count_bits = _count(codes_entry, "count_bits", 1, MAX_BITS, "codes.count_bits")
        _check_bytes("code counts", sizes[2], packed_nbytes(num_symbols, count_bits))
        if sizes[1] % 4:
            raise ValueError("ANS-coded codes are not a whole number of 32-bit words")
        counts = unpack_uint(parts["code_counts"], count_bits, num_symbols)
        if int(counts.sum()) != nnz:
            raise ValueError(f"code counts sum to {int(counts.sum())}, expected nnz = {nnz}")
        codes = ans_decode(np.frombuffer(parts["codes"].tobytes(), dtype="<u4"), counts, nnz)
        if not np.array_equal(np.bincount(codes, minlength=counts.size), counts):
            raise ValueError("decoded codes do not have the stored symbol counts (entropy coder mismatch?)")
    else:
        raise ValueError(f"unknown code encoding {codes_entry.get('encoding')!r}")
    if codes.size and (int(codes.min()) < 0 or int(codes.max()) >= num_symbols):
        raise ValueError(f"codes must lie in [0, {num_symbols})")

    mask_entry = dict(entry["mask"])
    encoding = mask_entry.pop("encoding", None)
    if encoding == "ans":
        if sizes[3] % 4:
            raise ValueError("ANS-coded mask is not a whole number of 32-bit words")
        words = np.frombuffer(parts["mask"].tobytes(), dtype="<u4")
        mask = ans_decode(words, [numel - nnz, nnz], numel).astype(bool)
    else:
        if encoding in ("positions", "positions_inverted"):
            expected = nnz if encoding == "positions" else numel - nnz
            _count(mask_entry, "count", expected, expected, "mask.count")
        mask = decode_mask(encoding, parts["mask"], mask_entry, numel)
    if int(mask.sum()) != nnz:
        raise ValueError(f"decoded mask keeps {int(mask.sum())} weights, expected {nnz}")

    outlier_index = outlier_values = None
    if entry["outliers"]:
        outliers = entry["outliers"]
        count = _count(outliers, "count", 0, numel - nnz, "outliers.count")
        index_bits = _count(outliers, "index_bits", 1, MAX_BITS, "outliers.index_bits")
        _check_bytes("packed outlier indices", sizes[4], packed_nbytes(count, index_bits))
        if outliers.get("dtype") not in ("float16", "bfloat16", "float32", "float64"):
            raise ValueError(f"outlier dtype {outliers.get('dtype')!r} is not a floating dtype")
        dtype = _dtype(outliers["dtype"])
        _check_bytes("outlier values", sizes[5], count * torch.empty(0, dtype=dtype).element_size())
        outlier_index = torch.from_numpy(unpack_uint(parts["outlier_index"], index_bits, count))
        outlier_values = _from_raw(parts["outlier_values"], dtype)
    return CompressedTensor(
        shape=shape,
        codebook=codebook,
        codes=torch.from_numpy(codes),
        mask=torch.from_numpy(mask).reshape(shape),
        outlier_index=outlier_index,
        outlier_values=outlier_values,
        num_components=None if num_components == codebook.numel() and group_size is None else num_components,
        group_size=group_size,
    )


# ---------------------------------------------------------------- save


def save(
    path,
    compressed,
    dense=None,
    *,
    metadata=None,
    codebook_dtype="float16",
    entropy_coded=False,
    round_codebook=False,
):
    """
    Write compressed and dense tensors to one safetensors file, atomically
    (a temporary file in the same folder, fsync, rename).

    :param path: the file to write.
    :param dict compressed: ``name -> CompressedTensor``.
    :param dict dense: ``name -> Tensor`` stored as they are (their dtype kept).
    :param dict metadata: JSON-serializable description (base model, data, method...).
    :param codebook_dtype: ``"float16"`` (default), ``"bfloat16"`` or ``"float32"``.
    :param bool entropy_coded: ANS-code codes and mask under their empirical
        distributions (kept per part only where it is smaller than the plain code).
    :param bool round_codebook: round codebooks that ``codebook_dtype`` cannot
        represent exactly instead of raising.
    :returns: the manifest, with ``manifest["file"] = {"path", "bytes", "sha256"}``.
    """
    path = os.fspath(path)
    dense = {} if dense is None else dense
    codebook_dtype = _codebook_dtype_name(codebook_dtype)
    for name, ct in compressed.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"tensor names must be non-empty strings, got {name!r}")
        if not isinstance(ct, CompressedTensor):
            raise TypeError(f"compressed[{name!r}] must be a CompressedTensor, got {type(ct).__name__}")
    for name, t in dense.items():
        if not isinstance(name, str) or not name:
            raise ValueError(f"tensor names must be non-empty strings, got {name!r}")
        if not isinstance(t, torch.Tensor):
            raise TypeError(f"dense[{name!r}] must be a torch.Tensor, got {type(t).__name__}")
    both = sorted(set(compressed) & set(dense))
    if both:
        raise ValueError(f"tensors given both compressed and dense: {both[:10]}")
    try:
        user_metadata = json.loads(json.dumps({} if metadata is None else metadata))
    except (TypeError, ValueError) as e:
        raise ValueError(f"metadata must be JSON-serializable: {e}") from None

    tensors, manifest = {}, {
        "format": FORMAT_NAME,
        "format_version": FORMAT_VERSION,
        "metadata": user_metadata,
        "codebook_dtype": codebook_dtype,
        "entropy_coded": bool(entropy_coded),
        "entropy_coder": _entropy_coder() if entropy_coded else None,
        "compressed": {},
        "dense": {},
    }
    for name, ct in compressed.items():
        blob, manifest["compressed"][name] = _encode(ct, codebook_dtype, entropy_coded, round_codebook, name)
        tensors[name] = torch.from_numpy(blob)
    storages = set()
    for name, t in dense.items():
        t = t.detach().cpu().contiguous()
        key = t.untyped_storage().data_ptr()
        if key in storages:  # safetensors refuses shared storage (e.g. tied weights): store a copy
            t = t.clone()
        storages.add(key)
        tensors[name] = t
        manifest["dense"][name] = {"dtype": _dtype_name(t.dtype), "shape": list(t.shape)}

    manifest_json = json.dumps(manifest, sort_keys=True, separators=(",", ":"))
    digest = _checksum(manifest_json, tensors)
    header = {"format": FORMAT_NAME, "format_version": str(FORMAT_VERSION), "manifest": manifest_json, "sha256": digest}
    data = safetensors.torch.save(tensors, metadata=header)
    with atomic_write(path, "wb") as f:
        f.write(data)
    manifest["file"] = {"path": path, "bytes": os.path.getsize(path), "sha256": digest}
    return manifest


# ---------------------------------------------------------------- load


def _manifest_from_header(path, header):
    if not header or header.get("format") != FORMAT_NAME:
        found = None if not header else header.get("format")
        raise CompressedFileError(
            f"{path}: not an sqs-pyro compressed file (safetensors metadata 'format' is {found!r}, "
            f"expected {FORMAT_NAME!r})"
        )
    version = header.get("format_version")
    if version not in {str(v) for v in READ_VERSIONS}:
        raise CompressedFileError(
            f"{path}: format version {version!r} is not supported (this sqs-pyro reads versions "
            f"{', '.join(map(str, READ_VERSIONS))}); "
            "use the sqs-pyro release that wrote it or export again"
        )
    try:
        manifest_json = header["manifest"]
        manifest = json.loads(manifest_json)
        if manifest["format"] != FORMAT_NAME or str(manifest["format_version"]) != version:
            raise ValueError("manifest disagrees with the file's format/version")
        for key in ("compressed", "dense", "metadata"):
            if not isinstance(manifest[key], dict):
                raise ValueError(f"manifest field {key!r} is not a mapping")
        digest = header["sha256"]
    except (KeyError, TypeError, ValueError) as e:
        raise CompressedFileError(f"{path}: unreadable manifest ({e}); the file is corrupted") from None
    manifest["file"] = {"path": path, "bytes": os.path.getsize(path), "sha256": digest}
    return manifest, manifest_json


def _open(path):
    try:
        return safe_open(path, framework="pt")
    except FileNotFoundError:
        raise
    except Exception as e:  # safetensors raises its own error type for malformed headers
        raise CompressedFileError(
            f"{path}: not a readable safetensors file ({e}); it may be truncated or of another format"
        ) from None


def read_manifest(path):
    """The manifest of a compressed file (format and version checked, tensors neither read nor verified)."""
    path = os.fspath(path)
    with _open(path) as f:
        return _manifest_from_header(path, f.metadata())[0]


def _file_sha256(path):
    h = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            h.update(chunk)
    return h.hexdigest()


def load(path, *, expected_sha256=None, max_elements=None):
    """
    Read and verify a compressed file.

    What the stored checksum proves: the manifest and every tensor are the
    bytes the writer hashed, so truncation, bit rot or a partial copy is an
    error. What it does not prove: who wrote the file. Anyone can edit a file
    and recompute the checksum; such a file either fails the decoder's checks
    or loads as *other* weights (a transposed shape is caught only by
    :func:`load_into`, against the module). If you need authorship, pass
    ``expected_sha256``: the SHA-256 of the whole file (``sha256sum FILE``)
    from a source you trust.

    Decoding is bounded: every count in the manifest is checked against the
    bytes that hold it before anything is allocated, and the file may decode to
    at most ``ELEMENTS_PER_BYTE * file bytes`` weights (``max_elements`` to change that).

    :param str expected_sha256: hex SHA-256 of the whole file; a mismatch is a
        :class:`CompressedFileError`.
    :param int max_elements: decode limit in weights, for a file you trust that
        is larger than the default limit allows.
    :returns: ``(compressed, dense, manifest)``: ``name -> CompressedTensor``
        (float32 codebooks), ``name -> Tensor`` and the manifest (with
        ``manifest["file"] = {"path", "bytes", "sha256"}``).
    :raises CompressedFileError: for a truncated, corrupted, foreign or
        oversized file, and for every other decoding failure.
    """
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CompressedFileError(f"{path} is a directory, not a compressed file")
    if expected_sha256 is not None:
        found = _file_sha256(path)
        if found != str(expected_sha256).strip().lower():
            raise CompressedFileError(f"{path}: SHA-256 of the file is {found}, expected {expected_sha256}: "
                                      "not the file you trust")
    file_bytes = os.path.getsize(path)
    limit = max_elements if max_elements is not None else ELEMENTS_PER_BYTE * file_bytes
    try:
        return _load(path, limit)
    except (CompressedFileError, FileNotFoundError):
        raise
    except (Exception, MemoryError) as e:  # noqa: BLE001 - anything a hostile file provokes is a file error
        raise CompressedFileError(f"{path}: cannot decode the file ({type(e).__name__}: {e})") from None
    except BaseException as e:  # a Rust panic in a native decoder (pyo3 PanicException is a BaseException)
        if type(e).__name__ != "PanicException":
            raise
        raise CompressedFileError(f"{path}: the entropy decoder rejected the data ({e})") from None


def _load(path, limit):
    with _open(path) as f:
        manifest, manifest_json = _manifest_from_header(path, f.metadata())
        try:
            tensors = {name: f.get_tensor(name) for name in f.keys()}
        except Exception as e:
            raise CompressedFileError(f"{path}: cannot read the stored tensors ({e}); the file is corrupted") from None
    if _checksum(manifest_json, tensors) != manifest["file"]["sha256"]:
        raise CompressedFileError(
            f"{path}: checksum mismatch, the file is corrupted (SHA-256 of manifest and tensors differs)"
        )
    expected = set(manifest["compressed"]) | set(manifest["dense"])
    if set(tensors) != expected:
        raise CompressedFileError(
            f"{path}: stored tensors do not match the manifest (missing {sorted(expected - set(tensors))[:10]}, "
            f"unlisted {sorted(set(tensors) - expected)[:10]})"
        )
    claimed = 0
    for name, entry in manifest["compressed"].items():
        numel = entry.get("numel") if isinstance(entry, dict) else None
        if isinstance(numel, int) and numel > 0:
            claimed += numel
    if claimed > limit:
        raise CompressedFileError(
            f"{path}: the manifest claims {claimed} weights, more than the decode limit of {limit} for a file of "
            f"{manifest['file']['bytes']} bytes; pass max_elements= to load a larger file you trust"
        )
    compressed = {}
    for name, entry in manifest["compressed"].items():
        try:
            compressed[name] = _decode(entry, tensors[name], limit)
        except (KeyError, TypeError, ValueError, RuntimeError, OverflowError, IndexError, MemoryError) as e:
            raise CompressedFileError(f"{path}: cannot rebuild compressed tensor {name!r}: {e}") from None
    dense = {}
    for name, entry in manifest["dense"].items():
        t = tensors[name]
        if not isinstance(entry, dict) or _dtype_name(t.dtype) != entry.get("dtype") or list(t.shape) != entry.get("shape"):
            raise CompressedFileError(
                f"{path}: dense tensor {name!r} is {t.dtype} {tuple(t.shape)}, the manifest says {entry}"
            )
        dense[name] = t
    return compressed, dense, manifest


def load_state_dict(path, dtype=torch.float32, *, expected_sha256=None, max_elements=None):
    """``name -> Tensor`` for every tensor in the file, compressed ones rebuilt densely in ``dtype``
    (``expected_sha256``, ``max_elements``: see :func:`load`)."""
    compressed, dense, _ = load(path, expected_sha256=expected_sha256, max_elements=max_elements)
    state = {name: ct.to_dense(dtype) for name, ct in compressed.items()}
    state.update(dense)
    return state


def load_into(module, path, strict=True, *, expected_sha256=None, max_elements=None):
    """
    Load a compressed file into ``module`` (``module.load_state_dict`` with the
    rebuilt tensors).

    :param bool strict: require the file's tensors and the module's state dict
        to have exactly the same names.
    :raises CompressedFileError: on missing or unexpected names (``strict``) or
        on a shape mismatch, naming the tensors.
    :param str expected_sha256: SHA-256 of the whole file from a source you trust (see :func:`load`).
    :returns: what ``module.load_state_dict`` returns (missing and unexpected keys).
    """
    path = os.fspath(path)
    own = module.state_dict()
    if max_elements is None:  # the module says how large the file may be (or the file-size limit, if larger)
        max_elements = max(sum(t.numel() for t in own.values()), ELEMENTS_PER_BYTE * os.path.getsize(path))
    state = load_state_dict(path, expected_sha256=expected_sha256, max_elements=max_elements)
    missing = [k for k in own if k not in state]
    unexpected = [k for k in state if k not in own]
    mismatched = [f"{k}: file {tuple(v.shape)} vs module {tuple(own[k].shape)}"
                  for k, v in state.items() if k in own and own[k].shape != v.shape]
    problems = []
    if strict and missing:
        problems.append(f"missing in the file: {missing[:10]}{' ...' if len(missing) > 10 else ''}")
    if strict and unexpected:
        problems.append(f"not in the module: {unexpected[:10]}{' ...' if len(unexpected) > 10 else ''}")
    if mismatched:
        problems.append(f"shape mismatch: {mismatched[:10]}{' ...' if len(mismatched) > 10 else ''}")
    if problems:
        raise CompressedFileError(f"{path}: cannot load into {type(module).__name__}: " + "; ".join(problems))
    return module.load_state_dict(state, strict=strict)
