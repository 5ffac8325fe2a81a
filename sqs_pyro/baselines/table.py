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

COLUMNS = ("method", "K", "sparsity", "accuracy", "paper CR", "honest CR", "file bytes")


def _x(value):
    return "∞" if value is None else f"{value:.2f}×"


def _pct(value):
    return "—" if value is None else f"{100 * value:.2f}%"


def format_row(row):
    """The Markdown cells of one row."""
    accuracy = _pct(row.get("accuracy"))
    if row.get("bma_accuracy") is not None:
        accuracy += f" (BMA {_pct(row['bma_accuracy'])})"
    honest = _x(row.get("honest_cr"))
    if row.get("model_cr") is not None:
        honest += f" (file {_x(row['model_cr'])})"
    k = row.get("K")
    file_bytes = row.get("file_bytes")
    return (
        row.get("label") or row["method"],
        "—" if k is None else str(k),
        "—" if row.get("sparsity") is None else _fmt_sparsity(row["sparsity"]),
        accuracy,
        _x(row.get("paper_cr")),
        honest,
        "—" if file_bytes is None else f"{file_bytes:,}",
    )


def format_table(rows):
    """
    A Markdown table: method, K, sparsity (achieved), accuracy (of the reloaded
    exported file; Bayesian averaging in brackets for SQS variants), paper CR,
    honest CR (compressed layers' fp32 bytes / their stored bytes, and whole model
    fp32 bytes / file bytes), file bytes.
    """
    lines = ["| " + " | ".join(COLUMNS) + " |", "|" + " --- |" * len(COLUMNS)]
    for row in rows:
        lines.append("| " + " | ".join(format_row(row)) + " |")
    return "\n".join(lines)


def _fmt_sparsity(row_sparsity):
    return f"{100 * row_sparsity:.1f}%"


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
        f"target sparsity {_fmt_sparsity(result['target_sparsity'])}",
        "",
        f"Base accuracy {_pct(result['base_accuracy'])}; {result['train_size']:,} training and "
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
