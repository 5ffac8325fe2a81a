"""
The export verb: write a compressed network, read each file back, check every
tensor bit-exact, and report its size. Every path that writes a compressed file
goes through :func:`export_checked` (the run's export, the baselines, the
transformers examples; the few direct writers, scratch and per-block files, are
listed in tests/export/test_checked.py); :func:`apply_compressed` writes the dense form of
compressed tensors into a network, so that the network and the file agree.

Example::

    >>> import os, tempfile, torch
    >>> from sqs_pyro.export import CompressedTensor
    >>> net = torch.nn.Linear(4, 2)
    >>> compressed = {"weight": CompressedTensor.from_dense(torch.tensor([[0.0, 0.5] * 2, [-0.25, 0.5] * 2]))}
    >>> _ = apply_compressed(net, compressed)
    >>> files = export_checked(os.path.join(tempfile.mkdtemp(), "m.safetensors"), net, compressed)
    >>> sorted(files), torch.equal(files["plain"].reloaded.weight, net.weight)
    (['entropy_coded', 'plain'], True)
    >>> files["plain"].bytes == os.path.getsize(files["plain"].path)
    True
"""

import copy
import dataclasses
import os

import torch

from .format import load_into, save
from .report import SizeReport, size_report

__all__ = ["ExportedFile", "apply_compressed", "entropy_coded_path", "export_checked"]


@dataclasses.dataclass
class ExportedFile:
    """One file written by :func:`export_checked`, read back and checked."""

    kind: str  #: ``"plain"`` or ``"entropy_coded"``
    path: str
    bytes: int
    report: SizeReport
    manifest: dict  #: what the writer returned (the file's manifest)
    reloaded: torch.nn.Module  #: the network rebuilt from the file alone, bit-exact (None: not reloaded)


@torch.no_grad()
def apply_compressed(net, compressed):
    """Write the dense form of every :class:`~sqs_pyro.export.CompressedTensor` of ``compressed`` (``parameter
    name -> CompressedTensor``) into ``net``, in place; returns ``net``."""
    for name, ct in compressed.items():
        param = net.get_parameter(name)
        param.copy_(ct.to_dense().to(param))
    return net


def entropy_coded_path(path):
    """Where the entropy-coded file of ``path`` goes: ``x.safetensors`` -> ``x.ec.safetensors``."""
    return path.replace(".safetensors", ".ec.safetensors")


def _save_module(path, net, compressed, *, metadata, codebook_dtype, entropy_coded):
    dense = {k: v for k, v in net.state_dict().items() if k not in compressed}
    return save(path, compressed, dense, metadata=metadata, codebook_dtype=codebook_dtype, entropy_coded=entropy_coded)


def export_checked(path, net, compressed, *, metadata=None, codebook_dtype="float16", entropy_coded=True,
                   writer=None, reader=None, reload_entropy_coded=True):
    """
    Save ``net`` with its ``compressed`` tensors (every other tensor of its state
    dict dense) to ``path`` and, with ``entropy_coded``, to
    :func:`entropy_coded_path` beside it; read each file back into a network and
    check that every tensor equals ``net``'s bit for bit.

    :param torch.nn.Module net: the network holding the exported weights (its
        compressed tensors equal to their dense form: :func:`apply_compressed`, or
        :func:`~sqs_pyro.guides.compressed_weights`).
    :param dict compressed: ``parameter name -> CompressedTensor``.
    :param writer: ``writer(path, net, compressed, *, metadata, codebook_dtype, entropy_coded)``
        (default: :func:`~sqs_pyro.export.save` of the state dict; transformers
        models pass :func:`~sqs_pyro.models.transformers_io.save_compressed_pretrained`).
    :param reader: ``reader(path) -> nn.Module`` (default: :func:`~sqs_pyro.export.load_into`
        a copy of ``net``, strict: every tensor must come from the file).
    :param bool reload_entropy_coded: also read back and check the entropy-coded file
        (``False``: written and measured only; a reader that builds a fresh model draws
        from torch's global random generator, which a caller may need untouched).
    :returns: ``{"plain": ExportedFile[, "entropy_coded": ExportedFile]}``.
    :raises RuntimeError: if a reloaded tensor differs from ``net``'s.
    """
    writer = writer or _save_module
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    paths = {"plain": path}
    if entropy_coded:
        paths["entropy_coded"] = entropy_coded_path(path)
    expected = net.state_dict()
    out = {}
    for kind, p in paths.items():
        manifest = writer(p, net, compressed, metadata=metadata or {}, codebook_dtype=codebook_dtype,
                          entropy_coded=kind == "entropy_coded")
        if kind == "entropy_coded" and not reload_entropy_coded:
            out[kind] = ExportedFile(kind=kind, path=p, bytes=os.path.getsize(p), report=size_report(p),
                                     manifest=manifest, reloaded=None)
            continue
        if reader is None:
            reloaded = copy.deepcopy(net)
            load_into(reloaded, p)
        else:
            reloaded = reader(p)
        got = reloaded.state_dict()
        for name, tensor in expected.items():
            if not torch.equal(got[name].to(tensor), tensor):
                raise RuntimeError(f"reloaded {kind} file {p} differs from the exported weights at {name}")
        out[kind] = ExportedFile(kind=kind, path=p, bytes=os.path.getsize(p), report=size_report(p),
                                 manifest=manifest, reloaded=reloaded)
    return out

