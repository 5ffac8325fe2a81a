"""
Checkpoints and base networks of a run, without pickle: written atomically,
so a run killed at any moment (``kill -9`` included) resumes from the last
complete one, and read without running any code from the file.

A state (a nested dict of tensors, numpy arrays and plain values: the guide,
the network, the optimizer, the random generators, the step) is stored as one
safetensors file: every tensor under its path (``guide/locs``,
``optimizer/state/0/exp_avg`` ...), and in the safetensors metadata the rest
of the structure as JSON (``tree``), the format name and version, and
``sha256``, a SHA-256 over the JSON and every tensor (name, dtype, shape,
bytes). :func:`load_checkpoint` verifies format, version and checksum, so a
flipped byte in the tensor data is an error, never silently other weights.
Files are named ``checkpoint.pt`` and ``base.pt`` in a run directory (the
historic names); a pickle written by ``torch.save`` (an older sqs-pyro, or
anyone) is refused without being unpickled. Convert a *trusted* old file with
``python -m sqs_pyro.run.checkpoint convert OLD.pt NEW.pt`` (``torch.load`` with
``weights_only=True``).

The checksum detects accidents (truncation, bit rot, a partial copy), not
authorship: whoever can write the file can recompute it.

Example::

    >>> import tempfile, os, torch
    >>> path = os.path.join(tempfile.mkdtemp(), "ckpt.pt")
    >>> save_checkpoint(path, {"step": 3, "w": torch.ones(2), "betas": (0.9, 0.999)})
    >>> state = load_checkpoint(path)
    >>> state["step"], state["w"].tolist(), state["betas"]
    (3, [1.0, 1.0], (0.9, 0.999))
"""

import hashlib
import json
import math
import os
import random
import struct
import sys

import numpy as np
import safetensors.torch
import torch
from safetensors import safe_open

from ..io import atomic_write

__all__ = [
    "CHECKPOINT_FORMAT",
    "CheckpointError",
    "checkpoint_info",
    "load_checkpoint",
    "rng_state",
    "save_checkpoint",
    "set_rng_state",
    "state_digest",
]

CHECKPOINT_FORMAT = "sqs-pyro-state"
CHECKPOINT_VERSION = 1
_TAGS = ("__tensor__", "__ndarray__", "__tuple__", "__items__", "__float__")


class CheckpointError(RuntimeError):
    """A checkpoint is missing, unreadable, corrupted, of an unsafe format, or belongs to another run."""

    exit_code = 3


# ---------------------------------------------------------------- the tree <-> JSON + tensors


def _encode(obj, path, tensors):
    if torch.is_tensor(obj):
        key = "/".join(path) or "tensor"
        while key in tensors:
            key += "'"
        tensors[key] = obj.detach().cpu().contiguous().clone()
        return {"__tensor__": key}
    if isinstance(obj, np.ndarray):
        raw = np.ascontiguousarray(obj)
        key = "/".join(path) or "array"
        while key in tensors:
            key += "'"
        tensors[key] = torch.from_numpy(raw.reshape(-1).view(np.uint8).copy())
        return {"__ndarray__": key, "dtype": raw.dtype.str, "shape": list(raw.shape)}
    if obj is None or isinstance(obj, (bool, str)):
        return obj
    if isinstance(obj, (int, np.integer)):
        return int(obj)
    if isinstance(obj, (float, np.floating)):
        obj = float(obj)
        return obj if math.isfinite(obj) else {"__float__": repr(obj)}
    if isinstance(obj, tuple):
        return {"__tuple__": [_encode(v, (*path, str(i)), tensors) for i, v in enumerate(obj)]}
    if isinstance(obj, list):
        return [_encode(v, (*path, str(i)), tensors) for i, v in enumerate(obj)]
    if isinstance(obj, dict):
        if all(isinstance(k, str) and k not in _TAGS for k in obj):
            return {k: _encode(v, (*path, k), tensors) for k, v in obj.items()}
        return {"__items__": [[_encode(k, (*path, "key"), tensors), _encode(v, (*path, str(k)), tensors)]
                              for k, v in obj.items()]}
    raise TypeError(f"cannot store a {type(obj).__name__} at {'/'.join(path) or 'the top'} in a checkpoint")


