"""
Shared pieces of the transformers examples: export-and-reload checks, result
rows, Markdown tables, timing. Not part of the library API.
"""

import json
import os
import time

import torch

from sqs_pyro.run.blockwise import apply_compressed  # noqa: F401  (re-exported for the examples)
from sqs_pyro.run.results import write_results  # noqa: F401  (re-exported for the examples)
from sqs_pyro.io import atomic_write
from sqs_pyro.models.transformers_io import export_pretrained
from sqs_pyro.run.table import field
from sqs_pyro.run.table import markdown_table as _markdown_table

#: The training choices the transformer examples were measured with (learned gates, frozen anchors, no
#: codebook refit, constant lr): the CNN's default recipe (sqs_pyro.run.recipes) is not measured on them yet.
TRANSFORMER_RECIPE = dict(gates="learned", anchors="frozen", refit_codebooks=False, lr_schedule="constant")


class Timer:
    """``with Timer() as t: ...`` then ``t.seconds``."""

    def __enter__(self):
        self.start = time.perf_counter()
        return self

    def __exit__(self, *exc):
        self.seconds = time.perf_counter() - self.start


def export_and_reload(path, net, compressed, *, metadata=None, entropy_coded=True):
    """
    Save ``net`` with ``compressed`` (plain, and entropy coded beside it), the
    plain file read back as a fresh transformers model and checked bit-exact to
    ``net`` (:func:`~sqs_pyro.models.transformers_io.export_pretrained`).

    :returns: ``(reloaded_net, info)``: the plain file's model and the size reports of both files.
    """
    # the entropy-coded twin is written and measured, not reloaded: a reload builds a model from torch's global
    # random generator, and the grid's later fits draw from it (their numbers stay those of the committed results)
    files = export_pretrained(path, net, compressed, metadata=metadata, entropy_coded=entropy_coded,
                              reload_entropy_coded=False)
    info = {"path": files["plain"].path, "report": files["plain"].report}
    if entropy_coded:
        info["ec_path"], info["ec_report"] = files["entropy_coded"].path, files["entropy_coded"].report
    return files["plain"].reloaded, info


def size_columns(info):
    """Honest size figures of an export (plain file, and entropy coded when present)."""
    rep = info["report"]
    out = {
        "paper_cr": rep.paper_cr,
        "bits_per_weight": rep.bits_per_weight,
        "layers_cr_fp32": rep.cr_fp32,
        "file_bytes": rep.file_bytes,
        "model_cr_fp32": rep.model_cr,
        "sparsity": rep.sparsity,
    }
    if "ec_report" in info:
        ec = info["ec_report"]
        out.update(ec_bits_per_weight=ec.bits_per_weight, ec_file_bytes=ec.file_bytes, ec_model_cr_fp32=ec.model_cr,
                   ec_layers_cr_fp32=ec.cr_fp32)
    return out


def markdown_table(rows, metric, metric_fmt="{:.4f}"):
    """Rows of dicts as a Markdown table (method, K, windows, sparsity, metric, honest bits, CRs, bytes)."""
    columns = [
        ("method", field("method")),
        ("K", field("K")),
        ("windows", field("window")),
        ("sparsity", field("sparsity", "{:.1%}")),
        (metric, field(metric, metric_fmt)),
        ("bits/weight (plain)", field("bits_per_weight", "{:.3f}")),
        ("bits/weight (entropy coded)", field("ec_bits_per_weight", "{:.3f}")),
        ("paper CR", field("paper_cr", "{:.2f}×")),
        ("layers CR vs fp32 (EC)", field("ec_layers_cr_fp32", "{:.2f}×")),
        ("file bytes (EC)", field("ec_file_bytes", "{:,}")),
        ("whole-model CR vs fp32 (EC)", field("ec_model_cr_fp32", "{:.2f}×")),
    ]
    return _markdown_table(rows, columns)


class ConfigRows:
    """
    Result rows of each configuration of an example's grid, written to
    ``<out_dir>/rows/<tag>.json`` (atomically) as soon as the configuration ends,
    so that a run started again with ``--resume`` skips what is done. Rows are
    reused only under the same ``settings``; other settings raise an error.

        >>> import tempfile
        >>> done = ConfigRows(tempfile.mkdtemp(), resume=True, settings={"steps": 8})
        >>> done.get("K8") is None
        True
        >>> done.put("K8", [{"method": "SQS", "perplexity": 30.0}])
        >>> done.get("K8")[0]["perplexity"]
        30.0
    """

    def __init__(self, out_dir, resume, settings):
        self.dir = os.path.join(out_dir, "rows")
        self.resume = resume
        self.settings = json.loads(json.dumps(settings, default=str))
        self.reused = []

    def _path(self, tag):
        return os.path.join(self.dir, f"{tag}.json")

    def get(self, tag):
        """The saved rows of ``tag`` when resuming and it finished before, else None."""
        path = self._path(tag)
        if not (self.resume and os.path.exists(path)):
            return None
        with open(path) as f:
            saved = json.load(f)
        if saved["settings"] != self.settings:
            changed = sorted(k for k in set(saved["settings"]) | set(self.settings)
                             if saved["settings"].get(k) != self.settings.get(k))
            raise ValueError(f"{path} was computed with other settings ({', '.join(changed)} differ): "
                             "resume with the same options, or use another --out")
        self.reused.append(tag)
        return saved["rows"]

    def put(self, tag, rows):
        os.makedirs(self.dir, exist_ok=True)
        with atomic_write(self._path(tag), "w") as f:
            f.write(json.dumps({"settings": self.settings, "rows": rows}, indent=2, default=str) + "\n")


def set_threads(num_threads):
    if num_threads:
        torch.set_num_threads(int(num_threads))
