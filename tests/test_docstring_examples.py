"""The runnable examples in the docstrings of the layout's verbs run as written."""

import doctest
import importlib

import pytest


@pytest.mark.parametrize("module", ["sqs_pyro.export.checked", "sqs_pyro.export.compressed_tensor", "sqs_pyro.guides.strategies", "sqs_pyro.run.files",
                                    "sqs_pyro.run.fit", "sqs_pyro.run.results", "sqs_pyro.run.table", "sqs_pyro.run.machine",
                                    "sqs_pyro.data.smollm2"])
def test_docstring_examples(module, tmp_path, monkeypatch):
    monkeypatch.chdir(tmp_path)
    result = doctest.testmod(importlib.import_module(module))
    assert result.attempted > 0 and result.failed == 0