def _decode(node, tensors, used):
    if isinstance(node, list):
        return [_decode(v, tensors, used) for v in node]
    if not isinstance(node, dict):
        return node
    if "__tensor__" in node:
        used.add(node["__tensor__"])
        return tensors[node["__tensor__"]]
    if "__ndarray__" in node:
        used.add(node["__ndarray__"])
        raw = tensors[node["__ndarray__"]]
        dtype, shape = np.dtype(node["dtype"]), tuple(int(s) for s in node["shape"])
        if dtype.hasobject or raw.dtype != torch.uint8 or raw.numel() != math.prod(shape) * dtype.itemsize:
            raise ValueError(f"array {node['__ndarray__']!r} does not match its dtype and shape")
        return raw.numpy().view(dtype).reshape(shape).copy()
    if "__float__" in node:
        if node["__float__"] not in ("nan", "inf", "-inf"):
            raise ValueError(f"bad float {node['__float__']!r}")
        return float(node["__float__"])
    if "__tuple__" in node:
        return tuple(_decode(v, tensors, used) for v in node["__tuple__"])
    if "__items__" in node:
        return {_decode(k, tensors, used): _decode(v, tensors, used) for k, v in node["__items__"]}
    return {k: _decode(v, tensors, used) for k, v in node.items()}


def _raw(t):
    return t.reshape(-1).view(torch.uint8).numpy() if t.numel() else b""


def _checksum(tree_json, tensors):
    h = hashlib.sha256(tree_json.encode())
    for name in sorted(tensors):
        t = tensors[name]
        h.update(json.dumps([name, str(t.dtype), list(t.shape)]).encode())
        h.update(_raw(t))
    return h.hexdigest()


