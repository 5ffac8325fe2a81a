"""
Size accounting of a compressed file: the paper's compression rate next to
the honest figures (docs/method.md §7).

* **paper CR** ``= 32 / (log2 K x nonzero fraction)``, over the compressed layers
  only, ignoring mask, codebooks, outliers and everything left dense
  (``32 sum numel / sum log2 K nnz`` for several layers; ``None`` where it is
  infinite, i.e. ``K = 1`` or nothing kept).
* **bits per weight**: the stored bytes of a layer (codebook, codes, code
  counts, mask, outliers) times 8 over its number of weights.
* **entropy bound**: ``H(codes) nnz + H(mask) numel`` bits under the empirical
  distributions, and how close the stored codes and mask come to it.
* **whole file**: the bytes on disk (``os.path.getsize``) against the dense
  fp32 / fp16 bytes of the whole model (compressed and dense tensors; integer
  buffers at their own size).

Example::

    >>> import os, tempfile, torch
    >>> from sqs_pyro.export import CompressedTensor, save
    >>> mask = torch.rand(64, 64, generator=torch.Generator().manual_seed(0)) < 0.5
    >>> codes = torch.zeros(int(mask.sum()), dtype=torch.long)
    >>> ct = CompressedTensor((64, 64), torch.tensor([-1.0, -0.5, 0.5, 1.0]), codes, mask)
    >>> path = os.path.join(tempfile.mkdtemp(), "w.safetensors")
    >>> report = size_report(save(path, {"w": ct}))
    >>> report.file_bytes == os.path.getsize(path), round(report.paper_cr)
    (True, 32)
    >>> print(report.to_markdown().splitlines()[0][:44])
    | tensor | shape | K | sparsity | paper CR |
"""

import dataclasses
import math
from typing import Optional

import torch

from .format import CompressedFileError, read_manifest

__all__ = ["LayerSize", "SizeReport", "size_report"]


def _ratio(num, den):
    return num / den if den else None


@dataclasses.dataclass
class LayerSize:
    """Sizes of one compressed tensor (bytes unless named otherwise)."""

    name: str
    shape: tuple
    numel: int
    nnz: int
    sparsity: float
    num_components: int
    num_codebook: int
    codes_encoding: str
    mask_encoding: str
    part_bytes: dict
    stored_bytes: int
    bits_per_weight: float
    paper_cr: Optional[float]
    dense_fp32_bytes: int
    dense_fp16_bytes: int
    cr_fp32: Optional[float]
    entropy_bound_bytes: float


@dataclasses.dataclass
class SizeReport:
    """
    Per compressed tensor (:attr:`layers`) and totals: the compressed layers
    alone (``numel`` ... ``cr_fp16``) and the whole file (``dense_bytes`` ...
    ``model_cr_fp16``). ``file_bytes`` is ``None`` for a manifest that never
    saw its file.
    """

    path: Optional[str]
    codebook_dtype: str
    entropy_coded: bool
    layers: dict
    numel: int
    nnz: int
    sparsity: float
    paper_cr: Optional[float]
    stored_bytes: int
    bits_per_weight: Optional[float]
    dense_fp32_bytes: int
    dense_fp16_bytes: int
    cr_fp32: Optional[float]
    cr_fp16: Optional[float]
    coded_bytes: int
    entropy_bound_bytes: float
    bound_ratio: Optional[float]
    num_dense_tensors: int
    dense_bytes: int
    file_bytes: Optional[int]
    overhead_bytes: Optional[int]
    model_fp32_bytes: int
    model_fp16_bytes: int
    model_cr: Optional[float]
    model_cr_fp16: Optional[float]

    def to_dict(self):
        """A JSON-ready dict (infinite rates are ``None``)."""
        return dataclasses.asdict(self)

    def to_markdown(self):
        """One table row per compressed tensor, a totals row and the whole-file figures."""

        def num(x, fmt="{:,.2f}"):
            return "∞" if x is None else fmt.format(x)

        header = ("| tensor | shape | K | sparsity | paper CR | bits/weight | stored B | fp32 B | fp16 B "
                  "| entropy bound B | codes | mask |")
        lines = [header, "|" + " --- |" * 12]
        for layer in self.layers.values():
            lines.append(
                f"| {layer.name} | {'x'.join(map(str, layer.shape))} | {layer.num_components} | {layer.sparsity:.1%} "
                f"| {num(layer.paper_cr)} | {layer.bits_per_weight:.3f} | {layer.stored_bytes:,} "
                f"| {layer.dense_fp32_bytes:,} | {layer.dense_fp16_bytes:,} | {layer.entropy_bound_bytes:,.0f} "
                f"| {layer.codes_encoding} | {layer.mask_encoding} |"
            )
        lines.append(
            f"| **compressed layers** | {self.numel:,} weights | | {self.sparsity:.1%} | {num(self.paper_cr)} "
            f"| {num(self.bits_per_weight, '{:.3f}')} | {self.stored_bytes:,} | {self.dense_fp32_bytes:,} "
            f"| {self.dense_fp16_bytes:,} | {self.entropy_bound_bytes:,.0f} | | |"
        )
        lines += [
            "",
            f"- compressed layers: {self.stored_bytes:,} B stored vs {self.dense_fp32_bytes:,} B fp32 "
            f"(CR {num(self.cr_fp32)}x) and {self.dense_fp16_bytes:,} B fp16 (CR {num(self.cr_fp16)}x); "
            f"paper CR {num(self.paper_cr)}x",
            f"- codes + mask: {self.coded_bytes:,} B, {num(self.bound_ratio, '{:.3f}')}x the empirical entropy bound "
            f"({self.entropy_bound_bytes:,.0f} B); {'entropy coded' if self.entropy_coded else 'bit-packed'}, "
            f"{self.codebook_dtype} codebooks",
            f"- whole file: {num(self.file_bytes, '{:,}')} B ({self.dense_bytes:,} B in {self.num_dense_tensors} dense "
            f"tensors, {num(self.overhead_bytes, '{:,}')} B header and manifest) vs dense model "
            f"{self.model_fp32_bytes:,} B fp32 (CR {num(self.model_cr)}x) and {self.model_fp16_bytes:,} B fp16 "
            f"(CR {num(self.model_cr_fp16)}x)",
        ]
        return "\n".join(lines)


