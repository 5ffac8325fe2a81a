"""
The decoder against hostile and damaged files (issue 13, finding 2): byte flips, truncations, manifest
edits with the checksum recomputed, huge counts. Every case either loads or raises CompressedFileError;
nothing else escapes, nothing aborts, and the memory the decoder allocates stays within a fixed multiple of
the file's size.
"""

import hashlib
import json
import random
import struct
import tracemalloc

import pytest
import safetensors.torch
import torch

from sqs_pyro.export import CompressedFileError, CompressedTensor, load, load_into, save, size_report
from sqs_pyro.export.format import ELEMENTS_PER_BYTE, _checksum

from .test_export_format import random_compressed

#: bytes the decoder may allocate (numpy, traced) per byte of file: ELEMENTS_PER_BYTE weights a byte, each
#: decoded into at most a code (int64), a mask entry and temporaries of unpacking
BYTES_PER_FILE_BYTE = 32 * ELEMENTS_PER_BYTE


def _files(tmp_path):
    paths = []
    for i, (sparsity, entropy, outliers) in enumerate([(0.5, False, True), (0.5, True, False), (0.99, True, True),
                                                       (0.995, False, False)]):
        ct = random_compressed((40, 33), 8, sparsity, outliers, seed=i).with_codebook_dtype("float16")
        path = tmp_path / f"f{i}.safetensors"
        save(path, {"a.weight": ct, "b.weight": random_compressed((7, 5), 3, 0.3, seed=10 + i).with_codebook_dtype("float16")},
             {"a.bias": torch.randn(40)}, entropy_coded=entropy)
        paths.append(path)
    return paths


def _split(raw):
    n = struct.unpack("<Q", raw[:8])[0]
    return json.loads(raw[8 : 8 + n]), raw[8 + n :]


def _join(header, data):
    hb = json.dumps(header).encode()
    return struct.pack("<Q", len(hb)) + hb + data


def _resign(header, data):
    """Recompute the stored checksum after an edit (what an attacker can do)."""
    tensors = safetensors.torch.load(_join(header, data))
    header["__metadata__"]["sha256"] = _checksum(header["__metadata__"]["manifest"], tensors)
    return _join(header, data)


def _edit_manifest(raw, fn):
    header, data = _split(raw)
    manifest = json.loads(header["__metadata__"]["manifest"])
    fn(manifest)
    header["__metadata__"]["manifest"] = json.dumps(manifest)
    return _resign(header, data)


HOSTILE = [10**10, 10**12, 2**63, 2**64 + 1, -1, 0, 1, 2, 63, 64, "7", None, 1.5, True, [], {}, [10**6] * 3]
FIELDS = ["numel", "nnz", "shape", "num_codebook", "num_components", "codebook_dtype", "parts.codebook", "parts.codes",
          "parts.code_counts", "parts.mask", "parts.outlier_index", "parts.outlier_values", "codes.encoding",
          "codes.bits", "codes.count_bits", "mask.encoding", "mask.k", "mask.count", "mask.unary_bytes",
          "outliers.count", "outliers.index_bits", "outliers.dtype", "outliers"]


def _mutations(paths, rng):
    """(description, file bytes) of the fuzz cases."""
    for _ in range(80):  # random byte flips (the checksum must catch them)
        path = rng.choice(paths)
        raw = bytearray(path.read_bytes())
        for _ in range(rng.randint(1, 8)):
            raw[rng.randrange(len(raw))] ^= 1 << rng.randrange(8)
        yield "flip", bytes(raw)
    for _ in range(40):  # truncations
        raw = rng.choice(paths).read_bytes()
        yield "truncate", raw[: rng.randrange(len(raw))]
    for _ in range(200):  # manifest edits, checksum recomputed
        raw = rng.choice(paths).read_bytes()
        field, value = rng.choice(FIELDS), rng.choice(HOSTILE)

        def edit(m, field=field, value=value):
            entry = m["compressed"][rng.choice(sorted(m["compressed"]))]
            *parents, key = field.split(".")
            node = entry
            for p in parents:
                node = node.get(p) or {}
            if rng.random() < 0.1:
                node.pop(key, None)
            elif key == "shape" and rng.random() < 0.5:
                node[key] = list(reversed(node[key]))
            elif rng.random() < 0.3 and isinstance(node.get(key), int):
                node[key] = node[key] + rng.choice([-1, 1, node[key]])
            else:
                node[key] = value

        yield f"manifest {field}", _edit_manifest(raw, edit)
    for _ in range(60):  # tensor bytes edited, checksum recomputed: loads as other weights or is refused
        header, data = _split(rng.choice(paths).read_bytes())
        data = bytearray(data)
        for _ in range(rng.randint(1, 4)):
            data[rng.randrange(len(data))] = rng.randrange(256)
        yield "data", _resign(header, bytes(data))


