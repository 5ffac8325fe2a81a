"""
The one results writer: a result dict as ``<stem>.json`` and its Markdown as
``<stem>.md``, atomically, into every folder asked for (the run directory,
``benchmarks/results``). The main job, the baselines' table, the examples and
the benchmarks all write through :func:`write_results`.

Example::

    >>> import os, tempfile
    >>> d = tempfile.mkdtemp()
    >>> [os.path.basename(p) for p in write_results({"rows": []}, "# table", "demo", [d, None])]
    ['demo.json', 'demo.md']
    >>> open(os.path.join(d, "demo.md")).read()
    '# table\\n'
"""

import json
import os

from ..io import atomic_write

__all__ = ["write_results"]


def write_results(results, markdown, stem, dirs):
    """
    Write ``results`` as ``<stem>.json`` (indented, ``default=str``) and, when
    ``markdown`` is not ``None``, ``markdown`` as ``<stem>.md`` into every folder
    of ``dirs`` (``None`` or ``""`` skipped; folders created), each file atomically
    and ending with a newline.

    :returns: the written paths.
    """
    paths = []
    for d in dirs:
        if not d:
            continue
        os.makedirs(d, exist_ok=True)
        texts = [(".json", json.dumps(results, indent=2, default=str) + "\n")]
        if markdown is not None:
            texts.append((".md", markdown.rstrip("\n") + "\n"))
        for suffix, text in texts:
            path = os.path.join(d, stem + suffix)
            with atomic_write(path, "w") as f:
                f.write(text)
            paths.append(path)
    return paths