def _layer(name, e):
    numel, nnz, k = int(e["numel"]), int(e["nnz"]), int(e["num_components"])
    stored = int(e["stored_bytes"])
    log2k_nnz = math.log2(k) * nnz
    return LayerSize(
        name=name,
        shape=tuple(e["shape"]),
        numel=numel,
        nnz=nnz,
        sparsity=float(e["sparsity"]),
        num_components=k,
        num_codebook=int(e["num_codebook"]),
        codes_encoding=e["codes"]["encoding"],
        mask_encoding=e["mask"]["encoding"],
        part_bytes=dict(e["parts"]),
        stored_bytes=stored,
        bits_per_weight=8 * stored / numel if numel else 0.0,
        paper_cr=_ratio(32 * numel, log2k_nnz),
        dense_fp32_bytes=4 * numel,
        dense_fp16_bytes=2 * numel,
        cr_fp32=_ratio(4 * numel, stored),
        entropy_bound_bytes=(e["entropy_bits"]["codes"] + e["entropy_bits"]["mask"]) / 8,
    )


def _dense_sizes(entry):
    """(stored, fp32, fp16) bytes of a dense tensor."""
    dtype = getattr(torch, entry["dtype"])
    numel = math.prod(entry["shape"])
    stored = numel * torch.empty(0, dtype=dtype).element_size()
    if dtype.is_floating_point:
        return stored, 4 * numel, 2 * numel
    return stored, stored, stored


def size_report(path_or_manifest):
    """
    The :class:`SizeReport` of a compressed file, given its path or its
    manifest (as returned by :func:`~sqs_pyro.export.save` or
    :func:`~sqs_pyro.export.load`).
    """
    if not isinstance(path_or_manifest, dict):  # a file: whatever its manifest holds, a CompressedFileError
        manifest = read_manifest(path_or_manifest)
        try:
            return size_report(manifest)
        except (KeyError, TypeError, ValueError, AttributeError, ArithmeticError) as e:
            raise CompressedFileError(f"{path_or_manifest}: inconsistent manifest ({type(e).__name__}: {e})") from None
    manifest = path_or_manifest
    file_info = manifest.get("file") or {}
    layers = {name: _layer(name, e) for name, e in manifest["compressed"].items()}
    numel = sum(l.numel for l in layers.values())
    nnz = sum(l.nnz for l in layers.values())
    stored = sum(l.stored_bytes for l in layers.values())
    fp32 = sum(l.dense_fp32_bytes for l in layers.values())
    fp16 = sum(l.dense_fp16_bytes for l in layers.values())
    coded = sum(l.part_bytes["codes"] + l.part_bytes["code_counts"] + l.part_bytes["mask"] for l in layers.values())
    bound = sum(l.entropy_bound_bytes for l in layers.values())
    kept = sum(l.numel * (1 - l.sparsity) for l in layers.values())
    dense = [_dense_sizes(e) for e in manifest["dense"].values()]
    dense_bytes = sum(d[0] for d in dense)
    model_fp32 = fp32 + sum(d[1] for d in dense)
    model_fp16 = fp16 + sum(d[2] for d in dense)
    file_bytes = file_info.get("bytes")
    return SizeReport(
        path=file_info.get("path"),
        codebook_dtype=manifest["codebook_dtype"],
        entropy_coded=bool(manifest["entropy_coded"]),
        layers=layers,
        numel=numel,
        nnz=nnz,
        sparsity=1 - kept / numel if numel else 0.0,
        paper_cr=_ratio(32 * numel, sum(math.log2(l.num_components) * l.nnz for l in layers.values())),
        stored_bytes=stored,
        bits_per_weight=_ratio(8 * stored, numel),
        dense_fp32_bytes=fp32,
        dense_fp16_bytes=fp16,
        cr_fp32=_ratio(fp32, stored),
        cr_fp16=_ratio(fp16, stored),
        coded_bytes=coded,
        entropy_bound_bytes=bound,
        bound_ratio=_ratio(coded, bound),
        num_dense_tensors=len(dense),
        dense_bytes=dense_bytes,
        file_bytes=file_bytes,
        overhead_bytes=None if file_bytes is None else file_bytes - stored - dense_bytes,
        model_fp32_bytes=model_fp32,
        model_fp16_bytes=model_fp16,
        model_cr=_ratio(model_fp32, file_bytes),
        model_cr_fp16=_ratio(model_fp16, file_bytes),
    )