def state_digest(state_dict):
    """SHA-256 of a state dict's tensors (names, dtypes, shapes, bytes): the identity of a network's weights."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in state_dict.items() if torch.is_tensor(v)}
    return _checksum("", tensors)


# ---------------------------------------------------------------- save / load


def save_checkpoint(path, state):
    """Write ``state`` (a dict of tensors, arrays and plain values) atomically as safetensors + JSON."""
    tensors = {}
    tree_json = json.dumps(_encode(state, (), tensors), allow_nan=False)
    metadata = {"format": CHECKPOINT_FORMAT, "format_version": str(CHECKPOINT_VERSION), "tree": tree_json,
                "sha256": _checksum(tree_json, tensors)}
    data = safetensors.torch.save(tensors, metadata=metadata)
    with atomic_write(path, "wb") as f:
        f.write(data)


def _sniff(path):
    """Refuse, before any parsing, what is not a safetensors file (a pickle, a zip from torch.save)."""
    with open(path, "rb") as f:
        head = f.read(9)
    size = os.path.getsize(path)
    if len(head) < 9 or struct.unpack("<Q", head[:8])[0] + 8 > size or head[8:9] != b"{":
        kind = ("a torch.save zip archive (pickle inside)" if head.startswith(b"PK")
                else "a pickle" if head[:1] == b"\x80" else None)
        if kind is None:
            raise CheckpointError(f"checkpoint {path} is unreadable (not a safetensors file: truncated or of "
                                  "another format); delete it to start over")
        raise CheckpointError(
            f"{path} is {kind}: sqs-pyro reads checkpoints and base networks only as safetensors "
            "(unpickling can run arbitrary code). Convert a file you trust with "
            "`python -m sqs_pyro.run.checkpoint convert OLD NEW`, or delete it to start over"
        )


def _metadata(f):
    """The header metadata of an open checkpoint, after checking that it is one."""
    meta = f.metadata() or {}
    if meta.get("format") != CHECKPOINT_FORMAT:
        raise ValueError(f"format is {meta.get('format')!r}, expected {CHECKPOINT_FORMAT!r}")
    return meta


def _open_verified(path):
    path = os.fspath(path)
    if os.path.isdir(path):
        raise CheckpointError(f"{path} is a directory, not a checkpoint file")
    if not os.path.exists(path):
        raise CheckpointError(f"no checkpoint at {path}: start the run without --resume")
    _sniff(path)
    try:
        with safe_open(path, framework="pt") as f:
            meta = _metadata(f)
            if meta.get("format_version") != str(CHECKPOINT_VERSION):
                raise ValueError(f"format version {meta.get('format_version')!r} is not {CHECKPOINT_VERSION}")
            tensors = {name: f.get_tensor(name) for name in f.keys()}
        tree_json = meta["tree"]
        if _checksum(tree_json, tensors) != meta.get("sha256"):
            raise ValueError("checksum mismatch: the file is corrupted (SHA-256 of its structure and tensors differs)")
        return json.loads(tree_json), tensors
    except CheckpointError:
        raise
    except Exception as e:  # noqa: BLE001 - safetensors, JSON and our checks: all mean a bad file
        raise CheckpointError(f"checkpoint {path} is unreadable ({e}); delete it to start over") from None


def load_checkpoint(path, map_location="cpu"):
    """Read and verify a checkpoint; a missing, truncated, corrupt or pickled file is a :class:`CheckpointError`."""
    tree, tensors = _open_verified(path)
    used = set()
    try:
        state = _decode(tree, tensors, used)
    except (KeyError, TypeError, ValueError, RecursionError) as e:
        raise CheckpointError(f"checkpoint {path} has an inconsistent structure ({e}); delete it to start over") from None
    if used != set(tensors):
        raise CheckpointError(f"checkpoint {path} holds tensors its structure does not use; delete it to start over")
    if map_location is not None and str(map_location) != "cpu":
        state = _to_device(state, map_location)
    return state


def _to_device(obj, device):
    if torch.is_tensor(obj):
        return obj.to(device)
    if isinstance(obj, dict):
        return {k: _to_device(v, device) for k, v in obj.items()}
    if isinstance(obj, list):
        return [_to_device(v, device) for v in obj]
    return obj


def checkpoint_info(path, key):
    """A plain (non-tensor) value at the top of a checkpoint, e.g. ``"step"`` or ``"identity"``, from its
    header only (tensors neither read nor verified); ``None`` when absent."""
    path = os.fspath(path)
    _sniff(path)
    try:
        with safe_open(path, framework="pt") as f:
            meta = _metadata(f)
        value = json.loads(meta["tree"]).get(key)
    except Exception as e:  # noqa: BLE001
        raise CheckpointError(f"checkpoint {path} is unreadable ({e}); delete it to start over") from None
    return _decode(value, {}, set()) if not (isinstance(value, dict) and "__tensor__" in value) else None


# ---------------------------------------------------------------- random generators


def rng_state():
    """The state of every random number generator a run uses (tensors, arrays and plain values only)."""
    state = {"torch": torch.get_rng_state(), "python": random.getstate(), "numpy": np.random.get_state()}
    if torch.cuda.is_available():
        state["cuda"] = torch.cuda.get_rng_state_all()
    return state


def set_rng_state(state):
    torch.set_rng_state(state["torch"])
    version, internal, gauss = state["python"]
    random.setstate((version, tuple(internal), gauss))
    np.random.set_state(tuple(state["numpy"]))
    if "cuda" in state and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])


# ---------------------------------------------------------------- conversion of trusted old files


def _numpy_allow_list():
    """What ``weights_only=True`` must also accept to read numpy arrays (the numpy RNG state of old
    checkpoints): the array type, dtypes and numpy's array reconstructor, nothing that runs other code."""
    core = getattr(np, "_core", None) or np.core
    dtypes = [type(np.dtype(t)) for t in ("uint32", "int64", "float64", "uint8", "int32", "float32")]
    return [np.ndarray, np.dtype, core.multiarray._reconstruct, *dtypes]


def convert(src, dst):
    """Rewrite a trusted ``torch.save`` file in the safe format: ``torch.load(weights_only=True)`` (tensors,
    containers, numbers, strings, and numpy arrays through a short allow-list), so even this one-off
    conversion runs no code from the file."""
    with torch.serialization.safe_globals(_numpy_allow_list()):
        state = torch.load(src, map_location="cpu", weights_only=True)
    save_checkpoint(dst, state)
    return dst


if __name__ == "__main__":  # python -m sqs_pyro.run.checkpoint convert OLD NEW
    if len(sys.argv) != 4 or sys.argv[1] != "convert":
        sys.exit("usage: python -m sqs_pyro.run.checkpoint convert OLD.pt NEW.pt")
    print(convert(sys.argv[2], sys.argv[3]))
