"""
Export: the compressed network as it is on disk.

* :class:`CompressedTensor` -- codebook, codes, mask (and outliers) of one weight tensor;
* :func:`save` / :func:`load` -- one safetensors file with a JSON manifest, bit-packed or
  entropy-coded parts, a format version and a SHA-256 checksum;
* :func:`load_state_dict` / :func:`load_into` -- dense tensors for a plain ``nn.Module``;
* :func:`size_report` -- paper compression rate next to the real bytes on disk;
* :func:`export_checked` -- the export verb: save, reload, check bit-exact, report sizes
  (:func:`apply_compressed` puts the compressed weights into a network first).

Example::

    >>> import os, tempfile, torch
    >>> from sqs_pyro.export import CompressedTensor, save, load_state_dict, size_report
    >>> w = torch.tensor([[0.0, 0.5], [-0.25, 0.5]])
    >>> path = os.path.join(tempfile.mkdtemp(), "m.safetensors")
    >>> _ = save(path, {"w": CompressedTensor.from_dense(w)}, {"b": torch.zeros(2)})
    >>> torch.equal(load_state_dict(path)["w"], w)
    True
    >>> size_report(path).file_bytes == os.path.getsize(path)
    True
"""

from .checked import ExportedFile, apply_compressed, entropy_coded_path, export_checked
from .compressed_tensor import CompressedTensor
from .format import (
    FORMAT_NAME,
    FORMAT_VERSION,
    CompressedFileError,
    load,
    load_into,
    load_state_dict,
    read_manifest,
    save,
)
from .report import LayerSize, SizeReport, size_report

__all__ = [
    "FORMAT_NAME",
    "FORMAT_VERSION",
    "CompressedFileError",
    "CompressedTensor",
    "ExportedFile",
    "LayerSize",
    "SizeReport",
    "apply_compressed",
    "entropy_coded_path",
    "export_checked",
    "load",
    "load_into",
    "load_state_dict",
    "read_manifest",
    "save",
    "size_report",
]
