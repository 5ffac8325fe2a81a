"""docs/statisticians.md runs as written (in a temporary directory) and shows what it says."""

import importlib.util
import pathlib
import time

import pytest

ROOT = pathlib.Path(__file__).resolve().parents[1]


def _runner():
    spec = importlib.util.spec_from_file_location("statisticians_example", ROOT / "examples" / "statisticians.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


def test_page_runs_and_its_claims_hold(tmp_path):
    pytest.importorskip("sklearn")
    import pyro
    import torch

    threads = torch.get_num_threads()
    start = time.perf_counter()
    try:
        ns = _runner().run_page(cwd=tmp_path)
    finally:
        torch.set_num_threads(threads)
        pyro.clear_param_store()
    seconds = time.perf_counter() - start
    for name in ("elbo", "posterior", "forest", "ppc", "predictive"):
        assert (tmp_path / "docs" / "figures" / f"statisticians_{name}.png").stat().st_size > 5000, name
    assert (tmp_path / "diabetes_fit.pt").exists()
    assert ns["elbo"].last_plug_in == "sample"
    sample, mean = ns["results"]["sample"], ns["results"]["mean"]
    assert 0.8 <= sample["coverage"] <= 0.99
    assert abs(sample["mc_elbo"] - sample["objective"]) < 0.05 * abs(sample["objective"])
    assert mean["objective"] - mean["mc_elbo"] > 10 * abs(sample["objective"] - sample["mc_elbo"])
    assert mean["width"] > 1.5 * sample["width"]
    assert sample["rmse"] < ns["base_rmse"] + 0.05
    # the page's table holds the numbers of this run (to within run-to-run noise across machines)
    page = (ROOT / "docs" / "statisticians.md").read_text()
    for key, row in (("sample", sample), ("mean", mean)):
        line = [l for l in page.splitlines() if l.startswith(f'| `"{key}"`')][-1]  # the results table
        cells = [c.strip() for c in line.split("|")[2:-1]]
        rmse, cov = float(cells[0]), float(cells[1].split()[0])
        assert rmse == pytest.approx(row["rmse"], abs=0.03), (key, rmse, row["rmse"])
        assert cov == pytest.approx(row["coverage"], abs=0.05), (key, cov, row["coverage"])
    print(f"docs page: {seconds:.1f} s")
