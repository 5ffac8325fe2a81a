"""The consistency simulation (method.md §9): a small run, its tables, its figure and its CLI."""

import argparse
import json
import math

import pytest
import torch

from sqs_pyro.analysis.consistency import PREDICTORS, ConsistencyConfig, make_teacher, run_consistency
from sqs_pyro.analysis.consistency_cli import add_parser

# Smaller than --smoke: two sizes, one K ablation and one lambda0 ablation, in this process.
TINY = dict(sizes=(300, 600), pretrain_steps=200, steps=250, batch_size=300, num_test=2000, posterior_draws=2,
            small_components=(2,), large_inclusion_probs=(0.9,), compare_plug_in=False, workers=1)


@pytest.fixture(scope="module")
def result():
    return run_consistency(ConsistencyConfig.smoke(**TINY))


def test_teacher_is_sparse_and_quantized():
    cfg = ConsistencyConfig()
    net, relevant = make_teacher(cfg)
    weights = [m.weight for m in net if isinstance(m, torch.nn.Linear)]
    total = sum(w.numel() for w in weights)
    nonzero = sum(int((w != 0).sum()) for w in weights)
    assert 0.80 <= 1 - nonzero / total <= 0.90
    assert all(set(w[w != 0].tolist()) <= set(cfg.teacher_levels) for w in weights)
    irrelevant = [j for j in range(cfg.num_inputs) if j not in relevant.tolist()]
    assert (weights[0][:, irrelevant] == 0).all() and (weights[0][:, relevant] != 0).any(0).all()
    again, _ = make_teacher(cfg)
    assert all(torch.equal(a.weight, b.weight) for a, b in zip(net[::2], again[::2]))


def test_smoke_run_returns_finite_numbers_with_the_right_shapes(result):
    assert [r["n"] for r in result.grid] == [300, 600]
    assert sorted(r["setting"] for r in result.ablations) == ["K = 2", "lambda0 = 0.9"]
    for row in result.grid + result.ablations:
        for metric in ("excess_risk", "hellinger2"):
            assert set(row[metric]) == set(PREDICTORS)
            assert all(math.isfinite(v) and v >= 0 for v in row[metric].values())
        assert all(0 <= h <= 1 for h in row["hellinger2"].values())
        assert len(row["input_inclusion"]) == result.config.num_inputs
        assert len(row["codebook_used"]) == 3 and len(row["nonzero_per_layer"]) == 3
    assert set(result.slopes) == {f"{m}.{p}" for m in ("excess_risk", "hellinger2") for p in PREDICTORS}
    assert all(math.isfinite(v) for v in result.slopes.values())
    assert -1.0 < result.reference_slope < -0.8
    json.dumps(result.to_dict())  # serializable
    md = result.to_markdown()
    assert "| 600 |" in md and "K = 2" in md and "slopes" in md


def test_gates_of_irrelevant_inputs_are_lower_than_of_relevant_ones(result):
    last = result.grid[-1]
    assert last["inclusion_irrelevant"] < last["inclusion_relevant"]
    assert last["gate_irrelevant"] < last["gate_relevant"]


def test_plot_is_written(result, tmp_path):
    fig = result.plot(tmp_path / "figs" / "consistency.png")
    assert len(fig.axes) == 3
    for suffix in (".png", ".svg"):
        assert (tmp_path / "figs" / f"consistency{suffix}").stat().st_size > 1000


def test_config_is_checked():
    with pytest.raises(ValueError, match="plug_in"):
        ConsistencyConfig(plug_in="median")
    with pytest.raises(ValueError, match="sizes"):
        ConsistencyConfig(sizes=())


def test_cli_parses_and_writes_outputs(tmp_path, monkeypatch, capsys):
    import sqs_pyro.analysis.consistency_cli as cli

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["consistency", "--smoke", "--out", str(tmp_path), "--sizes", "200", "400",
                              "--steps", "5", "--workers", "1", "--no-ablations", "--quiet"])
    assert args.handler is cli.consistency_command
    cfg = cli._config(args)
    assert cfg.sizes == (200, 400) and cfg.steps == 5 and cfg.small_components == () and cfg.workers == 1
    monkeypatch.setattr(cli, "_config", lambda a: ConsistencyConfig.smoke(
        **{**TINY, "sizes": (200, 400), "steps": 5, "pretrain_steps": 5, "num_test": 200,
           "small_components": (), "large_inclusion_probs": ()}))
    assert args.handler(args) == 0
    for name in ("consistency.json", "consistency.md", "consistency.png", "consistency.svg"):
        assert (tmp_path / name).exists()
    assert "| 400 |" in capsys.readouterr().out
