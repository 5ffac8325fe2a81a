"""benchmarks/recipe_study.py: the ablation's variants and the per-point verdicts (no training here)."""

import importlib.util
import pathlib
import sys

import pytest

BENCHMARKS = pathlib.Path(__file__).resolve().parents[2] / "benchmarks"


@pytest.fixture(scope="module")
def study():
    sys.path.insert(0, str(BENCHMARKS))
    try:
        spec = importlib.util.spec_from_file_location("recipe_study", BENCHMARKS / "recipe_study.py")
        module = importlib.util.module_from_spec(spec)
        spec.loader.exec_module(module)
        yield module
    finally:
        sys.path.remove(str(BENCHMARKS))


def test_ablation_goes_from_the_paper_recipe_to_the_default(study):
    from sqs_pyro.run.config import CompressConfig
    from sqs_pyro.run.recipes import RECIPES

    v = study.variants()
    assert list(v)[0] == "paper" and list(v)[-1] == "sqs"
    everything = {"recipe": "paper", "prune_start": 0.0, **{k: value for k, value, _ in study.CHANGES}}
    resolved = CompressConfig(**everything).resolved()
    assert all(getattr(resolved, k) == RECIPES["sqs"][k] for k in RECIPES["sqs"])
    assert f"cumulative:{len(study.CHANGES) - 1}" in v and f"cumulative:{len(study.CHANGES)}" not in v
    for key, value, _ in study.CHANGES:  # each change alone differs from the paper in that field only
        alone = CompressConfig(**v[f"paper+{key}"][1]).resolved()
        paper = CompressConfig(recipe="paper").resolved()
        changed = {f for f in RECIPES["sqs"] if getattr(alone, f) != getattr(paper, f)}
        assert key in changed and changed <= {key, "prune_start"}


def _rows(method, accs, cr=10.0):
    return [{"method": method, "label": method, "accuracy": a, "honest_cr": cr} for a in accs]


def test_verdict_counts_a_deficit_beyond_one_sd_as_a_loss(study):
    results = [
        {"K": 4, "target_sparsity": 0.9, "method": "sqs", "rows": _rows("sqs", [0.900, 0.902, 0.904], 48.0)},
        {"K": 4, "target_sparsity": 0.9, "method": "deep-compression",
         "rows": _rows("deep-compression", [0.910, 0.911, 0.912], 48.0)},
        {"K": 8, "target_sparsity": 0.5, "method": "sqs", "rows": _rows("sqs", [0.915, 0.917, 0.916], 20.0)},
        {"K": 8, "target_sparsity": 0.5, "method": "deep-compression",
         "rows": _rows("deep-compression", [0.914, 0.917, 0.915], 20.0)},
    ]
    text = "\n".join(study.verdicts(results, base_acc=0.918))
    assert "| 4 | 90% |" in text and "loss" in text.split("| 4 | 90% |")[1].split("\n")[0]
    assert "tie" in text.split("| 8 | 50% |")[1].split("\n")[0]
    assert "- sqs: 20.00×" in text  # only the K = 8 point is within 0.5 points of the base


def test_the_best_compression_names_the_point_it_came_from(study):
    results = [  # the larger CR comes first: a later, smaller one must not relabel it
        {"K": 8, "target_sparsity": 0.75, "method": "deep-compression", "rows": _rows("deep-compression", [0.915], 20.0)},
        {"K": 16, "target_sparsity": 0.5, "method": "deep-compression", "rows": _rows("deep-compression", [0.916], 10.0)},
    ]
    text = "\n".join(study.verdicts(results, base_acc=0.918))
    assert "- deep-compression: 20.00× (K = 8, 75%)" in text
