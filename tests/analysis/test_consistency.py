"""The consistency simulation (docs/method.md §9): runs, convergence, summaries, determinism, the committed results."""

import argparse
import doctest
import importlib
import json
import math
import pathlib
import shutil
import subprocess

import pytest
import torch

from sqs_pyro.analysis.consistency import ConsistencyConfig, codebook_recovery, make_teacher, run_consistency
from sqs_pyro.analysis.consistency_cli import add_parser
from sqs_pyro.analysis.consistency_result import (
    HAND_WRITTEN, PREDICTORS, ConsistencyResult, mean_band, seed_slopes, t_quantile,
)

ROOT = pathlib.Path(__file__).resolve().parents[2]
RESULTS = ROOT / "benchmarks" / "results"

# Smaller than --smoke: two seeds, two sizes, one ablation on one seed, in this process.
# The tolerance is loose, so that fits converge after 3 levels x 2 windows x 2 checks x 10 steps.
TINY = dict(seeds=(0, 1), sizes=(300, 600), pretrain_steps=100, max_steps=400, steps_growth=0.0, batch_size=300,
            check_every=10, patience=2, elbo_tol=1e6, num_test=2000, posterior_draws=2, monitor_particles=2,
            ablations=("K = 2",), ablation_seeds=1, workers=1)
# Smaller still, for the tests that run twice.
MINI = dict(TINY, sizes=(200, 400), pretrain_steps=40, max_steps=120, ablations=(), num_test=500)


def _numbers(result):
    # Everything but the timings.
    d = json.loads(json.dumps(result.to_dict()))
    d.pop("wall_time_s")
    for row in d["runs"] + d["ablations"]:
        row.pop("seconds")
    return d


@pytest.fixture(scope="module")
def result():
    return run_consistency(ConsistencyConfig.smoke(**TINY))


def test_teacher_is_sparse_and_quantized_and_differs_between_seeds():
    cfg = ConsistencyConfig()
    net, relevant = make_teacher(cfg)
    weights = [m.weight for m in net if isinstance(m, torch.nn.Linear)]
    total = sum(w.numel() for w in weights)
    nonzero = sum(int((w != 0).sum()) for w in weights)
    assert 0.80 <= 1 - nonzero / total <= 0.90
    assert all(set(w[w != 0].tolist()) <= set(cfg.teacher_levels) for w in weights)
    irrelevant = [j for j in range(cfg.num_inputs) if j not in relevant.tolist()]
    assert (weights[0][:, irrelevant] == 0).all() and (weights[0][:, relevant] != 0).any(0).all()
    again, _ = make_teacher(cfg, cfg.seeds[0])
    assert all(torch.equal(a.weight, b.weight) for a, b in zip(net[::2], again[::2]))
    other, _ = make_teacher(cfg, cfg.seeds[1])
    assert not all(torch.equal(a.weight, b.weight) for a, b in zip(net[::2], other[::2]))


def test_runs_have_finite_numbers_and_the_right_shapes(result):
    assert [(r["seed"], r["n"]) for r in result.runs] == [(0, 300), (0, 600), (1, 300), (1, 600)]
    assert [(r["seed"], r["setting"], r["num_components"]) for r in result.ablations] == [(0, "K = 2", 2)]
    for row in result.runs + result.ablations:
        for metric in ("excess_risk", "hellinger2"):
            assert set(row[metric]) == set(PREDICTORS)
            assert all(math.isfinite(v) and v >= 0 for v in row[metric].values())
        assert all(0 <= h <= 1 for h in row["hellinger2"].values())
        assert len(row["input_inclusion"]) == result.config.num_inputs
        assert len(row["codebook_used"]) == 3 and len(row["codebook_recovery"]) == 3
        fit = row["fit"]
        assert 0 < fit["steps"] <= fit["step_cap"] and fit["elbo_history"][0][0] == 0
        assert not fit["converged"] or fit["lr_decays"] == result.config.max_decays
    slopes = result.slopes
    assert set(slopes) == {f"{m}.{p}" for m in ("excess_risk", "hellinger2") for p in PREDICTORS}
    s = slopes["excess_risk.greedy"]
    assert set(s["per_seed"]) == {"0", "1"} and math.isfinite(s["mean"]) and s["low"] <= s["mean"] <= s["high"]
    assert -1.0 < result.reference_slope < -0.8
    json.dumps(result.to_dict())  # serializable
    md = result.to_markdown()
    assert "| 600 |" in md and "K = 2" in md and "slopes" in md and "Codebook recovery" in md


