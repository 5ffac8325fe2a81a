"""
The comparison table and the result files.

Every row is a dict (see :func:`sqs_pyro.baselines.run_baselines`);
:func:`format_table` renders the columns method, K, sparsity, accuracy, paper CR,
honest CR and file bytes as Markdown; :func:`write_results` writes the rows as
JSON and the table as Markdown, named after the dataset, architecture, ``K`` and
sparsity.

Example::

    >>> row = {"method": "rtn", "label": "magnitude + RTN", "K": 4, "sparsity": 0.5, "accuracy": 0.8123,
    ...        "paper_cr": 32.0, "honest_cr": 9.5, "model_cr": 7.25, "file_bytes": 12345}
    >>> print(format_table([row]).splitlines()[2])
    | magnitude + RTN | 4 | 50.0% | 81.23% | 32.00× | 9.50× (file 7.25×) | 12,345 |
"""

import re

from sqs_pyro.run.results import write_results as write_run_results
from sqs_pyro.run.table import field, markdown_table


def _joined(*cells):
    """One cell made of several, side by side."""
    return lambda row: "".join(cell(row) for cell in cells)


#: the table's columns (:func:`~sqs_pyro.run.table.markdown_table`)
COLUMNS = (
    ("method", lambda row: row.get("label") or row["method"]),
    ("K", field("K")),
    ("sparsity", field("sparsity", "{:.1%}")),
    ("accuracy", _joined(field("accuracy", "{:.2%}"), field("bma_accuracy", " (BMA {:.2%})", missing=""))),
    ("paper CR", field("paper_cr", "{:.2f}×", missing="∞")),
    ("honest CR", _joined(field("honest_cr", "{:.2f}×", missing="∞"), field("model_cr", " (file {:.2f}×)", missing=""))),
    ("file bytes", field("file_bytes", "{:,}")),
)


def format_table(rows):
    """
    A Markdown table: method, K, sparsity (achieved), accuracy (of the reloaded
    exported file; Bayesian averaging in brackets for SQS variants), paper CR,
    honest CR (compressed layers' fp32 bytes / their stored bytes, and whole model
    fp32 bytes / file bytes), file bytes.
    """
    return markdown_table(rows, COLUMNS)


def result_stem(dataset, arch, k, sparsity, train_size=None):
    """``baselines_<dataset>_<arch>_K<K>_s<sparsity %>[_n<train size>]`` (file-name safe)."""
    stem = f"baselines_{dataset}_{arch}_K{k}_s{round(100 * sparsity)}"
    if train_size is not None:
        stem += f"_n{train_size}"
    return re.sub(r"[^A-Za-z0-9_.-]+", "-", stem)


def to_markdown(result):
    """The Markdown file: a title, the setting, the table and what each method did."""
    head = [
        f"# Baselines: {result['dataset']['name']}, {result['arch']}, K = {result['K']}, "
        f"target sparsity {result['target_sparsity']:.1%}",
        "",
        f"Base accuracy {result['base_accuracy']:.2%}; {result['train_size']:,} training and "
        f"{result['test_size']:,} test examples; compression budget {result['epochs']} epochs; device "
        f"{result['device']}; total {result['seconds']:.0f} s.",
        "Accuracy is that of the network reloaded from the exported file (same writer for every method). "
        "Sparsity is the achieved fraction of pruned weights over the compressed layers. Paper CR = "
        "32 / (log2 K x nonzero fraction); honest CR = dense fp32 bytes of the compressed layers / their "
        "stored bytes (file: whole model fp32 bytes / file bytes).",
        "",
        format_table(result["rows"]),
        "",
    ]
    notes = [f"- **{row.get('label') or row['method']}**: {row['notes']}" for row in result["rows"] if row.get("notes")]
    notes += [f"- **warning, {row.get('label') or row['method']}**: {row['warning']}" for row in result["rows"]
              if row.get("warning")]
    timing = [f"{row.get('label') or row['method']} {row['seconds']:.0f} s" for row in result["rows"]
              if row.get("seconds") is not None]
    tail = notes + ([f"- seconds: {'; '.join(timing)}"] if timing else [])
    if result.get("caveat"):
        tail.append(f"- {result['caveat']}")
    return "\n".join(head + tail) + "\n"


def write_results(result, *dirs):
    """
    Write ``result`` (a dict with ``rows``, see :func:`to_markdown`) as
    ``<stem>.json`` and ``<stem>.md`` into every folder of ``dirs`` (``None`` skipped).

    :returns: the written paths.
    """
    return write_run_results(result, to_markdown(result), result["stem"], dirs)