def test_fuzz_decoder_never_crashes_and_stays_bounded(tmp_path):
    rng = random.Random(13)
    paths = _files(tmp_path)
    target = tmp_path / "case.safetensors"
    outcomes = {"loaded": 0, "refused": 0}
    worst = 0.0
    for kind, raw in _mutations(paths, rng):
        target.write_bytes(raw)
        tracemalloc.start()
        try:
            load(target)
            outcomes["loaded"] += 1
        except CompressedFileError:
            outcomes["refused"] += 1
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"{kind}: {type(e).__name__} escaped: {e}")
        finally:
            peak = tracemalloc.get_traced_memory()[1]
            tracemalloc.stop()
        worst = max(worst, peak / max(1, len(raw)))
        try:  # the size report (plot sizes, report) reads the manifest alone: same rule
            size_report(target)
        except CompressedFileError:
            pass
        except Exception as e:  # noqa: BLE001
            pytest.fail(f"size_report after {kind}: {type(e).__name__} escaped: {e}")
        assert peak <= BYTES_PER_FILE_BYTE * max(1, len(raw)) + (1 << 20), (kind, peak, len(raw))
    assert sum(outcomes.values()) == 380
    assert outcomes["refused"] > 250, outcomes  # nearly every flip, truncation and inconsistent edit
    print(f"fuzz: {outcomes}, worst traced peak {worst:.0f} bytes per file byte")


@pytest.mark.parametrize("numel", [10**10, 10**12])
def test_huge_counts_are_a_clear_error_not_an_abort(tmp_path, numel):
    """Finding 2: numel 1e10 in an entropy-coded layer aborted the process; 1e12 raised a raw MemoryError."""
    ct = CompressedTensor((4, 4), torch.tensor([1.0]), torch.zeros(16, dtype=torch.long), torch.ones(4, 4, dtype=torch.bool))
    path = tmp_path / "m.safetensors"
    save(path, {"w": ct}, entropy_coded=True)

    def edit(m):
        m["compressed"]["w"].update(numel=numel, nnz=numel, shape=[numel])
        m["compressed"]["w"]["codes"]["encoding"] = "ans"

    path.write_bytes(_edit_manifest(path.read_bytes(), edit))
    with pytest.raises(CompressedFileError, match="decode limit"):
        load(path)


def test_counts_are_checked_against_their_bytes(tmp_path):
    ct = random_compressed((40, 33), 8, 0.99, seed=1)
    path = tmp_path / "m.safetensors"
    save(path, {"w": ct}, codebook_dtype="float32")
    entry = json.loads(_split(path.read_bytes())[0]["__metadata__"]["manifest"])["compressed"]["w"]
    assert entry["mask"]["encoding"] == "positions"

    def edit(m):
        m["compressed"]["w"]["mask"]["count"] = 10**9

    path.write_bytes(_edit_manifest(path.read_bytes(), edit))
    with pytest.raises(CompressedFileError, match="mask.count|positions"):
        load(path)


def test_transposed_shape_and_expected_sha256(tmp_path):
    """Finding 2: with the checksum recomputed, a transposed shape passed. The file alone cannot tell (4, 8)
    from (8, 4); load_into checks it against the module, and expected_sha256 proves the file is the trusted one."""
    net = torch.nn.Linear(8, 4, bias=False)
    ct = CompressedTensor.from_dense(torch.arange(32.0).reshape(4, 8) % 3 - 1)
    path = tmp_path / "m.safetensors"
    save(path, {"weight": ct}, codebook_dtype="float32")
    trusted = hashlib.sha256(path.read_bytes()).hexdigest()
    load_into(net, path, expected_sha256=trusted)

    def edit(m):
        m["compressed"]["weight"]["shape"] = [8, 4]

    path.write_bytes(_edit_manifest(path.read_bytes(), edit))
    with pytest.raises(CompressedFileError, match="shape mismatch"):
        load_into(net, path)
    with pytest.raises(CompressedFileError, match="SHA-256 of the file"):
        load(path, expected_sha256=trusted)


def test_flipped_byte_in_tensor_data_is_refused(tmp_path):
    path = _files(tmp_path)[1]
    raw = bytearray(path.read_bytes())
    raw[-5] ^= 0x10
    path.write_bytes(bytes(raw))
    with pytest.raises(CompressedFileError, match="checksum"):
        load(path)