def test_the_elbo_rises_and_fits_converge_under_a_loose_tolerance(result):
    for row in result.runs:
        fit = row["fit"]
        assert fit["converged"] and fit["lr_decays"] == result.config.max_decays and fit["steps"] == 120
        assert fit["elbo"] > fit["elbo_start"]


def test_gates_of_irrelevant_inputs_are_lower_than_of_relevant_ones(result):
    for row in result.runs:
        if row["n"] == 600:
            assert row["inclusion_irrelevant"] < row["inclusion_relevant"]


def test_a_run_that_hits_its_step_cap_is_flagged_and_left_out(tmp_path):
    res = run_consistency(ConsistencyConfig.smoke(**{**MINI, "seeds": (0,), "sizes": (200, 400), "max_steps": 30,
                                                     "elbo_tol": -1e9}))
    assert all(not r["fit"]["converged"] and r["fit"]["steps"] == 30 for r in res.runs)
    assert res.unconverged == [(0, 200, "default"), (0, 400, "default")]
    assert [row["converged"] for row in res.summary()] == [0, 0]
    assert all(math.isnan(row["excess_risk"]["greedy"][0]) for row in res.summary())
    assert math.isnan(res.slopes["excess_risk.greedy"]["mean"])
    md = res.to_markdown()
    assert "seed 0 n = 200 (default)" in md and "**no**" in md and "| 0/1 |" in md
    res.plot(tmp_path / "consistency.png")  # every value NaN: still a figure
    assert (tmp_path / "consistency.png").stat().st_size > 1000


def test_the_same_configuration_gives_the_same_numbers_twice():
    cfg = ConsistencyConfig.smoke(**MINI)
    first, second = run_consistency(cfg), run_consistency(cfg)
    assert _numbers(first) == _numbers(second)
    for res in (first, second):  # the tables, timings aside
        res.wall_time_s = 0.0
        for row in res.runs:
            row["seconds"] = 0.0
    assert first.to_markdown() == second.to_markdown()


def test_another_seed_gives_other_numbers():
    a = run_consistency(ConsistencyConfig.smoke(**{**MINI, "seeds": (0,), "sizes": (200,)}))
    b = run_consistency(ConsistencyConfig.smoke(**{**MINI, "seeds": (5,), "sizes": (200,)}))
    assert a.runs[0]["excess_risk"] != b.runs[0]["excess_risk"]


def test_codebook_recovery_is_up_to_a_positive_scale():
    levels = [-1.0, -0.5, 0.5, 1.0]
    exact = codebook_recovery(levels, [-3.0, -1.5, 1.5, 3.0])
    assert exact["raw"] == pytest.approx(1.0) and exact["error"] < 2e-3 and exact["spurious"] < 2e-3
    assert exact["scale"] == pytest.approx(1 / 3, rel=3e-3)
    # one sign only: no positive scale reaches the negative levels
    one_sign = codebook_recovery(levels, [0.2, 0.4])
    assert one_sign["error"] >= 1.0 - 1e-9
    # an extra value far from every level is spurious, not an error
    extra = codebook_recovery(levels, [-2.0, -1.0, 1.0, 2.0, 0.1])
    assert extra["error"] < 2e-3 and extra["spurious"] == pytest.approx(0.45, abs=2e-3)
    assert math.isnan(codebook_recovery(levels, [])["error"])


@pytest.mark.parametrize("module", ["consistency", "consistency_config", "consistency_result"])
def test_docstring_examples(module):
    result = doctest.testmod(importlib.import_module(f"sqs_pyro.analysis.{module}"))
    assert result.attempted > 0 and result.failed == 0


def test_bands_and_slopes():
    m, lo, hi = mean_band([0.01, 0.02, 0.04])
    assert m == pytest.approx(0.02) and lo < m < hi
    assert math.isnan(mean_band([0.1])[1]) and math.isnan(mean_band([])[0])
    assert mean_band([1.0, 3.0], log=False)[0] == pytest.approx(2.0)
    assert t_quantile(3) == 3.182 and t_quantile(1000) == 1.96 and 2.042 < t_quantile(25) < 2.086
    runs = [{"seed": s, "n": n, "e": {"p": (s + 1) * n ** -0.8}} for s in (0, 1) for n in (100, 1000, 10000)]
    assert all(v == pytest.approx(-0.8) for v in seed_slopes(runs, "e", "p").values())


