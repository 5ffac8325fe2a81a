"""The README's example runs as written."""

import pathlib
import re

import pytest

README = pathlib.Path(__file__).resolve().parents[1] / "README.md"


def test_readme_five_line_example_runs(capsys):
    pytest.importorskip("sklearn")
    blocks = re.findall(r"```python\n(.*?)```", README.read_text(), flags=re.S)
    assert blocks, "README has no python example"
    namespace = {}
    exec(compile(blocks[0], str(README), "exec"), namespace)
    out = capsys.readouterr().out
    accuracy = float(re.search(r"accuracy ([0-9.]+)", out).group(1))
    assert accuracy > 0.8, out
    compressed, model = namespace["compressed"], namespace["model"]
    for name in model.sites:
        values = compressed.get_parameter(name).detach()
        assert len(values[values != 0].unique()) <= 4
