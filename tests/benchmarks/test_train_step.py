"""benchmarks/train_step.py: ratios paired by round, the results table, one tiny worker step (no timing claims)."""

import argparse
import importlib.util
import pathlib
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def bench():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location("train_step", BENCHMARKS / "train_step.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCHMARKS))


def _run(variant, r, step, peak):
    return {"variant": variant, "round": r, "step_s": [step, step], "cpu_s": [step, step], "peak_bytes": peak}


def test_ratios_pair_rounds(bench):
    runs = [_run("plain", 0, 1.0, 100), _run("sqs", 0, 1.5, 120), _run("sqs", 1, 4.0, 120), _run("plain", 1, 2.0, 100),
            _run("plain", 2, 3.0, 100), _run("sqs", 2, 3.6, 130)]
    s = bench.summarize(runs)["sqs"]
    assert s["time_ratios_per_round"] == pytest.approx([1.5, 2.0, 1.2])
    assert s["time_ratio"] == pytest.approx(1.5) and s["cpu_ratio"] == pytest.approx(1.5)
    assert s["memory_ratio"] == pytest.approx(1.2)
    result = {"machine": {"cpu": "x", "logical_cpus": 2, "threads": 2, "torch": "t", "python": "p", "device": "cpu"},
              "command": "c", "settings": {"recipe": "sqs", "num_components": 16, "sparsity": 0.5, "rounds": 3,
                                           "steps": 2, "warmup": 1},
              "peak_memory_method": "m", "models": {"small-cnn": {"summary": bench.summarize(runs), "batch": "b"}}}
    assert "1.50x (missed)" in bench.markdown(result)


def test_sqs_step_runs(bench):
    args = argparse.Namespace(model="small-cnn", batch=8, seq_len=None, num_components=4, window="outlier",
                              recipe="sqs", sparsity=0.5)
    for variant in ("plain", "sqs"):
        step, info = bench.make_step(args, variant, "cpu")
        assert all(bool(step().isfinite()) for _ in range(2))
        assert info["parameters"] > 0