def test_the_json_gives_back_the_same_tables(result):
    again = ConsistencyResult.from_dict(json.loads(json.dumps(result.to_dict())))
    assert again.to_markdown() == result.to_markdown()


def test_plot_is_written(result, tmp_path):
    fig = result.plot(tmp_path / "figs" / "consistency.png")
    assert len(fig.axes) == 3
    for suffix in (".png", ".svg"):
        assert (tmp_path / "figs" / f"consistency{suffix}").stat().st_size > 1000


def test_config_is_checked():
    with pytest.raises(ValueError, match="plug_in"):
        ConsistencyConfig(plug_in="median")
    with pytest.raises(ValueError, match="anchors"):
        ConsistencyConfig(anchors="loose")
    with pytest.raises(ValueError, match="sizes"):
        ConsistencyConfig(sizes=())
    with pytest.raises(ValueError, match="seeds"):
        ConsistencyConfig(seeds=(1, 1))
    with pytest.raises(ValueError, match="ablations"):
        ConsistencyConfig(ablations=("K = 3",))
    full = ConsistencyConfig.full()
    assert max(full.sizes) == 64000 and len(full.seeds) >= 8
    assert ConsistencyConfig.from_dict(full.to_dict()) == full


def test_cli_parses_and_writes_outputs_with_provenance(tmp_path, monkeypatch, capsys):
    import sqs_pyro.analysis.consistency_cli as cli

    parser = argparse.ArgumentParser()
    add_parser(parser.add_subparsers(dest="command"))
    args = parser.parse_args(["consistency", "--smoke", "--out", str(tmp_path), "--sizes", "200", "400",
                              "--seeds", "3", "4", "--max-steps", "5", "--workers", "1", "--no-ablations", "--quiet"])
    assert args.handler is cli.consistency_command
    cfg = cli._config(args)
    assert cfg.sizes == (200, 400) and cfg.seeds == (3, 4) and cfg.max_steps == 5 and cfg.ablations == ()
    full = cli._config(parser.parse_args(["consistency", "--full"]))
    assert max(full.sizes) == 64000
    monkeypatch.setattr(cli, "_config", lambda a: ConsistencyConfig.smoke(**{**MINI, "seeds": (0,)}))
    assert args.handler(args) == 0
    for name in ("consistency.json", "consistency.md", "consistency.png", "consistency.svg"):
        assert (tmp_path / name).exists()
    assert "| 400 |" in capsys.readouterr().out
    record = json.loads((tmp_path / "consistency.json").read_text())["provenance"]
    assert set(record) >= {"command", "commit", "dirty", "versions", "machine"}
    assert record["versions"]["torch"] == torch.__version__


# -- the committed results -------------------------------------------------------------------------
def _committed():
    path = RESULTS / "consistency.json"
    if not path.exists():
        pytest.skip("no committed consistency results")
    return json.loads(path.read_text())


def test_committed_results_are_of_the_default_settings_and_render_to_the_committed_table():
    d = _committed()
    assert d["config"] == ConsistencyConfig().to_dict(), "regenerate: sqs-pyro consistency --results"
    committed = (RESULTS / "consistency.md").read_text()
    generated = committed.split("\n" + HAND_WRITTEN)[0]
    assert ConsistencyResult.from_dict(d).to_markdown() == generated


def test_committed_results_come_from_the_committed_code():
    d = _committed()
    pv = d["provenance"]
    assert pv["dirty"] is False, "the results were produced with uncommitted changes"
    if shutil.which("git") is None or not (ROOT / ".git").exists():
        pytest.skip("not a git checkout")
    known = subprocess.run(["git", "cat-file", "-e", pv["commit"] + "^{commit}"], cwd=ROOT, capture_output=True)
    if known.returncode != 0:
        pytest.skip(f"commit {pv['commit']} is not in this repository (a squashed merge?)")
    code = ["analysis/consistency.py", "analysis/consistency_config.py", "analysis/consistency_result.py",
            "analysis/consistency_cli.py"]
    diff = subprocess.run(["git", "diff", "--quiet", pv["commit"], "--", *code], cwd=ROOT)
    assert diff.returncode == 0, f"the consistency code changed since {pv['commit']}: regenerate the results"
