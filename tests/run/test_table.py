"""
The one Markdown table formatter (sqs_pyro.run.table) and its callers: the
committed tables under benchmarks/results/ are what the callers make of the
committed rows, byte for byte, so a change of format fails here.
"""

import importlib.util
import json
import pathlib
import sys

import pytest

from sqs_pyro.baselines.table import format_table, to_markdown
from sqs_pyro.run.main_job import format_table as main_job_table
from sqs_pyro.run.table import field, markdown_table

ROOT = pathlib.Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"


def _load(path):
    sys.path.insert(0, str(path.parent))
    try:
        spec = importlib.util.spec_from_file_location(f"_table_test_{path.stem}", path)
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
    finally:
        sys.path.remove(str(path.parent))
    return module


def test_markdown_table_and_field():
    columns = [("a", field("a")), ("b", field("b", "{:.1%}", missing="?")), ("c", lambda row: row["a"] * 2)]
    assert markdown_table([{"a": "x", "b": 0.25}, {"a": "y", "b": None}], columns) == (
        "| a | b | c |\n| --- | --- | --- |\n| x | 25.0% | xx |\n| y | ? | yy |")
    assert markdown_table([], columns) == "| a | b | c |\n| --- | --- | --- |"
    assert field("n", lambda v: f"<{v}>")({"n": 0}) == "<0>"  # a present zero is a value, not a missing one


def test_baselines_markdown_is_the_committed_file():
    for path in sorted(RESULTS.glob("baselines_*.json")):
        result = json.loads(path.read_text())
        assert to_markdown(result) == path.with_suffix(".md").read_text()


def test_main_job_tables():
    result = json.loads((RESULTS / "baselines_fashion-mnist_small-cnn_K16_s50.json").read_text())
    head = "base small-cnn on fashion-mnist: accuracy 0.9163\n\n"
    job = {"arch": result["arch"], "dataset": result["dataset"], "base_accuracy": result["base_accuracy"]}
    assert main_job_table({**job, "table_rows": result["rows"]}) == head + format_table(result["rows"])
    report = {"cr_fp32": 10.7012, "model_cr": 9.8991}
    sqs = {"sparsity": 0.5000123, "greedy_accuracy": 0.9193, "bma_accuracy": 0.91921,
           "files": {"plain": {"reloaded_accuracy": 0.9193, "bytes": 185491, "report": report}}}
    assert main_job_table({**job, "sqs": sqs}) == head + (
        "| method | sparsity | greedy acc | BMA acc | reloaded acc | file bytes | honest CR (compressed layers) |\n"
        "| --- | --- | --- | --- | --- | --- | --- |\n"
        "| SQS | 0.500 | 0.9193 | 0.9192 | 0.9193 | 185491 | 10.70 (9.90 whole file) |")


def test_examples_tables_are_the_committed_ones():
    pytest.importorskip("transformers")
    common = _load(ROOT / "examples" / "_common.py")
    found = 0
    for pattern, metric, fmt in [("bert_minilm_*.json", "accuracy", "{:.4f}"),
                                 ("llama_smollm2_wikipedia_*.json", "perplexity", "{:.3f}")]:
        for path in sorted(RESULTS.glob(pattern)):
            table = common.markdown_table(json.loads(path.read_text())["rows"], metric, fmt)
            assert "\n" + table + "\n" in path.with_suffix(".md").read_text(), path.name
            found += 1
    assert found >= 2


def test_llm_baselines_markdown_is_the_committed_file():
    pytest.importorskip("transformers")
    harness = _load(ROOT / "benchmarks" / "llm_baselines.py")
    result = json.loads((RESULTS / "llm_baselines_smollm2.json").read_text())
    assert harness.markdown(result) == (RESULTS / "llm_baselines_smollm2.md").read_text()
