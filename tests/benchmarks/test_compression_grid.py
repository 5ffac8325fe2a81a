import importlib.util
import pathlib
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def grid():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location("compression_grid", BENCHMARKS / "compression_grid.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCHMARKS))


def _row(method, accuracy, honest_cr, sparsity=0.5):
    return {"method": method, "label": method, "accuracy": accuracy, "bma_accuracy": None, "sparsity": sparsity,
            "paper_cr": 16.0, "honest_cr": honest_cr, "file_bytes": 1000}


def _points():
    base = {"method": "base", "accuracy": 0.90}
    return [
        {"K": 16, "target_sparsity": 0.5, "base_accuracy": 0.90,
         "rows": [base, _row("rtn", 0.899, 10.0), _row("deep-compression", 0.902, 10.0), _row("sqs", 0.897, 11.0)]},
        {"K": 4, "target_sparsity": 0.9, "base_accuracy": 0.90,
         "rows": [base, _row("rtn", 0.80, 50.0), _row("deep-compression", 0.893, 45.0), _row("sqs", 0.896, 48.0)]},
    ]


def test_goal_check_takes_the_best_ratio_within_the_drop(grid):
    goal = grid.goal_check(_points(), max_drop=0.5)
    assert goal["best"]["sqs"]["honest_cr"] == 48.0  # 0.4 points drop
    assert goal["best"]["deep-compression"]["honest_cr"] == 10.0  # 45x drops 0.7 points
    assert goal["best"]["rtn"]["honest_cr"] == 10.0  # 50x drops 10 points
    assert goal["sqs_over_best_baseline"] == pytest.approx(4.8) and goal["met"]


def test_goal_not_met_when_a_baseline_is_as_good(grid):
    goal = grid.goal_check(_points(), max_drop=1.0)  # now Deep Compression's 45x counts
    assert goal["sqs_over_best_baseline"] == pytest.approx(48 / 45) and not goal["met"]


def test_markdown_lists_every_row_and_the_verdict(grid):
    points = _points()
    text = grid.markdown(points, grid.goal_check(points, 0.5), "test machine")
    assert "| 16 | 50% | sqs |" in text and "| 4 | 90% | sqs |" in text and "test machine" in text and "goal (≥ 1.5×) met" in text


def test_markdown_says_when_sqs_never_stays_within_the_drop(grid):
    points = _points()
    for p in points:
        for row in p["rows"]:
            if row["method"] == "sqs":
                row["accuracy"] = 0.885 if p["K"] == 16 else 0.88
    goal = grid.goal_check(points, 0.5)
    assert "sqs" not in goal["best"] and not goal["met"]
    text = grid.markdown(points, goal, "test machine", base="runs/x/base.pt")
    assert "at no grid point (smallest drop +1.50 at K = 16, 50%)" in text and "not met" in text
    assert "--base runs/x/base.pt" in text
