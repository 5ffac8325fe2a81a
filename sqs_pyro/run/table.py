"""
The one Markdown table formatter. Columns are declared once, as ``(header,
cell)`` pairs where ``cell(row) -> str``; :func:`field` makes the usual cell (a
row's value under a key, formatted, or a dash when it is missing) and
:func:`markdown_table` renders rows of dicts. The main job, the baselines, the
transformers examples and the benchmarks write their tables with it.

Example::

    >>> columns = [("method", field("method")), ("accuracy", field("accuracy", "{:.2%}")),
    ...            ("file bytes", field("file_bytes", "{:,}"))]
    >>> print(markdown_table([{"method": "SQS", "accuracy": 0.9193, "file_bytes": 185491}, {"method": "base"}], columns))
    | method | accuracy | file bytes |
    | --- | --- | --- |
    | SQS | 91.93% | 185,491 |
    | base | — | — |
"""

__all__ = ["MISSING", "field", "markdown_table"]

#: the cell of a missing value
MISSING = "—"


def field(key, fmt="{}", missing=MISSING):
    """
    The cell of ``row[key]`` formatted with ``fmt`` (a format string or a function
    ``value -> str``), or ``missing`` when the row has no value there (absent or ``None``).

        >>> field("K")({"K": 16}), field("K")({"K": None}), field("cr", "{:.2f}×", missing="∞")({})
        ('16', '—', '∞')
    """

    def cell(row):
        value = row.get(key)
        if value is None:
            return missing
        return fmt.format(value) if isinstance(fmt, str) else fmt(value)

    return cell


def markdown_table(rows, columns):
    """``rows`` (dicts) as a Markdown table of ``columns``, ``(header, cell)`` pairs with ``cell(row) -> str``."""
    lines = ["| " + " | ".join(header for header, _ in columns) + " |", "|" + " --- |" * len(columns)]
    lines += ["| " + " | ".join(cell(row) for _, cell in columns) + " |" for row in rows]
    return "\n".join(lines)
