"""
Run the code of docs/statisticians.md ("For statisticians"), block by block,
from the repository root: it rewrites the page's figures in docs/figures/ and
prints the numbers of its plug-in comparison.

    python examples/statisticians.py

The page is the single source: tests/test_docs_statisticians.py runs the same
blocks in a temporary directory.
"""

import os
import pathlib
import re
import time

ROOT = pathlib.Path(__file__).resolve().parents[1]
PAGE = ROOT / "docs" / "statisticians.md"


def code_blocks(page=PAGE):
    """The ```python blocks of the page, in order."""
    return re.findall(r"```python\n(.*?)```", pathlib.Path(page).read_text(), flags=re.S)


def run_page(page=PAGE, cwd=ROOT):
    """Execute the page's blocks in one namespace with ``cwd`` as working directory; returns the namespace."""
    namespace = {"__name__": "statisticians_page"}
    old = os.getcwd()
    os.chdir(cwd)
    try:
        for i, block in enumerate(code_blocks(page)):
            exec(compile(block, f"{page}:block{i}", "exec"), namespace)
    finally:
        os.chdir(old)
    return namespace


def main():
    start = time.perf_counter()
    ns = run_page()
    for plug_in, r in ns["results"].items():
        print(plug_in, {k: round(float(v), 4) for k, v in r.items()})
    print(f"{time.perf_counter() - start:.1f} s")


if __name__ == "__main__":
    main()
